"""Domain metrics of a web process (Prometheus): sockets, rooms, chat, presence, the meter, jobs.

`domain()` is the process's one `DomainMetrics`, made on first use (never at import) on its own
registry, which `GET /metrics` serves after the HTTP series (api/ops.py). Counters count what
this process did; Prometheus sums the web processes. Values that are a state rather than a count
(sockets open here, queue depths, active sessions, queued jobs) are read when scraped: whoever
owns the state registers a probe (`on_scrape`) that sets its gauges.

Worker processes serve their own series (workers/metrics.py): jobs run by outcome (failed
included), jobs running, durations, and the ledger reconciliation's breaks.

The helpers other packages call (each a counter increment or an observation; never raising):
- `chat_message(resend)`        a chat send acknowledged (stored now, or a stored resend);
- `slow_consumer_dropped()`     a socket disconnected for not reading (realtime/transport.py);
- `presence_sent(sockets)`      a presence change and how many sockets it was queued to;
- `meter_charged(lags)`         minutes charged, each `lag` seconds after it was due;
- `meter_stopped(reason)`       a session's meter stopped (insufficient_balance, disconnected...);
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None] | None]

# Charge lag: a minute is due at its start; the meter loop polls every fraction of a second, so
# healthy lags are tens of milliseconds and anything past a few seconds is an incident.
CHARGE_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class DomainMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._probes: list[Probe] = []
        # real time (per process)
        self.connected_sockets = Gauge(
            "astrolive_socketio_connected_sockets",
            "Socket.IO connections open on this process",
            registry=r,
        )
        self.rooms = Gauge(
            "astrolive_socketio_rooms",
            "Rooms with at least one socket on this process, by kind",
            ["kind"],
            registry=r,
        )
        self.room_members = Gauge(
            "astrolive_socketio_room_members",
            "Room memberships of this process's sockets, by room kind",
            ["kind"],
            registry=r,
        )
        self.queued_packets = Gauge(
            "astrolive_socketio_queued_packets",
            "Packets waiting in this process's per-socket outbound queues (sum and max)",
            ["stat"],
            registry=r,
        )
        self.slow_consumer_drops = Counter(
            "astrolive_socketio_slow_consumer_drops",
            "Sockets disconnected because their outbound queue reached its cap",
            registry=r,
        )
        self.relay_held = Gauge(
            "astrolive_chat_relay_held_messages",
            "Chat messages held by this process's relay waiting for an earlier seq",
            registry=r,
        )
        self.relay_outbox = Gauge(
            "astrolive_chat_relay_outbox_messages",
            "Chat messages stored here and not yet published to the other processes",
            registry=r,
        )
        self.chat_messages = Counter(
            "astrolive_chat_messages",
            "Chat sends acknowledged: new (stored now) or resend (client_msg_id already stored)",
            ["kind"],
            registry=r,
        )
        self.chat_gap_fills = Counter(
            "astrolive_chat_gap_fills",
            "Gaps in a consultation's seqs filled from PostgreSQL (a lost publish)",
            registry=r,
        )
        self.presence_changes = Counter(
            "astrolive_presence_changes",
            "Presence changes published (one per astrologer status change)",
            registry=r,
        )
        # the meter and jobs (cluster-wide states read at scrape time; counts per process)
        self.active_sessions = Gauge(
            "astrolive_sessions_active",
            "Live sessions whose meter is running (cluster-wide, from Redis)",
            registry=r,
        )
        self.charges = Counter(
            "astrolive_meter_charges",
            "Minutes charged by this process (free minutes included)",
            registry=r,
        )
        self.charge_lag = Histogram(
            "astrolive_meter_charge_lag_seconds",
            "How long after it was due each minute was charged",
            buckets=CHARGE_LAG_BUCKETS,
            registry=r,
        )
        self.stops = Counter(
            "astrolive_meter_stops",
            "Sessions whose meter this process stopped, by reason",
            ["reason"],
            registry=r,
        )
        self.jobs_queued = Gauge(
            "astrolive_jobs_queued",
            "Jobs waiting in the arq queue, due or deferred (cluster-wide, from Redis)",
            registry=r,
        )

    # probes ----------------------------------------------------------------------------------

    def on_scrape(self, probe: Probe) -> None:
        """Run `probe` before each scrape (it sets gauges from the state it owns)."""
        self._probes.append(probe)

    def forget(self, probe: Probe) -> None:
        if probe in self._probes:
            self._probes.remove(probe)

    async def refresh(self) -> None:
        """Run the probes; one that fails leaves its gauges as they were."""
        for probe in list(self._probes):
            try:
                result = probe()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.warning("metrics probe failed", exc_info=True)

    # helpers for the packages ----------------------------------------------------------------

    def chat_message(self, *, resend: bool) -> None:
        self.chat_messages.labels("resend" if resend else "new").inc()

    def slow_consumer_dropped(self) -> None:
        self.slow_consumer_drops.inc()

    def presence_sent(self) -> None:
        self.presence_changes.inc()

    def meter_charged(self, lags: Sequence[float]) -> None:
        """Minutes charged (after their commit), each with how late it was after it was due."""
        self.charges.inc(len(lags))
        for lag in lags:
            self.charge_lag.observe(max(0.0, lag))

    def meter_stopped(self, reason: str) -> None:
        self.stops.labels(reason).inc()


class _Holder:
    metrics: DomainMetrics | None = None


def domain() -> DomainMetrics:
    """This process's domain metrics (made on first use)."""
    if _Holder.metrics is None:
        _Holder.metrics = DomainMetrics()
    return _Holder.metrics
