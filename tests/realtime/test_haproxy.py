"""Three web processes behind HAProxy (the Debian package; docs/deploy.md has the same
configuration): REST and Socket.IO through the balancer, WebSocket and HTTP long-polling (sticky by
cookie), chat between clients on different nodes, and a node killed with SIGKILL mid-session whose
clients reconnect through HAProxy to another node and catch up with no lost or repeated message,
while the meter keeps charging each minute exactly once.

Slow (about 30 s): it starts three servers and HAProxy, and waits out real (half-second) minutes
and a failover. Skipped only where the `haproxy` binary is not installed (`./dev test` installs
it with apt-get)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import socketio
from yarl import URL

from core.settings import Settings
from db import embedded
from db.identity import get_user
from tests.factories import token_for
from tests.meter.support import accepted_consultation, assert_each_minute_once, consultation
from tests.servers import ServerProcess, process_env

pytestmark = [
    pytest.mark.slow,
    # Three servers and HAProxy to start and stop, a failover and half-second minutes to wait out.
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="HAProxy is not installed (apt-get install haproxy; ./dev test installs it)",
    ),
]

MINUTE = 0.5
NODES = 3

# The configuration of docs/deploy.md, with test ports and quick health checks (a dead node is
# out after 2 failed checks 300 ms apart; a client reconnecting meanwhile is redispatched).
CONFIG = """
global
    maxconn 4000
defaults
    mode http
    option http-server-close
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option redispatch
    retries 3
frontend web
    bind 127.0.0.1:{port}
    default_backend astrolive
backend astrolive
    balance roundrobin
    cookie SERVERID insert indirect nocache
    option httpchk GET /healthz
    default-server inter 300ms fall 2 rise 1
{servers}
"""


@pytest.fixture
async def cluster(rt_settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, list[Any]]]:
    env = process_env(
        rt_settings,
        BILLING_MINUTE_SECONDS=str(MINUTE),
        DISCONNECT_GRACE_SECONDS="15",
        REALTIME_HEARTBEAT_SECONDS="0.5",
        METER_LEASE_SECONDS="1",
        LOG_LEVEL="WARNING",
    )
    nodes = [ServerProcess(env, log=tmp_path / f"node{i}.log") for i in range(NODES)]
    await asyncio.gather(*(n.start() for n in nodes))
    port = embedded.free_port()
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{n.port} check cookie s{i}" for i, n in enumerate(nodes)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, servers=servers))
    with (tmp_path / "haproxy.log").open("wb") as log:  # the child keeps its own descriptor
        proxy = await asyncio.create_subprocess_exec(
            "haproxy", "-db", "-f", str(config), stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                assert proxy.returncode is None, "haproxy exited (see its configuration)"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield url, nodes
    finally:
        proxy.send_signal(signal.SIGTERM)
        await proxy.wait()
        await asyncio.gather(*(n.stop() for n in nodes if n.proc is not None))


class Client:
    """A Socket.IO client through the balancer that does what an app does after a reconnect:
    join again, then fetch what it missed (`after_seq` up to the join's `last_seq`; the live
    stream starts after it). Pinned to a node by presetting HAProxy's cookie."""

    def __init__(self, url: str, token: str, me: Any, cid: str, node: str, transport: str) -> None:
        self.url, self.token, self.me, self.cid = url, token, str(me), cid
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        jar.update_cookies({"SERVERID": node}, URL(url))
        self.http = aiohttp.ClientSession(cookie_jar=jar)
        self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.2, reconnection_delay_max=0.5,
            http_session=self.http,
        )  # fmt: skip
        self.transports = [transport]
        self.seqs: list[int] = []  # every chat:message seq received, live or fetched, in order
        self.connects = 0
        self.joined = asyncio.Event()
        self.sio.on("chat:message", self._message)
        self.sio.on("connect", self._connected)
        self.sio.on("disconnect", self._disconnected)

    async def _message(self, data: dict[str, Any]) -> None:
        self.seqs.append(data["seq"])

    async def _disconnected(self, *_: Any) -> None:
        self.joined.clear()

    async def _connected(self) -> None:
        self.connects += 1
        self.joined.clear()
        self.sio.start_background_task(self._join)

    async def _join(self) -> None:
        ack = await self.sio.call("consultation:join", {"consultation_id": self.cid}, timeout=10)
        assert ack["ok"], ack
        seen = max(self.seqs, default=0)
        if ack["last_seq"] > seen:
            history = await self.sio.call(
                "chat:history",
                {"consultation_id": self.cid, "after_seq": seen, "limit": 200},
                timeout=10,
            )
            assert history["ok"], history
            missed = [
                m["seq"]
                for m in history["messages"]
                if m["seq"] <= ack["last_seq"] and m["sender_id"] != self.me  # not our own
            ]
            # Live messages after the join are > last_seq: insert the fetched ones before them.
            live = self.seqs[len([s for s in self.seqs if s <= seen]) :]
            self.seqs[len(self.seqs) - len(live) :] = missed + live
        self.joined.set()

    async def connect(self) -> None:
        await self.sio.connect(
            self.url, auth={"token": self.token}, transports=self.transports, wait_timeout=10
        )
        await asyncio.wait_for(self.joined.wait(), 10)

    def node(self) -> str | None:
        cookie = self.http.cookie_jar.filter_cookies(URL(self.url)).get("SERVERID")
        return cookie.value if cookie else None

    async def send(self, client_msg_id: str) -> dict[str, Any]:
        payload = {"consultation_id": self.cid, "client_msg_id": client_msg_id, "text": "hi"}
        for _ in range(100):  # what an app does: resend until acked (stored once by its id)
            if self.joined.is_set():
                with contextlib.suppress(TimeoutError, socketio.exceptions.SocketIOError):
                    ack: dict[str, Any] = await self.sio.call("chat:send", payload, timeout=2)
                    if ack.get("ok"):
                        return ack
            await asyncio.sleep(0.1)
        raise AssertionError(f"{client_msg_id} never acknowledged")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        await self.http.close()


