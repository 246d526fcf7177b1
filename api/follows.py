"""Following astrologers, to hear when they come online.

POST /v1/astrologers/{id}/follow · DELETE /v1/astrologers/{id}/follow
"""

from __future__ import annotations

from api.framework import Call, Router
from core.errors import NotFound
from notify import follows

router = Router("astrologers")


@router.post(
    "/v1/astrologers/{id}/follow",
    access="user",
    status=204,
    errors={404: "no such verified astrologer"},
)
async def follow_astrologer(call: Call) -> None:
    """POST /v1/astrologers/{id}/follow

    Follow a verified astrologer: a push when they come online (at most once per half hour).
    Following again changes nothing."""
    if not await follows.follow(call.services.db, call.principal.user_id, call.uuid("id")):
        raise NotFound("no such astrologer")


@router.delete("/v1/astrologers/{id}/follow", access="user", status=204)
async def unfollow_astrologer(call: Call) -> None:
    """DELETE /v1/astrologers/{id}/follow

    Stop following; not following already is fine."""
    await follows.unfollow(call.services.db, call.principal.user_id, call.uuid("id"))
