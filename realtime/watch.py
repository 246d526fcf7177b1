"""Presence to those who watch: `presence:watch` / `presence:unwatch`.

A client subscribes to the astrologers it shows (a list page, a profile, the ones it follows) and
gets their `presence` events only; each astrologer has a room `presence:{id}` (core.events.Room),
so a status change is one emit to that room, delivered by every process to its own watchers
through the Socket.IO Redis manager. Before this, every change went to every socket: with N
sockets and M astrologers coming online, N x M packets; now the sum of their watchers.

Join first, then read: the ack of `presence:watch` carries the current statuses, read after the
rooms were entered, so a change between the two is either in the ack or arrives as an event.
An astrologer's own sockets watch the astrologer from connect on (their desk shows their status).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from consultations import presence
from core.errors import Conflict
from core.events import Room

# One request names at most a page or two of astrologers (discovery pages are ≤ 50).
WATCH_BATCH_MAX = 100
# Per connection: a few pages, a profile and the followed ones; each is one room membership (a
# few hundred bytes in the manager), and the cap keeps a client from joining every room.
WATCH_MAX = 500
ROOM_PREFIX = "presence:"


class WatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    astrologer_ids: list[uuid.UUID] = Field(min_length=1, max_length=WATCH_BATCH_MAX)


class UnwatchIn(BaseModel):
    """No ids: stop watching everyone."""

    model_config = ConfigDict(extra="forbid")
    astrologer_ids: list[uuid.UUID] | None = Field(None, max_length=WATCH_BATCH_MAX)


class PresenceWatch:
    """The two handlers, on a `socketio.AsyncNamespace` (its rooms and services)."""

    def __init__(self, namespace: Any) -> None:
        self.namespace = namespace

    def watched(self, sid: str) -> set[str]:
        return {r for r in self.namespace.rooms(sid) if r.startswith(ROOM_PREFIX)}

    async def watch(self, state: Any, data: WatchIn) -> dict[str, Any]:
        """Enter the presence rooms of `astrologer_ids`; ack their current statuses."""
        ids = list(dict.fromkeys(data.astrologer_ids))
        current = self.watched(state.sid)
        new = [i for i in ids if Room.presence(i) not in current]
        if len(current) + len(new) > WATCH_MAX:
            raise Conflict(
                f"watching at most {WATCH_MAX} astrologers per connection; unwatch some first",
                code="too_many_watched",
            )
        for astrologer_id in new:
            await self.namespace.enter_room(state.sid, Room.presence(astrologer_id))
        statuses = await presence.get_statuses(self.namespace.services.redis, ids)
        return {
            "presence": [{"astrologer_id": str(i), "status": statuses[i]} for i in ids],
        }

    async def unwatch(self, state: Any, data: UnwatchIn) -> dict[str, Any]:
        rooms = (
            self.watched(state.sid)
            if data.astrologer_ids is None
            else {Room.presence(i) for i in data.astrologer_ids}
        )
        if state.principal.role == "astrologer":
            rooms.discard(Room.presence(state.user_id))  # their own desk keeps its status
        for room in rooms:
            await self.namespace.leave_room(state.sid, room)
        return {}
