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
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import asyncpg
import jwt
import socketio
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from auth import birth_profiles
from auth import keys as auth_keys
from auth.authenticator import authenticate, ensure_session_active, ensure_user_active
from consultations import attachments, chat, lifecycle, presence
from core import events, inputs, metrics
from core.errors import (
    AppError,
    Conflict,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
    fields_from_pydantic,
)
from core.events import Room
from core.services import Services
from core.times import rfc3339
from core.tokens import Principal
from live import keys as live_keys
from live import session as live_session
from realtime import keys, transport
from realtime.echo_slots import EchoSlots
from realtime.relay import ChatRelay
from realtime.watch import PresenceWatch, UnwatchIn, WatchIn

log = logging.getLogger(__name__)

MAX_JOINED_PER_CONNECTION = 20  # a person has one live consultation; 20 leaves room for history
# How long a process trusts "this consultation is active" for rtc:* (issue 12): one Redis read
# per consultation and process a second at most; signalling within this long after the end may
# still be relayed (it is not billed for: the meter stopped at the end).
ACTIVE_CACHE_SECONDS = 1.0


# --- event payloads ---------------------------------------------------------------------------


class Event(BaseModel):
    """An event payload: unknown fields are an error. Text is kept as sent (no stripping)."""

    model_config = ConfigDict(extra="forbid")


class ConsultationEvent(Event):
    consultation_id: uuid.UUID


class SendIn(ConsultationEvent):
    client_msg_id: str = Field(min_length=1, max_length=keys.MAX_ID_CHARS)
    # Issue 17: with an attachment the text may be empty.
    text: str = Field("", max_length=chat.MAX_TEXT_CHARS)
    attachment_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _not_blank(self) -> SendIn:
        if self.attachment_id is None and not self.text.strip():
            raise ValueError("text must not be blank")
        return self

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


class RefreshIn(Event):
    token: str = Field(min_length=1, max_length=8192)


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
    # Consultations this socket counts as present in (live.session.participant_joined); each is
    # matched by one participant_left when the socket leaves or goes (issue 12).
    present: set[uuid.UUID] = field(default_factory=set)
    token_expires: float | None = None  # epoch seconds: the access token's `exp`
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


async def _is_active(services: Services, consultation_id: uuid.UUID) -> bool:
    """The session is running: Redis first (the live state exists only while it runs), then
    PostgreSQL (after a Redis loss, until the meter sweep rebuilt it)."""
    running = services.redis.hexists(live_keys.state(consultation_id), "user")
    if await cast(Awaitable[bool], running):
        return True
    status = await services.db.fetchval(
        "SELECT status FROM consultations WHERE id = $1", consultation_id
    )
    return bool(status == "active")