async def _seqs_sent(db: asyncpg.Pool[Any], cid: Any, sender_id: Any) -> list[int]:
    rows = await db.fetch(
        "SELECT seq FROM chat_messages WHERE consultation_id = $1 AND sender_id = $2 ORDER BY seq",
        cid,
        sender_id,
    )
    return [r["seq"] for r in rows]


async def test_three_nodes_behind_haproxy_survive_a_kill_9(
    cluster: tuple[str, list[ServerProcess]], db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url, nodes = cluster
    s = await accepted_consultation(db, rate=100, wallet=100_000)
    user, astro = await get_user(db, s.user_id), await get_user(db, s.astrologer_id)
    assert user is not None
    assert astro is not None
    utoken, atoken = await token_for(db, rt_settings, user), await token_for(db, rt_settings, astro)
    cid = str(s.id)
    # REST through the balancer, spread over the nodes.
    async with aiohttp.ClientSession() as http:
        for _ in range(NODES):
            async with http.get(
                f"{url}/v1/consultations/{cid}", headers={"Authorization": f"Bearer {utoken}"}
            ) as response:
                assert response.status == 200, await response.text()
    # The user on node 0 over HTTP long-polling (sticky by cookie), the astrologer on node 1
    # over WebSocket.
    u = Client(url, utoken, s.user_id, cid, "s0", "polling")
    a = Client(url, atoken, s.astrologer_id, cid, "s1", "websocket")
    try:
        await u.connect()
        await a.connect()
        assert (u.node(), a.node()) == ("s0", "s1")
        for i in range(10):  # chat across nodes, both ways
            await u.send(f"u{i}")
            await a.send(f"a{i}")

        # The session runs (both joined): wait for some minutes, then kill the user's node.
        async def charged() -> int:
            return int(
                await db.fetchval(
                    "SELECT count(*) FROM meter_events WHERE consultation_id = $1"
                    " AND kind = 'charge'",
                    s.id,
                )
            )

        for _ in range(200):
            if await charged() >= 3:
                break
            await asyncio.sleep(0.05)
        assert await charged() >= 3
        assert nodes[0].proc is not None
        nodes[0].kill()
        await nodes[0].proc.wait()
        # The astrologer keeps writing while the user is cut off; the user sends too (acked
        # once reconnected through HAProxy to another node).
        sending = asyncio.gather(*(a.send(f"a-during{i}") for i in range(15)))
        for i in range(5):
            await u.send(f"u-after{i}")
        await sending
        assert u.connects >= 2
        assert u.node() in ("s1", "s2")  # the balancer moved it and set a new cookie
        for i in range(5):
            await a.send(f"a-after{i}")
        await asyncio.sleep(4 * MINUTE)  # the meter keeps charging on the surviving nodes
        last = await db.fetchval(
            "SELECT max(seq) FROM chat_messages WHERE consultation_id = $1", s.id
        )
        assert last == 10 + 10 + 15 + 5 + 5  # each message stored once, resends included
        for _ in range(100):
            if len(u.seqs) >= 30 and len(a.seqs) >= 15:
                break
            await asyncio.sleep(0.05)
        # Every message of the other participant once, in order, none lost.
        assert u.seqs == await _seqs_sent(db, s.id, s.astrologer_id)
        assert a.seqs == await _seqs_sent(db, s.id, s.user_id)
        # End through the balancer; every minute charged exactly once across the nodes.
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/consultations/{cid}/end",
                headers={"Authorization": f"Bearer {utoken}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            assert (await response.json())["end_reason"] == "user_ended"
    finally:
        await u.close()
        await a.close()
    n = await assert_each_minute_once(db, s.id)
    assert n >= 6
    c = await consultation(db, s.id)
    assert (c["billed_minutes"], c["total_charged"]) == (n, n * 100)
