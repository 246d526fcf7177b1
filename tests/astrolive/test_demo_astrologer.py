"""The demo astrologer answers: a user alone completes a paid chat with it, over the real server
(REST and Socket.IO), with one-second billed minutes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from api.framework import SERVICES
from astrolive.app import create_app
from astrolive.demo_astrologer import ANSWERS, DEMO_BOT, DemoAstrologerBot, DemoRefused
from core.settings import Env, Settings
from tests.conftest import make_settings
from tests.factories import fund, make_user, token_for
from tests.realtime.support import Peer


@pytest.mark.slow
async def test_a_user_completes_a_paid_chat_with_the_demo_astrologer(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Slow: a real session of about four one-second minutes."""
    settings = make_settings(
        database_url, redis_url, tmp_path / "data",
        billing_minute_seconds=1, demo_astrologer_session_seconds=3.5,
        realtime_heartbeat_seconds=0.5,
    )  # fmt: skip
    server = await aiohttp_server(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    bot = DemoAstrologerBot(settings, url)
    stop = asyncio.Event()
    running = asyncio.create_task(bot.run(stop))
    user_peer = Peer()
    try:
        await asyncio.wait_for(bot.ready.wait(), 20)
        pool = server.app[SERVICES].db
        user = await make_user(pool)
        await fund(pool, user.id, 10_000)
        token = await token_for(pool, settings, user)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            listed = await (await http.get("/v1/astrologers?online=true")).json()
            assert DEMO_BOT.display_name in [a["display_name"] for a in listed["items"]]
            await user_peer.connect(url, token)
            created = await http.post(
                "/v1/consultations", json={"astrologer_id": bot.user_id, "type": "chat"}
            )
            assert created.status == 201, await created.text()
            cid = (await created.json())["id"]

            def status_is(status: str) -> Callable[[list[Any]], bool]:
                return lambda events: any(
                    e["consultation"]["id"] == cid and e["consultation"]["status"] == status
                    for e in events
                )

            await user_peer.wait_for("consultation:updated", status_is("accepted"), 10)
            joined = await user_peer.call("consultation:join", {"consultation_id": cid})
            assert joined["ok"], joined
            await user_peer.wait_for("session:started", lambda e: len(e) > 0, 10)
            sent = await user_peer.call(
                "chat:send",
                {"consultation_id": cid, "client_msg_id": "q1", "text": "Will I pass?"},
            )
            assert sent["ok"], sent

            def from_bot(text: str) -> Callable[[list[Any]], bool]:
                return lambda msgs: any(
                    m["sender_id"] == bot.user_id and m["text"] == text for m in msgs
                )

            await user_peer.wait_for("chat:message", from_bot(ANSWERS[0]), 10)
            ended = await user_peer.wait_for("session:ended", lambda e: len(e) > 0, 15)
            assert ended[0]["reason"] == "astrologer_ended"
            assert ended[0]["billed_minutes"] >= 3
            assert ended[0]["total_charged"] == ended[0]["billed_minutes"] * DEMO_BOT.rates[0]
            wallet = await (await http.get("/v1/wallet")).json()
            assert wallet["balance"] == 10_000 - ended[0]["total_charged"]
    finally:
        stop.set()
        await user_peer.close()
        await asyncio.wait_for(running, 10)


def test_production_refuses_the_demo_astrologer(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="DEMO_ASTROLOGER"):
        Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only option
            _env_file=None, astrolive_env=Env.PRODUCTION, jwt_secret="s" * 40,
            sms_provider="sns", data_keys="k1:" + "A" * 43 + "=", demo_astrologer=True,
        )  # fmt: skip
    production = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only option
        _env_file=None, astrolive_env=Env.PRODUCTION, jwt_secret="s" * 40,
        sms_provider="sns", data_keys="k1:" + "A" * 43 + "=",
    )  # fmt: skip
    assert not production.demo_astrologer_on
    with pytest.raises(DemoRefused):
        DemoAstrologerBot(production, "http://127.0.0.1:1")