def _epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def token_expiry(token: str) -> float | None:
    """The `exp` of an access token that `authenticate` already verified (JWT, our own or
    Cognito's); None when it has none."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


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
        self._auth_check: asyncio.Task[None] | None = None
        self._live_beat: asyncio.Task[None] | None = None
        # consultation -> (known active until (loop time), the pending check): see _active_gate
        self._active: dict[uuid.UUID, tuple[float, asyncio.Future[None] | None]] = {}
        self._checks: set[asyncio.Task[None]] = set()
        self._revocations: asyncio.Task[None] | None = None
        self._closing = False
        self.watch = PresenceWatch(self)  # presence:watch / presence:unwatch (issue 15)
        self.echo_slots = EchoSlots()  # rtc:echo caps per user and per process (issue 14)
        self.events: dict[str, tuple[type[BaseModel], Handler, bool]] = {
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
            "auth:refresh": (RefreshIn, self.auth_refresh, False),
            "presence:watch": (WatchIn, self.watch.watch, False),
            "presence:unwatch": (UnwatchIn, self.watch.unwatch, False),
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
            token_expires=token_expiry(token),
        )
        await self.save_session(sid, {"state": state})
        self.local[sid] = state
        await self.enter_room(sid, keys.user_room(principal.user_id))
        if principal.role == "astrologer":  # presence goes to watchers only (realtime/watch.py)
            await self.enter_room(sid, Room.presence(principal.user_id))
        await self._mark_live(state)
        if principal.role == "astrologer":
            await _guarded("presence.connected", presence.connected(services, principal.user_id))
        if self._heartbeat is None and not self._closing:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        if self._live_beat is None and not self._closing:
            self._live_beat = asyncio.create_task(self._live_beat_loop())
        if self._auth_check is None and not self._closing:
            self._auth_check = asyncio.create_task(self._auth_check_loop())
        if self._revocations is None and not self._closing:
            self._revocations = asyncio.create_task(self._revocation_listener())
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
        # Presence is a fact (issue 12): this socket no longer holds the participant in their
        # consultations; their last socket gone starts the disconnect grace.
        for cid in list(state.present):
            await _guarded(
                "live.participant_left",
                live_session.participant_left(services, cid, state.user_id, state.sid),
            )
        state.present.clear()
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
        return transport.socket_alive(self.sio, sid)  # engine.io internals live there

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

    async def _live_beat_loop(self) -> None:
        """One loop per process, apart from the per-socket one: every heartbeat, this process and
        the participants of live sessions with a socket here are alive (a few Redis calls for all
        of them, and one PostgreSQL write every PRESENCE_WRITE_EVERY_BEATS). Apart, so that a
        process with many sockets never looks dead to the meter because its per-socket round is
        slow (issue 12)."""
        beats = 0
        try:
            while self.local and not self._closing:
                await asyncio.sleep(self.services.settings.realtime_heartbeat_seconds)
                beats += 1
                pairs = [(cid, st.user_id) for st in self.local.values() for cid in st.present]
                await _guarded(
                    "live.participants_beat",
                    live_session.participants_beat(
                        self.services,
                        pairs,
                        persist=beats % live_keys.PRESENCE_WRITE_EVERY_BEATS == 0,
                    ),
                )
        finally:
            self._live_beat = None

    async def _beat(self, state: ConnState) -> None:
        services = self.services
        await self._mark_live(state)
        if state.principal.role == "astrologer":
            await _guarded("presence.heartbeat", presence.heartbeat(services, state.user_id))

    async def shutdown(self) -> None:
        """Stop the heartbeat loop (the app is shutting down)."""
        self._closing = True
        running = (self._heartbeat, self._live_beat, self._auth_check, self._revocations)
        tasks = [t for t in running if t]
        for task in tasks:
            task.cancel()
        # Wait for them: the revocation listener closes its Redis subscription on the way out.
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in list(self.local.values()):
            if state.echo is not None:
                await state.echo.close()

    # socket authority (issue 12) -----------------------------------------------------------

    async def _expire(self, state: ConnState, code: str) -> None:
        """This socket's login no longer holds: say so (`auth:expired`), then disconnect it (its
        presence in a live session ends as for any disconnect)."""
        if self.local.get(state.sid) is not state:
            return
        log.info("socket authority ended", extra={"code": code})
        with contextlib.suppress(Exception):
            expired = events.AuthExpired(code=code)  # type: ignore[arg-type]  # codes of AppError
            await self.emit(expired.name, expired.payload(), to=state.sid)
        with contextlib.suppress(Exception):
            await self.sio.disconnect(state.sid)
        if self.local.pop(state.sid, None) is not None:
            await self._gone(state)

    async def _still_authorised(self, state: ConnState) -> str | None:
        """None while the socket's login holds, else the reason code."""
        if state.token_expires is not None and state.token_expires <= time.time():
            return "token_expired"
        principal = state.principal
        try:
            if principal.session_id is not None:
                await ensure_session_active(self.services, principal.session_id, principal.user_id)
            else:
                await ensure_user_active(self.services, principal.user_id)
        except AppError as err:
            return err.code
        return None

    async def _auth_check_loop(self) -> None:
        """One loop per process: every SOCKET_AUTH_CHECK_SECONDS each local socket's login is
        checked again (expiry, logout, block); a socket that lost it is expired."""
        try:
            while self.local and not self._closing:
                await asyncio.sleep(self.services.settings.socket_auth_check_seconds)
                for state in list(self.local.values()):
                    try:
                        code = await self._still_authorised(state)
                    except Exception:  # Redis and PostgreSQL both down: keep the socket
                        log.warning("socket authority check failed", exc_info=True)
                        continue
                    if code is not None:
                        await self._expire(state, code)
        finally:
            self._auth_check = None

    async def _revocation_listener(self) -> None:
        """Drop at once the local sockets of a login or user revoked on any process (logout,
        block): auth/ publishes each revocation after its commit."""
        while not self._closing:
            try:
                pubsub = self.services.redis.pubsub()
                await pubsub.subscribe(auth_keys.AUTH_REVOKED_CHANNEL)
                try:
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        await self._on_revoked(message.get("data"))
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("revocation listener failed; resubscribing", exc_info=True)
                await asyncio.sleep(1)

    async def _on_revoked(self, data: Any) -> None:
        try:
            body = json.loads(data)
            sessions = {uuid.UUID(v) for v in body.get("sessions", [])}
            user = uuid.UUID(body["user"]) if body.get("user") else None
        except (ValueError, TypeError, KeyError):
            log.warning("bad revocation message")
            return
        for state in list(self.local.values()):
            p = state.principal
            if (p.session_id is not None and p.session_id in sessions) or p.user_id == user:
                await self._expire(state, "session_revoked" if user is None else "account_blocked")
        if user is not None:
            # A blocked astrologer goes offline at once (every process does it; it is idempotent)
            # and is refused as a request target (consultations.lifecycle).
            role = await self.services.db.fetchval("SELECT role FROM users WHERE id = $1", user)
            if role == "astrologer":
                await _guarded("presence.disconnected", presence.disconnected(self.services, user))

    async def auth_refresh(self, state: ConnState, data: RefreshIn) -> dict[str, Any]:
        """`auth:refresh {token}`: a fresh access token of the same person extends this socket
        without reconnecting. Another person's token, or a bad one, is refused (401)."""
        principal = await authenticate(self.services, data.token)
        if principal.user_id != state.principal.user_id or principal.role != state.principal.role:
            raise Unauthorized("this token belongs to someone else", code="unauthorized")
        state.principal = principal
        state.token_expires = token_expiry(data.token)
        expires = state.token_expires
        return {"expires_at": None if expires is None else rfc3339(_epoch(expires))}

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
            # Issue 14: what no input may carry (NUL, lone surrogates, int64 overflow, NaN,
            # deep nesting), as for REST bodies (core/inputs.py).
            bad = inputs.problems(payload, "payload")
            if bad:
                raise ValidationFailed(bad)
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
        except asyncpg.DataError:  # issue 14: a value the database refuses came from the input
            log.exception("socket event input refused by the database", extra={"event": event})
            return {"ok": False, "error": {"code": "validation_error", "message": "invalid input"}}
        except Exception:
            log.exception("socket event failed", extra={"event": event})
            return {"ok": False, "error": {"code": "internal", "message": "internal error"}}
        return {"ok": True, **result}

    def _active_gate(self, consultation_id: uuid.UUID) -> asyncio.Future[None] | None:
        """None when the consultation is known `active` (cached ACTIVE_CACHE_SECONDS), else a
        future that resolves when it is known active or fails with `not_active` (API.md: rtc:*
        only while active; chat is checked by its storing statement). Concurrent callers share
        one future and are woken in the order they asked."""
        loop = asyncio.get_running_loop()
        cached = self._active.get(consultation_id)
        if cached is not None:
            until, pending = cached
            if pending is None and until > loop.time():
                return None
            if pending is not None and not pending.done():
                return pending
        future: asyncio.Future[None] = loop.create_future()
        self._active[consultation_id] = (0.0, future)

        async def check() -> None:
            try:
                active = await _is_active(self.services, consultation_id)
            except Exception as exc:
                self._active.pop(consultation_id, None)
                future.set_exception(exc)
                return
            if active:
                self._active[consultation_id] = (loop.time() + ACTIVE_CACHE_SECONDS, None)
                future.set_result(None)
            else:
                self._active.pop(consultation_id, None)
                future.set_exception(lifecycle.NotActive("not active"))

        task = asyncio.ensure_future(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return future

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
        # The session starts when both participants have joined an accepted one; from now until
        # this socket leaves (on any process) the participant is present (issue 12).
        if cid not in state.present and c.status in ("accepted", "active"):
            state.present.add(cid)  # before any suspension: joins may run concurrently
            try:
                outcome = await live_session.participant_joined(
                    services, cid, state.user_id, state.sid
                )
            except Exception:
                log.exception("live.participant_joined failed", extra={"id": str(cid)})
                outcome = "ignored"
            if outcome == "ignored":
                state.present.discard(cid)
        if c.status == "accepted":
            c = await lifecycle.get(services.db, cid) or c  # it may have just become active
        payload = lifecycle.to_public(c)
        # Issue 16: its astrologer sees the frozen birth profiles (within PROFILE_VISIBLE_DAYS).
        payload = await birth_profiles.with_profiles(
            services.db, services.settings, cid, state.user_id, payload
        )
        return {"consultation": payload, "last_seq": last}

    async def leave(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        cid = data.consultation_id
        self._joined(state, cid)
        del state.joined[cid]
        if cid in state.relayed:
            state.relayed.discard(cid)
            self.relay.release(cid)
        await self.leave_room(state.sid, keys.consultation_room(cid))
        await self.leave_room(state.sid, keys.participant_room(cid, state.user_id))
        if cid in state.present:
            state.present.discard(cid)
            await live_session.participant_left(self.services, cid, state.user_id, state.sid)
        return {}

    async def end(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        services = self.services
        await live_session.end_by_participant(services, data.consultation_id, state.user_id)
        c = await lifecycle.get_for(services.db, data.consultation_id, state.user_id)
        return {"consultation": lifecycle.to_public(c)}

    # chat ------------------------------------------------------------------------------------

    async def send(self, state: ConnState, data: SendIn) -> dict[str, Any]:
        """Stored (group commit) before the ack; delivered by the relay right after the commit,
        to every socket of the consultation but this one. Only while the consultation is active
        (`not_active` otherwise): checked in the storing statement itself (consultations.chat)."""
        if data.attachment_id is not None:  # issue 17: checked file, stored one at a time
            message, created = await attachments.send(
                self.services,
                consultation_id=data.consultation_id,
                sender_id=state.user_id,
                client_msg_id=data.client_msg_id,
                text=data.text,
                attachment_id=data.attachment_id,
            )
            if created:
                self.relay.stored([(message, state.sid)])
            metrics.domain().chat_message(resend=not created)
            sent_at = rfc3339(message.sent_at, milliseconds=True)
            return {
                "id": str(message.id),
                "seq": message.seq,
                "sent_at": sent_at,
                "attachment": message.attachment,
            }
        message, created = await self.relay.chat_writer().send(
            data.consultation_id, state.user_id, data.client_msg_id, data.text, tag=state.sid
        )
        metrics.domain().chat_message(resend=not created)
        sent_at = rfc3339(message.sent_at, milliseconds=True)
        return {"id": str(message.id), "seq": message.seq, "sent_at": sent_at}

    async def typing(self, state: ConnState, data: ConsultationEvent) -> dict[str, Any]:
        cid = data.consultation_id
        self._joined(state, cid)
        typing = events.ChatTyping(consultation_id=str(cid), user_id=str(state.user_id))
        await self.emit(
            typing.name, typing.payload(), room=keys.consultation_room(cid), skip_sid=state.sid
        )
        return {}

    async def read(self, state: ConnState, data: ReadIn) -> dict[str, Any]:
        cid = data.consultation_id
        self._joined(state, cid)
        up_to = await chat.mark_read(self.services.db, cid, state.user_id, data.up_to_seq)
        read = events.ChatRead(
            consultation_id=str(cid), user_id=str(state.user_id), up_to_seq=up_to
        )
        await self.sio.deliver(
            read.name, read.payload(), room=keys.consultation_room(cid), skip_sid=state.sid
        )
        return {"up_to_seq": up_to}

    async def history(self, state: ConnState, data: HistoryIn) -> dict[str, Any]:
        cid = data.consultation_id
        db = self.services.db
        if cid not in state.joined:
            await chat.room_for_participant(db, cid, state.user_id)
        messages = await chat.history(db, cid, data.after_seq, data.limit)
        messages = await attachments.fill(self.services, messages)  # issue 17: signed URLs
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
            gate = self._active_gate(cid)
            if gate is not None:
                await gate
            payload = data.model_dump(mode="json", exclude_none=False)
            payload["from"] = str(state.user_id)
            out = events.BY_NAME[event].model_validate(payload)  # RtcOffer, RtcAnswer, RtcIce
            room = keys.participant_room(cid, joined.other_id)
            await self.sio.deliver(out.name, out.payload(), room=room)
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
            measured = events.RtcEchoStats.model_validate(stats)
            await self.emit(measured.name, measured.payload(), to=sid)

        slot = await self.echo_slots.acquire(self.services, state.user_id)
        try:
            peer = EchoPeer(on_stats=report, on_close=slot.release)
        except BaseException:
            await slot.release()
            raise
        state.echo = peer
        answer = await peer.answer(data.sdp, data.type)
        return {"sdp": answer.sdp, "type": answer.type}

    async def echo_stop(self, state: ConnState, data: EmptyIn) -> dict[str, Any]:
        if state.echo is not None:
            await state.echo.close()
            state.echo = None
        return {}
