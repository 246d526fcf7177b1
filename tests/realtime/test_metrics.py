"""The domain series of GET /metrics (core/metrics.py) exist and move with what happens:
sockets, rooms, chat messages and resends, presence, active sessions, queued jobs; and every
series the Grafana dashboard (docs/grafana-astrolive.json) plots is one the services export."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from db.identity import User, get_user
from live import keys as meter_keys
from tests.factories import token_for
from tests.meter.support import accepted_consultation
from tests.realtime.support import Peer


async def _user(db: asyncpg.Pool[Any], user_id: Any) -> User:
    user = await get_user(db, user_id)
    assert user is not None
    return user


TOKEN = "metrics-" + "t" * 32
DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-astrolive.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(url: str) -> Samples:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_domain_series_exist_and_move(
    start_server: Any, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    url, app = await start_server(metrics_token=TOKEN)  # /metrics behind its token (issue 14)
    before = await _scrape(url)
    for name in (
        "astrolive_socketio_connected_sockets",
        "astrolive_sessions_active",
        "astrolive_jobs_queued",
        "astrolive_meter_charge_lag_seconds_count",
        "astrolive_socketio_slow_consumer_drops_total",
    ):
        assert any(key[0] == name for key in before), name
    s = await accepted_consultation(db, rate=100, wallet=10_000)
    cid = s.id
    utoken = await token_for(db, rt_settings, await _user(db, s.user_id))
    atoken = await token_for(db, rt_settings, await _user(db, s.astrologer_id))
    u, a = Peer(), Peer()
    try:
        await u.connect(url, utoken)
        await a.connect(url, atoken)
        for p in (u, a):  # both joined: the session starts and minute 1 is charged
            assert (await p.call("consultation:join", {"consultation_id": str(cid)}))["ok"]
        await u.wait_for("session:started", lambda es: len(es) == 1)
        send = {"consultation_id": str(cid), "client_msg_id": "m1", "text": "hello"}
        first = await u.call("chat:send", send)
        again = await u.call("chat:send", send)  # a resend: same seq, counted as a resend
        assert first["seq"] == again["seq"] == 1
        redis = app_redis(app)
        await redis.zadd(meter_keys.DUE, {str(uuid.uuid4()): 0})  # a running meter
        during = await _scrape(url)
        assert (await u.call("consultation:end", {"consultation_id": str(cid)}))["ok"]
        after = await _scrape(url)
    finally:
        await u.close()
        await a.close()
    assert _value(during, "astrolive_socketio_connected_sockets") == 2
    assert _value(during, "astrolive_socketio_rooms", kind="consultation") == 1
    assert _value(during, "astrolive_socketio_room_members", kind="consultation") == 2
    assert _value(during, "astrolive_socketio_room_members", kind="user") == 2
    assert _value(during, "astrolive_socketio_queued_packets", stat="max") >= 0
    for kind in ("new", "resend"):
        delta = _value(during, "astrolive_chat_messages_total", kind=kind) - _value(
            before, "astrolive_chat_messages_total", kind=kind
        )
        assert delta == 1, kind
    assert _value(during, "astrolive_sessions_active") >= 1
    for name in ("astrolive_meter_charges_total", "astrolive_meter_charge_lag_seconds_count"):
        assert _value(during, name) - _value(before, name) == 1, name  # minute 1
    stops = "astrolive_meter_stops_total"
    assert (
        _value(after, stops, reason="user_ended") - _value(before, stops, reason="user_ended") == 1
    )


def app_redis(app: Any) -> Any:
    from api.framework import SERVICES

    return app[SERVICES].redis


def test_dashboard_plots_only_exported_series() -> None:
    """Every metric name in the dashboard's queries is one a web process or a worker exports."""
    from prometheus_client import CollectorRegistry

    from api.middleware import HttpMetrics
    from billing.reconcile import ReconcileMetrics
    from core.metrics import DomainMetrics
    from workers.metrics import WorkerMetrics

    registry = CollectorRegistry()
    HttpMetrics(registry)
    DomainMetrics(registry)
    ReconcileMetrics(registry)
    families = [*registry.collect(), *WorkerMetrics().registry.collect()]
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    exported = {f.name + suffix for f in families for suffix in suffixes}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    used = {
        name
        for expr in exprs
        for name in re.findall(r"\b((?:astrolive|http|ledger)_[a-z_]+)\b", expr)
    }
    assert used
    assert used - exported == set()
