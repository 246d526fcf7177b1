"""Chat history over REST: what a client that reconnects (or opens the app) reads after its last
seq. The same rows as Socket.IO `chat:history`, from `consultations.chat`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from api.framework import Call, Router
from api.models import Input, Output, encode_cursor, int_cursor
from consultations import attachments, chat, lifecycle

router = Router("chat")
PAGE_MAX = 100  # the API's list maximum


class MessagesQuery(Input):
    after_seq: int = Field(0, ge=0, le=2**62, description="only messages with a greater seq")
    limit: int = Field(100, ge=1, le=PAGE_MAX)
    cursor: str | None = Field(None, max_length=512, description="next_cursor of a previous page")


class MessageOut(Output):
    id: str
    consultation_id: str
    seq: int
    sender_id: str
    client_msg_id: str
    text: str
    sent_at: datetime
    # Issue 17: {id, content_type, size, url}; the URL is signed and expires within minutes.
    attachment: dict[str, Any] | None = None


class MessagesPage(Output):
    items: list[MessageOut]
    next_cursor: str | None = Field(None, description="more messages follow: pass it as cursor")
    last_seq: int = Field(description="the seq of the newest message of the consultation")


@router.get(
    "/v1/consultations/{id}/messages",
    access=("user", "astrologer", "admin"),
    query=MessagesQuery,
    response=MessagesPage,
)
async def list_messages(call: Call) -> MessagesPage:
    """GET /v1/consultations/{id}/messages?after_seq=N

    Chat history in seq order, for its two participants or an admin; anyone else gets 404."""
    query = call.query(MessagesQuery)
    principal = call.principal
    consultation_id = call.uuid("id")
    db = call.services.db
    await lifecycle.get_for(db, consultation_id, principal.user_id, admin=principal.role == "admin")
    cursor_seq = int_cursor(query.cursor)
    after = query.after_seq if cursor_seq is None else cursor_seq
    messages = await chat.history(db, consultation_id, after, query.limit + 1)
    more = len(messages) > query.limit
    messages = messages[: query.limit]
    messages = await attachments.fill(call.services, messages)  # issue 17
    return MessagesPage(
        items=[MessageOut.model_validate(m.to_public()) for m in messages],
        next_cursor=encode_cursor(messages[-1].seq) if more else None,
        last_seq=await chat.last_seq(db, consultation_id),
    )
