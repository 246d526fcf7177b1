"""The in-app inbox and push device registration.

GET /v1/notifications · POST /v1/notifications/read · POST /v1/devices ·
DELETE /v1/devices/{token}
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field, model_validator

from api.framework import Call, Router
from api.models import Input, ListQuery, Output, encode_cursor, time_id_cursor
from core.errors import NotFound
from core.times import rfc3339
from notify import devices, inbox

router = Router("notifications")


class NotificationOut(Output):
    id: str
    event: str = Field(examples=["consultation_missed"])
    title: str = Field(description="in the person's language (users.locale)")
    body: str
    data: dict[str, Any] = Field(description="the event's fields: ids, names, amounts")
    read: bool
    created_at: str = Field(examples=["2026-11-25T14:03:00Z"])

    @classmethod
    def of(cls, n: inbox.Notification) -> NotificationOut:
        return cls(
            id=str(n.id),
            event=n.event,
            title=n.title,
            body=n.body,
            data=n.data,
            read=n.read_at is not None,
            created_at=rfc3339(n.created_at),
        )


class InboxOut(Output):
    items: list[NotificationOut]
    next_cursor: str | None = None
    unread_count: int


class ReadIn(Input):
    ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=100)
    up_to: uuid.UUID | None = Field(
        None, description="mark this notification and every older one read"
    )

    @model_validator(mode="after")
    def _one_of(self) -> ReadIn:
        if (self.ids is None) == (self.up_to is None):
            raise ValueError("give either ids or up_to")
        return self


class ReadOut(Output):
    marked: int
    unread_count: int


class DeviceIn(Input):
    platform: Literal["android", "ios", "web"]
    push_token: str = Field(min_length=1, max_length=4096, pattern=r"^\S+$")


class DeviceOut(Output):
    id: str
    platform: Literal["android", "ios", "web"]
    created_at: str


_before = time_id_cursor


@router.get("/v1/notifications", access="authenticated", query=ListQuery, response=InboxOut)
async def list_notifications(call: Call) -> InboxOut:
    """GET /v1/notifications

    The caller's inbox, newest first, keyset-paginated, with the unread count."""
    q = call.query(ListQuery)
    result = await inbox.load_inbox(
        call.services.db, call.principal.user_id, q.limit, _before(q.cursor)
    )
    last = result.items[-1] if result.items else None
    cursor = (
        encode_cursor(last.created_at.isoformat(), str(last.id))
        if last and result.has_more
        else None
    )
    return InboxOut(
        items=[NotificationOut.of(n) for n in result.items],
        next_cursor=cursor,
        unread_count=result.unread_count,
    )


@router.post(
    "/v1/notifications/read",
    access="authenticated",
    body=ReadIn,
    response=ReadOut,
    errors={404: "up_to is not one of the caller's notifications"},
)
async def mark_read(call: Call) -> ReadOut:
    """POST /v1/notifications/read

    Mark notifications read: `{ids: [...]}` (others' ids are ignored), or `{up_to: id}` for that
    one and everything older."""
    body = call.body(ReadIn)
    user_id = call.principal.user_id
    pool = call.services.db
    if body.up_to is not None:
        marked = await inbox.mark_read_up_to(pool, user_id, body.up_to)
        if marked is None:
            raise NotFound("no such notification")
    else:
        marked = await inbox.mark_read(pool, user_id, body.ids or [])
    return ReadOut(marked=marked, unread_count=await inbox.unread_count(pool, user_id))


@router.post("/v1/devices", access="authenticated", body=DeviceIn, response=DeviceOut, status=201)
async def register_device(call: Call) -> DeviceOut:
    """POST /v1/devices

    Register this install for push. Registering the same token again returns the same device;
    a token registered by another account moves to the caller."""
    body = call.body(DeviceIn)
    device, _ = await devices.register(
        call.services.db, call.principal.user_id, body.platform, body.push_token
    )
    return DeviceOut(
        id=str(device.id), platform=device.platform, created_at=rfc3339(device.created_at)
    )


@router.delete(
    "/v1/devices/{token}", access="authenticated", status=204, errors={404: "no such device"}
)
async def unregister_device(call: Call) -> None:
    """DELETE /v1/devices/{token}

    Stop push to this install (sign-out). The token is the one that was registered."""
    token = call.request.match_info["token"]
    if not await devices.unregister(call.services.db, call.principal.user_id, token):
        raise NotFound("no such device")
