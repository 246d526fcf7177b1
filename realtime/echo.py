"""The pre-call echo test: the server's own WebRTC peer (aiortc).

A client sends an offer (`rtc:echo`); the server answers with a peer that
- sends every audio and video track it receives straight back (the user sees and hears themselves
  through the network path a call would take),
- echoes every data-channel message verbatim (the client times its own round trips),
- reports the RTCP round-trip time it measures to the client (`rtc:echo:stats {kind, rtt_ms}`),
and closes itself after `ECHO_MAX_SECONDS`.

The server peer uses no STUN/TURN servers of its own: it answers from its host addresses, which is
what a publicly reachable server has; the client brings the STUN/TURN of `/v1/rtc/ice-servers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from core.errors import ValidationFailed
from realtime import keys

log = logging.getLogger(__name__)


class EchoPeer:
    def __init__(
        self,
        on_stats: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        max_seconds: float = keys.ECHO_MAX_SECONDS,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._on_close = on_close  # gives back the echo slot (realtime/echo_slots.py)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._relay = MediaRelay()
        self._on_stats = on_stats
        self._max_seconds = max_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.pc.addTrack(self._relay.subscribe(track))

        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                channel.send(message)

    async def answer(self, sdp: str, type_: str) -> RTCSessionDescription:
        """Take the client's offer and return the server's answer (all candidates included)."""
        if not sdp.startswith("v=0") or "\nm=" not in sdp:
            await self.close()
            raise ValidationFailed({"sdp": "not an SDP offer with media or a data channel"})
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
        except (ValueError, KeyError, IndexError) as exc:
            await self.close()
            raise ValidationFailed({"sdp": f"not a usable offer: {exc}"}) from exc
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._tasks.append(asyncio.create_task(self._report_rtt()))
        self._tasks.append(asyncio.create_task(self._expire()))
        return self.pc.localDescription

    async def _report_rtt(self) -> None:
        reported: dict[str, float] = {}
        while not self._closed:
            await asyncio.sleep(keys.ECHO_STATS_INTERVAL_SECONDS)
            stats = await self.pc.getStats()
            for report in stats.values():
                if getattr(report, "type", None) != "remote-inbound-rtp":
                    continue
                rtt = getattr(report, "roundTripTime", None)
                kind = str(getattr(report, "kind", ""))
                if rtt is None or reported.get(kind) == rtt:
                    continue
                reported[kind] = rtt
                try:
                    await self._on_stats({"kind": kind, "rtt_ms": round(rtt * 1000, 1)})
                except Exception:
                    log.warning("echo stats not delivered", exc_info=True)

    async def _expire(self) -> None:
        await asyncio.sleep(self._max_seconds)
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.pc.close()
        finally:
            if self._on_close is not None:
                await self._on_close()
