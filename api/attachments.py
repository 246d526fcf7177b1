"""Chat attachments (API.md v1.1 "Chat attachments"): the presigned upload and a fresh link."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt

from api.framework import Call, Router
from api.models import Input, Output
from consultations import attachments
from core import ratelimit

router = Router("chat")

ContentType = Literal["image/jpeg", "image/png", "image/webp", "application/pdf"]


class AttachmentIn(Input):
    content_type: ContentType
    size: StrictInt = Field(gt=0, description="bytes; at most ATTACHMENT_MAX_BYTES (10 MiB)")


class UploadOut(Output):
    attachment_id: str
    upload_url: str
    method: str
    headers: dict[str, str]
    expires_in: int


class AttachmentOut(Output):
    id: str
    content_type: str
    size: int
    url: str = Field(description="signed; expires within ATTACHMENT_URL_SECONDS (5 min)")


@router.post(
    "/v1/consultations/{id}/attachments",
    access=("user", "astrologer"),
    body=AttachmentIn,
    response=UploadOut,
    status=201,
    errors={404: "not a participant", 409: "invalid_state (not accepted or active)"},
    rate_limit=ratelimit.UPLOAD,
)
async def create_attachment(call: Call) -> UploadOut:
    """POST /v1/consultations/{id}/attachments

    A presigned upload for a file to send in the chat (a participant, while the consultation is
    accepted or active). PUT exactly `size` bytes of `content_type` to `upload_url` with
    `headers`, then `chat:send` with the `attachment_id`: the server checks the bytes (the real
    type must be the declared one) and strips image metadata before the message is sent."""
    body = call.body(AttachmentIn)
    attachment, upload = await attachments.create(
        call.services,
        consultation_id=call.uuid("id"),
        user_id=call.principal.user_id,
        content_type=body.content_type,
        size=body.size,
    )
    return UploadOut(
        attachment_id=str(attachment.id),
        upload_url=upload.url,
        method=upload.method,
        headers=upload.headers,
        expires_in=upload.expires_in,
    )


@router.get(
    "/v1/consultations/{id}/attachments/{attachment_id}",
    access=("user", "astrologer", "admin"),
    response=AttachmentOut,
)
async def get_attachment(call: Call) -> AttachmentOut:
    """GET /v1/consultations/{id}/attachments/{attachment_id}

    A sent attachment with a fresh signed download URL, for the two participants and admins."""
    found = await attachments.get_for(
        call.services,
        consultation_id=call.uuid("id"),
        attachment_id=call.uuid("attachment_id"),
        viewer_id=call.principal.user_id,
        admin=call.principal.role == "admin",
    )
    return AttachmentOut.model_validate(found)
