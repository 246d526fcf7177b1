"""Chat delivery between processes, in seq order, without a lock across the publish.

Each web process has one `ChatRelay`. After its `ChatWriter` commits a batch, the relay
- emits the new messages to the sockets of this process at once (no Redis round trip for the
  sender's own process), and
- publishes the whole batch as one message on its own Redis channel (`keys.CHAT_CHANNEL`) for the
  other processes, without the sender waiting for it.

Order is restored on the receiving side: for every consultation that has a socket joined on this
process, the relay knows the next seq it owes those sockets (`_Room.next`), emits a message only
when it is the next one, and holds later ones until the missing seqs arrive. Two processes can
publish seqs 5 and 6 in either order, and a publish can be lost (a process dies between commit and
publish, Redis drops the subscription): a gap that lasts `keys.CHAT_GAP_SECONDS` is filled from
PostgreSQL, which is safe because a visible seq N means every seq below N is committed
(consultations/chat.py). So each socket gets the messages of a consultation in seq order, with no
gap and no repeat, from the moment it joined; what came before, it fetches with `after_seq`.

The starting point: `consultation:join` calls `prepare` before entering the room (the relay then
holds whatever arrives), reads the consultation's last seq, and calls `start(last)`: messages up to
`last` are the client's to fetch from history, the live stream starts at `last + 1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from consultations import attachments, chat
from core import events, metrics
from realtime import keys, transport

log = logging.getLogger(__name__)


@dataclass
class _Room:
    """What this process owes the sockets it has joined to one consultation."""

    members: int = 0  # local connections joined to the consultation
    next: int | None = None  # the next seq to emit; None until the first join's `start`
    held: dict[int, tuple[events.ChatMessage, str | None]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    filling: bool = False


class ChatRelay:
    def __init__(self, sio: Any, services_of: Any) -> None:
        self.sio = sio
        self.services_of = services_of
        self.host_id = uuid.uuid4().hex
        self.rooms: dict[uuid.UUID, _Room] = {}
        self.writer: chat.ChatWriter | None = None
        self.fills = 0  # gaps filled from the database (for tests and benchmarks)
        self._outbox: list[list[Any]] = []
        self._publisher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # lifecycle -----------------------------------------------------------------------------------

    def chat_writer(self) -> chat.ChatWriter:
        if self.writer is None:
            services = self.services_of()
            self.writer = chat.ChatWriter(
                services.db,
                after_end_seconds=services.settings.chat_after_end_seconds,
                on_stored=self.stored,
            )
        return self.writer

    async def start_listening(self) -> None:
        """Subscribe to the chat channel (once); returns when the subscription is active."""
        if self._closing:
            return
        if self._listener is None:
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen())
        assert self._subscribed is not None
        await asyncio.wait_for(self._subscribed.wait(), keys.CHAT_SUBSCRIBE_TIMEOUT_SECONDS)

    async def close(self) -> None:
        self._closing = True
        if self.writer is not None:
            await self.writer.close()
        if self._outbox and self._publisher is None:
            self._publisher = asyncio.create_task(self._publish())
        for task in (self._publisher, self._listener, *self._tasks):
            if task is None:
                continue
            if task is not self._publisher:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # a stopped task's error was logged where it happened
        for room in self.rooms.values():
            if room.timer is not None:
                room.timer.cancel()

    @property
    def unpublished(self) -> int:
        """Messages stored here and not yet published to the other processes."""
        return len(self._outbox)

    # joined consultations ------------------------------------------------------------------------

    def prepare(self, consultation_id: uuid.UUID) -> None:
        """A local connection is joining: from now on hold this consultation's messages."""
        room = self.rooms.get(consultation_id)
        if room is None:
            room = self.rooms[consultation_id] = _Room()
        room.members += 1

    def start(self, consultation_id: uuid.UUID, last_seq: int) -> None:
        """The joining connection read `last_seq` after entering the room: live from last + 1."""
        room = self.rooms.get(consultation_id)
        if room is None or room.next is not None:
            return
        room.next = last_seq + 1
        for seq in [s for s in room.held if s <= last_seq]:
            del room.held[seq]
        self._drain(consultation_id, room)

    def release(self, consultation_id: uuid.UUID) -> None:
        """A local connection left the consultation (leave, disconnect, failed join)."""
        room = self.rooms.get(consultation_id)
        if room is None:
            return
        room.members -= 1
        if room.members <= 0:
            if room.timer is not None:
                room.timer.cancel()
            del self.rooms[consultation_id]

    # from the writer and from Redis --------------------------------------------------------------

    def stored(self, messages: list[tuple[chat.ChatMessage, Any]]) -> None:
        """`ChatWriter.on_stored`: emit here now, publish to the other processes in the
        background. `tag` is the sending socket's sid (not sent its own message back)."""
        typed = [(events.ChatMessage(**m.to_public()), tag) for m, tag in messages]
        for message, skip in typed:
            self.accept(message, skip)
        self._outbox.extend([message.payload(), skip] for message, skip in typed)
        if self._publisher is None and not self._closing:
            self._publisher = asyncio.create_task(self._publish())

    def accept(self, message: events.ChatMessage, skip_sid: str | None) -> None:
        """One stored message (the `chat:message` payload): emit it if it is the next one of its
        consultation, hold it if earlier ones are missing, drop it if already emitted."""
        consultation_id = uuid.UUID(message.consultation_id)
        room = self.rooms.get(consultation_id)
        if room is None:
            return  # nobody here has joined this consultation
        seq = message.seq
        if room.next is not None and seq < room.next:
            return
        if room.next == seq:
            self._emit(consultation_id, message, skip_sid)
            room.next = seq + 1
            self._drain(consultation_id, room)
            return
        if seq not in room.held:
            if len(room.held) >= keys.CHAT_MAX_HELD:
                self._give_up_gap(consultation_id, room)
            room.held[seq] = (message, skip_sid)
            if room.next is not None:
                self._drain(consultation_id, room)

    def _drain(self, consultation_id: uuid.UUID, room: _Room) -> None:
        assert room.next is not None
        while room.next in room.held:
            message, skip_sid = room.held.pop(room.next)
            self._emit(consultation_id, message, skip_sid)
            room.next += 1
        if room.held:
            if room.timer is None and not room.filling:
                room.timer = asyncio.get_running_loop().call_later(
                    keys.CHAT_GAP_SECONDS, self._gap_timeout, consultation_id
                )
        elif room.timer is not None:
            room.timer.cancel()
            room.timer = None

    def _give_up_gap(self, consultation_id: uuid.UUID, room: _Room) -> None:
        """Too many held: the database has not answered for a long while. Emit what is held in
        order and move on; a client that sees a jump in seq fetches the missing ones."""
        log.warning(
            "chat gap not filled; skipping ahead", extra={"consultation_id": consultation_id}
        )
        for seq in sorted(room.held):
            message, skip_sid = room.held.pop(seq)
            self._emit(consultation_id, message, skip_sid)
            room.next = seq + 1

    def _gap_timeout(self, consultation_id: uuid.UUID) -> None:
        room = self.rooms.get(consultation_id)
        if room is None:
            return
        room.timer = None
        if room.held and not room.filling and room.next is not None:
            room.filling = True
            task = asyncio.create_task(self._fill(consultation_id, room))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self, consultation_id: uuid.UUID, room: _Room) -> None:
        """Fetch the missing seqs from PostgreSQL. Waits for this process's batch in flight, so
        that a message of our own is emitted by `stored` (which skips its sender), not here."""
        try:
            assert room.next is not None
            upto = min(room.held)
            messages = await chat.history(
                self.services_of().db, consultation_id, room.next - 1, upto - room.next
            )
            # Issue 17: attachments with their signed URLs, as the sender's process emitted them.
            messages = await attachments.fill(self.services_of(), messages)
            if self.writer is not None:
                await self.writer.settled()
            self.fills += 1
            metrics.domain().chat_gap_fills.inc()
            for message in messages:
                if message.seq < upto:
                    self.accept(events.ChatMessage(**message.to_public()), None)
        except Exception:
            log.warning("chat gap fill failed", exc_info=True)
        finally:
            room.filling = False
            if self.rooms.get(consultation_id) is room and room.next is not None:
                self._drain(consultation_id, room)

    def _emit(
        self, consultation_id: uuid.UUID, message: events.ChatMessage, skip_sid: str | None
    ) -> None:
        """`chat:message` to this process's sockets in the consultation room, encoded once and
        queued on each socket directly: no task per recipient, nothing that suspends, so emits
        happen in the order they are called."""
        transport.emit_local(
            self.sio,
            events.Room.consultation(consultation_id),
            message.name,
            message.payload(),
            skip_sid,
        )

    # Redis ---------------------------------------------------------------------------------------

    async def _publish(self) -> None:
        """Publish what `stored` queued, everything queued meanwhile in one Redis message."""
        redis = self.services_of().redis
        try:
            while self._outbox:
                entries, self._outbox = self._outbox, []
                try:
                    await redis.publish(
                        keys.CHAT_CHANNEL, json.dumps({"host": self.host_id, "messages": entries})
                    )
                except Exception:  # the other processes fill the gap from the database
                    log.warning("chat publish failed", exc_info=True)
        finally:
            self._publisher = None

    async def _listen(self) -> None:
        assert self._subscribed is not None
        while not self._closing:
            pubsub = self.services_of().redis.pubsub()
            try:
                await pubsub.subscribe(keys.CHAT_CHANNEL)
                self._subscribed.set()
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        self._received(item["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("chat subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(keys.CHAT_RESUBSCRIBE_SECONDS)
            finally:
                with contextlib.suppress(Exception):  # a broken connection: nothing to close
                    await pubsub.aclose()

    def _received(self, data: str) -> None:
        try:
            published = json.loads(data)
            if published.get("host") == self.host_id:
                return  # our own batch, already emitted by `stored`
            for message, skip_sid in published["messages"]:
                self.accept(events.ChatMessage.model_validate(message), skip_sid)
        except Exception:
            log.exception("bad chat publish")
