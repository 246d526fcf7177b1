"""The demo astrologer: an automatic astrologer that answers while `./dev up` runs, so a newcomer
can try a paid chat alone, from the console or with curl (development only).

It is a real client of the server, as an astrologer's app would be: REST for going online and
accepting, Socket.IO for the session, the same tokens and rules as anyone. It

- goes online and stays online while its socket is connected;
- accepts every chat request within `ACCEPT_DELAY_SECONDS` (voice and video it rejects: a bot has
  no voice), joins the consultation, greets, and answers each message of the user;
- ends each session after `DEMO_ASTROLOGER_SESSION_SECONDS` (the meter charges the minutes that
  began, as for any session);
- refreshes its access token before it expires, and reconnects after a restart of the server.

Its one shortcut is signing in: it opens its login directly in the database (no OTP), which only a
process with the database's address can do. `astrolive demo-astrologer` runs it (`astrolive run`
starts it with the web and worker processes); production refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio

from astrolive.demo import DemoAstrologer, add_astrologer
from auth.sessions import open_login_txn
from core.errors import AppError
from core.settings import Settings
from db import identity
from db.pool import connect

log = logging.getLogger(__name__)

DEMO_BOT = DemoAstrologer(
    "+919000000109", "Demo Jyotishi", ["vedic", "tarot"], ["en", "hi"], 7, (500, None, None),
    "The demo astrologer of a development server: it accepts every chat and answers at once. "
    "Its minutes are billed like any other astrologer's.",
)  # fmt: skip
ACCEPT_DELAY_SECONDS = 1.0  # long enough to see `requested` in the console, short enough to wait
REPLY_DELAY_SECONDS = 1.5  # "typing..." then the answer, as a person would
# Refresh the access token this long before it expires (it lives 15 minutes by default).
REFRESH_MARGIN_SECONDS = 60.0
GREETING = (
    "Namaste 🙏 I am Demo Jyotishi, the demo astrologer of this development server. Ask me "
    "anything; every minute of this chat is charged to your wallet like a real session, and I "
    "end it after {minutes} minute(s)."
)
ANSWERS = (
    "The Moon moves through your seventh house this week: a good time for conversations.",
    "Jupiter favours patience. What you start after the next full moon will last.",
    "Your question shows in the cards as the Star: hope, and a clear path ahead.",
    "Saturn asks for discipline now; the reward comes within the next three months.",
    "नमस्ते! सितारे आपके पक्ष में हैं। (The stars are on your side.)",
)
FAREWELL = "Our time is up. Thank you, and may the stars guide you! The receipt is in the app."


class DemoRefused(AppError):
    status, code, message = 400, "demo_refused", "the demo astrologer is for development only"


@dataclass
class Session:
    consultation_id: str
    user_id: str | None = None
    started: bool = False
    ender: asyncio.Task[None] | None = None
    answers: itertools.cycle[str] = field(default_factory=lambda: itertools.cycle(ANSWERS))


async def demo_login(settings: Settings) -> tuple[uuid.UUID, str, str, int]:
    """The demo astrologer's account (approved, idempotent) and a new login for it:
    (user id, access token, refresh token, access token lifetime)."""
    assert settings.database_url, "resolve the services first"
    conn = await connect(settings.database_url)
    try:
        async with conn.transaction():
            user_id = await add_astrologer(conn, DEMO_BOT)
            user = await identity.get_user(conn, user_id)
            assert user is not None
            tokens = await open_login_txn(conn, settings, user, user_agent="astrolive demo")
    finally:
        await conn.close()
    return user_id, tokens.access_token, tokens.refresh_token, tokens.expires_in


class DemoAstrologerBot:
    """One demo astrologer connected to the server at `base_url` (see the module docstring)."""

    def __init__(self, settings: Settings, base_url: str) -> None:
        if settings.is_production:
            raise DemoRefused()
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.session_seconds = settings.demo_astrologer_session_seconds
        self.user_id = ""
        self._access = ""
        self._refresh = ""
        self._ttl = 0
        self._sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_delay=1)
        self.http: aiohttp.ClientSession | None = None
        self.ready = asyncio.Event()  # connected and online: tests wait for it
        for event, handler in {
            "connect": self._on_connect,
            "consultation:requested": self._on_requested,
            "consultation:updated": self._on_updated,
            "session:started": self._on_started,
            "session:ended": self._on_ended,
            "chat:message": self._on_message,
            "auth:expired": self._on_auth_expired,
        }.items():
            self.sio.on(event, handler)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Connect and answer until `stop` is set (or forever)."""
        user_id, self._access, self._refresh, self._ttl = await demo_login(self.settings)
        self.user_id = str(user_id)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            self.http = http
            await self._wait_for_server()
            await self.sio.connect(
                self.base_url,
                auth=lambda: {"token": self._access},
                transports=["websocket"],
                socketio_path="socket.io",
                wait_timeout=10,
            )
            refresher = self._task(self._refresh_loop())
            try:
                await (stop.wait() if stop is not None else asyncio.Event().wait())
            finally:
                refresher.cancel()
                for task in list(self._tasks):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await self._rest("POST", "/v1/astrologer/status", {"status": "offline"})
                await self.sio.disconnect()

    # --- REST ---------------------------------------------------------------------------------

    async def _rest(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self._access}"}
        async with self.http.request(
            method, self.base_url + path, json=body, headers=headers
        ) as resp:
            data: dict[str, Any] = await resp.json() if resp.content_length != 0 else {}
            if resp.status >= 400:
                log.warning("demo astrologer: %s %s refused", method, path, extra=data)
            return data

    async def _wait_for_server(self) -> None:
        """The web process may still be starting (`astrolive run` starts both at once)."""
        assert self.http is not None
        for _ in range(120):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(self.base_url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"no astrolive server answered at {self.base_url}")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(max(5.0, self._ttl - REFRESH_MARGIN_SECONDS))
            await self._refresh_tokens()

    async def _refresh_tokens(self) -> None:
        assert self.http is not None
        async with self.http.post(
            self.base_url + "/v1/auth/refresh", json={"refresh_token": self._refresh}
        ) as resp:
            data = await resp.json()
        if resp.status != 200:
            # The login ended (logout, block, a reset database): start a new one.
            _, self._access, self._refresh, self._ttl = await demo_login(self.settings)
        else:
            self._access, self._refresh = data["access_token"], data["refresh_token"]
            self._ttl = int(data["expires_in"])
        if self.sio.connected:
            await self.sio.call("auth:refresh", {"token": self._access}, timeout=10)

    # --- Socket.IO ----------------------------------------------------------------------------

    def _task(self, coro: Any) -> asyncio.Task[Any]:
        """A task of this bot: cancelled when it stops, its failure logged, never lost."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _spawn(self, coro: Any) -> None:
        """Run `coro` in the background (Socket.IO handlers must return at once)."""
        self._tasks.add(self._task(coro))

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("demo astrologer: %r", task.exception())

    async def _on_connect(self) -> None:
        self._spawn(self._go_online())

    async def _go_online(self) -> None:
        await self._rest("POST", "/v1/astrologer/status", {"status": "online"})
        for session in list(self._sessions.values()):  # after a reconnect: back in the room
            await self.sio.call("consultation:join", {"consultation_id": session.consultation_id})
        log.info("demo astrologer online", extra={"astrologer_id": self.user_id})
        if not self.ready.is_set():  # once, after the start-up logs: what to do now
            phone = next(iter(self.settings.auth_test_phones), "+919000000001")
            print(
                f"{DEMO_BOT.display_name} is online. Sign in as {phone} in the console "
                f"({self.base_url}/) and start a chat with them, or follow docs/guide.md.",
                flush=True,
            )
        self.ready.set()

    async def _on_requested(self, data: dict[str, Any]) -> None:
        self._spawn(self._answer_request(data["consultation"]))

    async def _answer_request(self, consultation: dict[str, Any]) -> None:
        cid = consultation["id"]
        await asyncio.sleep(ACCEPT_DELAY_SECONDS)
        if consultation.get("type") != "chat":
            await self._rest("POST", f"/v1/consultations/{cid}/reject", {"reason": "chat only"})
            return
        accepted = await self._rest("POST", f"/v1/consultations/{cid}/accept")
        if accepted.get("status") != "accepted":
            return
        self._sessions[cid] = Session(cid, user_id=accepted.get("user_id"))
        ack = await self.sio.call("consultation:join", {"consultation_id": cid}, timeout=10)
        if not ack.get("ok"):
            log.warning("demo astrologer could not join", extra={"ack": ack})

    async def _on_updated(self, data: dict[str, Any]) -> None:
        consultation = data.get("consultation") or {}
        if consultation.get("status") in ("completed", "cancelled", "missed", "rejected"):
            self._forget(consultation.get("id", ""))

    async def _on_started(self, data: dict[str, Any]) -> None:
        session = self._sessions.get(data.get("consultation_id", ""))
        if session is None or session.started:
            return
        session.started = True
        minutes = max(1, round(self.session_seconds / self.settings.billing_minute_seconds))
        self._spawn(self._say(session, GREETING.format(minutes=minutes), delay=0.2))
        session.ender = self._task(self._end_later(session))

    async def _end_later(self, session: Session) -> None:
        await asyncio.sleep(self.session_seconds)
        await self._say(session, FAREWELL, delay=0)
        await self.sio.call(
            "consultation:end", {"consultation_id": session.consultation_id}, timeout=10
        )

    async def _on_message(self, data: dict[str, Any]) -> None:
        session = self._sessions.get(data.get("consultation_id", ""))
        if session is None or data.get("sender_id") == self.user_id:
            return
        self._spawn(self._say(session, next(session.answers), delay=REPLY_DELAY_SECONDS))

    async def _say(self, session: Session, text: str, *, delay: float) -> None:
        cid = session.consultation_id
        with contextlib.suppress(Exception):
            await self.sio.emit("chat:typing", {"consultation_id": cid})
        await asyncio.sleep(delay)
        await self.sio.call(
            "chat:send",
            {"consultation_id": cid, "client_msg_id": uuid.uuid4().hex, "text": text},
            timeout=10,
        )

    async def _on_ended(self, data: dict[str, Any]) -> None:
        self._forget(data.get("consultation_id", ""))

    def _forget(self, consultation_id: str) -> None:
        session = self._sessions.pop(consultation_id, None)
        if session is not None and session.ender is not None:
            session.ender.cancel()

    async def _on_auth_expired(self, data: Any = None) -> None:
        self._spawn(self._refresh_tokens())


# After a failure (the server restarting, a reset database), try again this much later. `astrolive
# run` stops every process when one exits, so the demo astrologer must never be the one.
RETRY_SECONDS = 5.0


async def run_demo_astrologer(settings: Settings, base_url: str) -> None:
    """Run the demo astrologer for good, starting it again after any failure."""
    while True:
        try:
            await DemoAstrologerBot(settings, base_url).run()
        except DemoRefused:
            raise
        except Exception:
            log.exception("demo astrologer failed; starting again in %s s", RETRY_SECONDS)
        await asyncio.sleep(RETRY_SECONDS)
