"""The default Socket.IO namespace: connect, chat, read receipts, WebRTC signalling, echo test.

Every client event goes through `_dispatch`, the one wrapper that rate-limits, validates the
payload with the event's pydantic model, calls the use case and turns an `AppError` into the ack
`{ok: false, error: {code, message}}` (anything else: logged, `internal`).

Order. python-socketio runs each event of a client in its own task, so two events of one client
may interleave. Tasks start in packet order, and `chat:send` reaches `ChatWriter.send`, which queues
the message, without suspending first, so a client's messages get seqs in the order it sent them;
the other events that deliver something to the other participant (`chat:read`, `rtc:*`) take the
connection's FIFO `order_lock` before their first real suspension point. Across the two
participants and across processes, seqs come from the database and every process emits one
consultation's messages in seq order (realtime/relay.py); no lock is held across a publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import socketio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from auth.authenticator import authenticate
from billing import meter
from consultations import chat, lifecycle, presence
from core.errors import (
    AppError,
    Conflict,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
    fields_from_pydantic,
)
from core.services import Services
from core.tokens import Principal
from realtime import keys
from realtime.relay import ChatRelay

log = logging.getLogger(__name__)

MAX_JOINED_PER_CONNECTION = 20  # a person has one live consultation; 20 leaves room for history


# --- event payloads ---------------------------------------------------------------------------


class Event(BaseModel):
    """An event payload: unknown fields are an error. Text is kept as sent (no stripping)."""

    model_config = ConfigDict(extra="forbid")


class ConsultationEvent(Event):
    consultation_id: uuid.UUID


class SendIn(ConsultationEvent):
    client_msg_id: str = Field(min_length=1, max_length=keys.MAX_ID_CHARS)
    text: str = Field(min_length=1, max_length=chat.MAX_TEXT_CHARS)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("text", "client_msg_id")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:  # PostgreSQL text cannot hold it; refused here, not by a failed batch
            raise ValueError("must not contain NUL characters")
        return value


class ReadIn(ConsultationEvent):
    up_to_seq: int = Field(ge=0, le=2**62)


class HistoryIn(ConsultationEvent):
    after_seq: int = Field(0, ge=0, le=2**62)
    limit: int = Field(200, ge=1, le=chat.HISTORY_MAX)


class OfferIn(ConsultationEvent):
    sdp: str = Field(min_length=1, max_length=keys.MAX_SDP_CHARS)
    type: Literal["offer"]


class AnswerIn(ConsultationEvent):
    sdp: str = Field(min_length=1, max_length=keys.MAX_SDP_CHARS)
    type: Literal["answer", "pranswer"]


class IceCandidate(Event):
    candidate: str = Field(max_length=keys.MAX_CANDIDATE_CHARS)
    sdpMid: str | None = Field(None, max_length=keys.MAX_ID_CHARS)  # the WebRTC field name
    sdpMLineIndex: int | None = Field(None, ge=0, le=64)  # the WebRTC field name
    usernameFragment: str | None = Field(None, max_length=256)  # the WebRTC field name


class IceIn(ConsultationEvent):
    candidate: IceCandidate | None  # None: end of candidates


class EchoIn(Event):
    sdp: str = Field(min_length=1, max_length=keys.MAX_SDP_CHARS)
    type: Literal["offer"]


class EmptyIn(Event):
    pass


# --- per-connection state -----------------------------------------------------------------------


class TokenBucket:
    """`rate` events a second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> float:
        """0 when an event may go now; else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class Joined:
    other_id: uuid.UUID
    type: str


@dataclass
class ConnState:
    """What a connection knows about itself; kept in `sio.session(sid)`."""

    sid: str
    principal: Principal
    ip: str
    bucket: TokenBucket
    joined: dict[uuid.UUID, Joined] = field(default_factory=dict)
    order_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    relayed: set[uuid.UUID] = field(default_factory=set)  # counted in ChatRelay (see `join`)
    echo: Any = None  # realtime.echo.EchoPeer while a pre-call test runs

    @property
    def user_id(self) -> uuid.UUID:
        return self.principal.user_id


Handler = Callable[[ConnState, Any], Awaitable[dict[str, Any]]]


def _client_ip(environ: dict[str, Any], trusted: list[str]) -> str:
    """The aiohttp driver reports every client as 127.0.0.1: read the request itself."""
    request = environ.get("aiohttp.request")
    remote = str(getattr(request, "remote", None) or environ.get("REMOTE_ADDR") or "")
    forwarded = str(environ.get("HTTP_X_FORWARDED_FOR", ""))
    if forwarded and remote in trusted:
        return forwarded.split(",")[-1].strip() or remote
    return remote


async def _guarded(what: str, call: Awaitable[Any]) -> None:
    """Presence and meter calls from a socket: logged on failure, never fatal to the socket. Both
    are rebuilt from heartbeats and sweeps (DESIGN.md: Redis holds what can be rebuilt)."""
    try:
        await call
    except Exception:
        log.exception("real-time side effect failed", extra={"call": what})


# --- the namespace ------------------------------------------------------------------------------


class AstroliveNamespace(socketio.AsyncNamespace):  # type: ignore[misc]  # socketio has no type hints
    def __init__(
        self, sio: Any, services_of: Callable[[], Services], relay: ChatRelay | None = None
    ) -> None:
        super().__init__("/")
        self.sio = sio
        self.services_of = services_of
        self.relay = relay or ChatRelay(sio, services_of)
        self.local: dict[str, ConnState] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self.events: dict[str, tuple[type[Event], Handler, bool]] = {
            # event: (payload model, use case, whether it keeps the connection's order)
            "consultation:join": (ConsultationEvent, self.join, False),
            "consultation:leave": (ConsultationEvent, self.leave, False),
            "consultation:end": (ConsultationEvent, self.end, False),
            # chat:send keeps the order without the lock (see the module docstring)
            "chat:send": (SendIn, self.send, False),
            "chat:typing": (ConsultationEvent, self.typing, False),
            "chat:read": (ReadIn, self.read, True),
            "chat:history": (HistoryIn, self.history, False),
            "rtc:offer": (OfferIn, self.rtc_relay("rtc:offer"), True),
            "rtc:answer": (AnswerIn, self.rtc_relay("rtc:answer"), True),
            "rtc:ice": (IceIn, self.rtc_relay("rtc:ice"), True),
            "rtc:echo": (EchoIn, self.echo_start, False),
            "rtc:echo:stop": (EmptyIn, self.echo_stop, False),
        }

    @property
    def services(self) -> Services:
        return self.services_of()

    # connect / disconnect ------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        services = self.services
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            if not isinstance(token, str) or not token:
                raise Unauthorized("missing token in auth", code="unauthorized")
            principal = await authenticate(services, token)
        except AppError as err:
            log.info("socket refused", extra={"code": err.code})
            raise socketio.exceptions.ConnectionRefusedError(
                err.message, {"code": err.code, "message": err.message}
            ) from err
        settings = services.settings
        state = ConnState(
            sid=sid,
            principal=principal,
            ip=_client_ip(environ, settings.trusted_proxies),
            bucket=TokenBucket(settings.realtime_events_per_second, settings.realtime_event_burst),
        )
        await self.save_session(sid, {"state": state})
        self.local[sid] = state
        await self.enter_room(sid, keys.user_room(principal.user_id))
        await self.enter_room(sid, keys.PRESENCE_ROOM)
        await self._mark_live(state)
        if principal.role == "astrologer":
            await _guarded("presence.connected", presence.connected(services, principal.user_id))
        if self._heartbeat is None and not self._closing:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        return True

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        state = self.local.pop(sid, None)
        if state is not None:
            await self._gone(state)

    async def _gone(self, state: ConnState) -> None:
        """A connection ended (disconnect event, or found dead by the heartbeat loop)."""
        services = self.services
        for cid in state.relayed:
            self.relay.release(cid)
        state.relayed.clear()
        if state.echo is not None:
            await state.echo.close()
            state.echo = None
        try:
            await services.redis.delete(keys.live_socket_key(state.user_id, state.sid))
        except Exception:  # Redis down: the key expires by itself (LIVE_SOCKET_MISSES)
            log.warning("could not clear live socket key", exc_info=True)
        # The meter needs no "left" call: a participant it stops seeing is `disconnected` after
        # DISCONNECT_GRACE_SECONDS (billing.meter.check_disconnects).
        if state.principal.role == "astrologer" and not await self._has_live_socket(state.user_id):
            await _guarded("presence.disconnected", presence.disconnected(services, state.user_id))

    async def _has_live_socket(self, user_id: uuid.UUID) -> bool:
        """Another device of this person is still connected (here or on another process)."""
        if any(s.user_id == user_id for s in self.local.values()):
            return True
        try:
            async for _ in self.services.redis.scan_iter(
                match=keys.live_socket_pattern(user_id), count=100
            ):
                return True
        except Exception:
            log.warning("live socket lookup failed", exc_info=True)
        return False

    async def _mark_live(self, state: ConnState) -> None:
        ttl = self.services.settings.realtime_heartbeat_seconds * keys.LIVE_SOCKET_MISSES
        try:
            await self.services.redis.set(
                keys.live_socket_key(state.user_id, state.sid), "1", px=int(ttl * 1000)
            )
        except Exception:  # presence is rebuildable; chat must go on without it
            log.warning("could not mark live socket", exc_info=True)

    def _alive(self, sid: str) -> bool:
        """The engine.io socket still exists, is open, and answers pings."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        sock = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
        if sock is None or sock.closed or sock.closing:
            return False
        last_ping = sock.last_ping  # set when a ping is sent, cleared by the pong
        return not (last_ping and time.time() - last_ping > 2 * self.sio.eio.ping_timeout)

    async def _heartbeat_loop(self) -> None:
        """One loop per process: refresh live keys, presence and the meter for every local
        connection, and treat a connection whose socket is gone as disconnected."""
        try:
            while self.local and not self._closing:
                await asyncio.sleep(self.services.settings.realtime_heartbeat_seconds)
                for sid, state in list(self.local.items()):
                    if not self._alive(sid):
                        if self.local.pop(sid, None) is not None:
                            await self._gone(state)
                        continue
                    await self._beat(state)
        finally:
            self._heartbeat = None

    async def _beat(self, state: ConnState) -> None:
        services = self.services
        await self._mark_live(state)
        if state.principal.role == "astrologer":
            await _guarded("presence.heartbeat", presence.heartbeat(services, state.user_id))
        for consultation_id in list(state.joined):
            await _guarded(
                "meter.participant_seen",
                meter.participant_seen(services, consultation_id, state.user_id),
            )

    async def shutdown(self) -> None:
        """Stop the heartbeat loop (the app is shutting down)."""
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for state in list(self.local.values()):
            if state.echo is not None:
                await state.echo.close()

    # dispatch ------------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        return await self._dispatch(event, sid, args[1] if len(args) > 1 else None)

    async def _dispatch(self, event: str, sid: str, payload: Any) -> dict[str, Any]:
        # Nothing here may suspend before `order_lock` is taken (see the module docstring):
        # get_session of a local client returns without suspending.
        session = await self.get_session(sid)
        state: ConnState | None = session.get("state")
        try:
            if state is None:
                raise Unauthorized("not connected")
            spec = self.events.get(event)
            if spec is None:
                raise NotFound(f"unknown event {event!r}", code="unknown_event")
            wait = state.bucket.take()
            if wait:
                raise RateLimited(int(wait) + 1, "too many events; slow down")
            model, handler, ordered = spec
            try:
                data = model.model_validate({} if payload is None else payload)
            except ValidationError as exc:
                raise ValidationFailed(fields_from_pydantic(exc.errors())) from exc
            if ordered:
                async with state.order_lock:
                    result = await handler(state, data)
            else:
                result = await handler(state, data)
        except AppError as err:
            log.info("socket event refused", extra={"event": event, "code": err.code})
            return {"ok": False, "error": {"code": err.code, "message": err.message}}
        except Exception:
            log.exception("socket event failed", extra={"event": event})
            return {"ok": False, "error": {"code": "internal", "message": "internal error"}}
        return {"ok": True, **result}

    def _joined(self, state: ConnState, consultation_id: uuid.UUID) -> Joined:
        joined = state.joined.get(consultation_id)
        if joined is None:
            raise NotFound("join the consultation first", code="not_joined")
        return joined

    # consultations ----------------------------------------------------------------------------

    async def join(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        """Only the two participants; again, from another device or after a reconnect is fine.
        Join first, then fetch `after_seq`: nothing falls between the two."""
        cid = data.consultation_id
        if cid not in state.joined and len(state.joined) >= MAX_JOINED_PER_CONNECTION:
            raise Conflict("too many consultations joined on this connection", code="too_many")
        services = self.services
        c = await lifecycle.get_for(services.db, cid, state.user_id)
        relay = self.relay
        await relay.start_listening()
        first = cid not in state.relayed  # set before any suspension: joins may run concurrently
        if first:
            state.relayed.add(cid)
            relay.prepare(cid)  # from here on this process holds the consultation's messages
        try:
            await self.enter_room(state.sid, keys.consultation_room(cid))
            await self.enter_room(state.sid, keys.participant_room(cid, state.user_id))
            last = await chat.last_seq(services.db, cid)
        except BaseException:
            if first:
                state.relayed.discard(cid)
                relay.release(cid)
            raise
        relay.start(cid, last)  # live from last + 1; the client fetches up to `last` itself
        other = c.astrologer_id if state.user_id == c.user_id else c.user_id
        state.joined[cid] = Joined(other_id=other, type=c.type)
        # The meter starts the session when both participants have joined an accepted one.
        await _guarded(
            "meter.participant_joined", meter.participant_joined(services, cid, state.user_id)
        )
        if c.status == "accepted":
            c = await lifecycle.get(services.db, cid) or c  # it may have just become active
        return {"consultation": lifecycle.to_public(c), "last_seq": last}

    async def leave(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        cid = data.consultation_id
        self._joined(state, cid)
        del state.joined[cid]
        if cid in state.relayed:
            state.relayed.discard(cid)
            self.relay.release(cid)
        await self.leave_room(state.sid, keys.consultation_room(cid))
        await self.leave_room(state.sid, keys.participant_room(cid, state.user_id))
        return {}

    async def end(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        services = self.services
        await meter.end_by_participant(services, data.consultation_id, state.user_id)
        c = await lifecycle.get_for(services.db, data.consultation_id, state.user_id)
        return {"consultation": lifecycle.to_public(c)}

    # chat ------------------------------------------------------------------------------------

    async def send(self, state: ConnState, data: SendIn) -> dict[str, Any]:
        """Stored (group commit) before the ack; delivered by the relay right after the commit,
        to every socket of the consultation but this one."""
        message, _ = await self.relay.chat_writer().send(
            data.consultation_id, state.user_id, data.client_msg_id, data.text, tag=state.sid
        )
        return {"id": str(message.id), "seq": message.seq, "sent_at": chat.rfc3339(message.sent_at)}

    async def typing(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        cid = data.consultation_id
        self._joined(state, cid)
        await self.emit(
            "chat:typing",
            {"consultation_id": str(cid), "user_id": str(state.user_id)},
            room=keys.consultation_room(cid),
            skip_sid=state.sid,
        )
        return {}

    async def read(self, state: ConnState, data: ReadIn) -> dict[str, Any]:
        cid = data.consultation_id
        self._joined(state, cid)
        up_to = await chat.mark_read(self.services.db, cid, state.user_id, data.up_to_seq)
        await self.sio.deliver(
            "chat:read",
            {"consultation_id": str(cid), "user_id": str(state.user_id), "up_to_seq": up_to},
            room=keys.consultation_room(cid),
            skip_sid=state.sid,
        )
        return {"up_to_seq": up_to}

    async def history(self, state: ConnState, data: HistoryIn) -> dict[str, Any]:
        cid = data.consultation_id
        db = self.services.db
        if cid not in state.joined:
            await chat.room_for_participant(db, cid, state.user_id)
        messages = await chat.history(db, cid, data.after_seq, data.limit)
        return {
            "messages": [m.to_public() for m in messages],
            "has_more": len(messages) == data.limit,
        }

    # WebRTC ------------------------------------------------------------------------------------

    def rtc_relay(self, event: str) -> Handler:
        """Relay a signalling event to the other participant's sockets in this consultation only,
        for voice and video consultations."""

        async def relay(state: ConnState, data: OfferIn | AnswerIn | IceIn) -> dict[str, Any]:
            cid = data.consultation_id
            joined = self._joined(state, cid)
            if joined.type not in ("voice", "video"):
                raise Conflict("this consultation is not a call", code="not_a_call")
            payload = data.model_dump(mode="json", exclude_none=False)
            payload["from"] = str(state.user_id)
            await self.sio.deliver(event, payload, room=keys.participant_room(cid, joined.other_id))
            return {}

        return relay

    async def echo_start(self, state: ConnState, data: EchoIn) -> dict[str, Any]:
        """Pre-call echo test: answer the client's offer with a peer that sends its own audio and
        video back, echoes data-channel messages and reports the RTCP round-trip time."""
        from realtime.echo import EchoPeer  # aiortc is heavy; loaded on first use

        if state.echo is not None:
            await state.echo.close()
            state.echo = None
        sid = state.sid

        async def report(stats: dict[str, Any]) -> None:
            await self.emit("rtc:echo:stats", stats, to=sid)

        peer = EchoPeer(on_stats=report)
        state.echo = peer
        answer = await peer.answer(data.sdp, data.type)
        return {"sdp": answer.sdp, "type": answer.type}

    async def echo_stop(self, state: ConnState, data: EmptyIn) -> dict[str, Any]:
        if state.echo is not None:
            await state.echo.close()
            state.echo = None
        return {}
