"""Admin: the astrologer verification queue and decisions, and blocking people. Audited."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.astrologer_profile import AstrologerProfileOut, DocumentOut
from api.framework import Call, Router
from api.models import Input, ListQuery, Output, Page, encode_cursor, time_id_cursor
from auth import admin, profiles
from core.storage import STORAGE

router = Router("admin")


class QueueQuery(ListQuery):
    verification: Literal["pending", "approved", "rejected"] = "pending"


class QueueItemOut(AstrologerProfileOut):
    phone: str
    documents: list[DocumentOut]


class DecisionIn(Input):
    decision: Literal["approve", "reject"]
    reason: str | None = Field(None, min_length=1, max_length=1000)


class BlockIn(Input):
    reason: str = Field(min_length=1, max_length=1000)


class Done(Output):
    ok: bool = True


@router.get("/v1/admin/astrologers", access="admin", query=QueueQuery, response=Page[QueueItemOut])
async def verification_queue(call: Call) -> Page[QueueItemOut]:
    """GET /v1/admin/astrologers?verification=pending

    The review queue, oldest submission first, each with its documents' download URLs."""
    query = call.query(QueueQuery)
    after = time_id_cursor(query.cursor)
    db = call.services.db
    items = await admin.verification_queue(
        db, query.verification, limit=query.limit + 1, after=after
    )
    page, more = items[: query.limit], len(items) > query.limit
    docs = profiles.group_documents(
        await profiles.documents_of(db, [i.profile.user_id for i in page])
    )
    storage = call.request.app[STORAGE]
    out = [
        QueueItemOut(
            **AstrologerProfileOut.of(i.profile).model_dump(),
            phone=i.phone,
            documents=[DocumentOut.of(d, storage) for d in docs.get(i.profile.user_id, [])],
        )
        for i in page
    ]
    last = page[-1].profile if page else None
    cursor = (
        encode_cursor(last.updated_at.isoformat(), str(last.user_id)) if more and last else None
    )
    return Page[QueueItemOut](items=out, next_cursor=cursor)


@router.post(
    "/v1/admin/astrologers/{id}/verification",
    access="admin",
    body=DecisionIn,
    response=AstrologerProfileOut,
)
async def decide(call: Call) -> AstrologerProfileOut:
    """POST /v1/admin/astrologers/{id}/verification

    Approve or reject (with a reason, shown to the astrologer) a profile; recorded in the audit
    log."""
    body = call.body(DecisionIn)
    profile = await admin.decide_verification(
        call.services, call.principal.user_id, call.uuid("id"), body.decision, body.reason
    )
    return AstrologerProfileOut.of(profile)


@router.post(
    "/v1/admin/users/{id}/block",
    access="admin",
    body=BlockIn,
    response=Done,
    errors={409: "cannot_block_self, or cannot_block_admin (admins are managed by the CLI)"},
)
async def block_user(call: Call) -> Done:
    """POST /v1/admin/users/{id}/block

    Block a person: every login is revoked and their tokens are refused at once. Audited."""
    body = call.body(BlockIn)
    await admin.set_user_blocked(
        call.services, call.principal.user_id, call.uuid("id"), True, body.reason
    )
    return Done()


@router.post(
    "/v1/admin/users/{id}/unblock",
    access="admin",
    body=BlockIn,
    response=Done,
    errors={409: "cannot_block_self, or cannot_block_admin (admins are managed by the CLI)"},
)
async def unblock_user(call: Call) -> Done:
    """POST /v1/admin/users/{id}/unblock

    Let a blocked person sign in again (old logins stay revoked). Audited."""
    body = call.body(BlockIn)
    await admin.set_user_blocked(
        call.services, call.principal.user_id, call.uuid("id"), False, body.reason
    )
    return Done()
