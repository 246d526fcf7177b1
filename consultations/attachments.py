"""Chat attachments: a presigned upload, the bytes checked before the message is sent, signed
short-lived download URLs for the two participants and admins.

    POST /v1/consultations/{id}/attachments {content_type, size}  -> a presigned upload
    (the client PUTs the file)
    chat:send {consultation_id, client_msg_id, attachment_id, text?}
      -> the uploaded bytes are checked by content: the real type must be the declared one
         (magic numbers; images decoded by Pillow, PDFs by header and trailer), at most
         ATTACHMENT_MAX_BYTES; images are re-encoded without their metadata (EXIF: GPS, camera)
         and the clean copy replaces the upload; only then is the message stored and sent.
         Nothing uploaded: `attachment_not_ready`; anything else wrong: `attachment_invalid`.

Where the bytes live is derived from the ids (`attachments/<consultation>/<attachment>.<ext>`), so
no storage key is kept beside personal data. A download URL is signed by the storage (S3 or the
local folder) and lives ATTACHMENT_URL_SECONDS (five minutes); `chat:message`, the history and
GET .../attachments/{id} carry a fresh one, for participants and admins only.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from consultations import chat, lifecycle
from core.errors import AppError, Conflict, NotFound, ValidationFailed
from core.services import Services
from core.storage import LocalStorage, S3Storage, Storage

log = logging.getLogger(__name__)

# content type -> (file extension, Pillow format; None: not an image)
TYPES: dict[str, tuple[str, str | None]] = {
    "image/jpeg": ("jpg", "JPEG"),
    "image/png": ("png", "PNG"),
    "image/webp": ("webp", "WEBP"),
    "application/pdf": ("pdf", None),
}
# A photo of a palm is a few megapixels; anything far bigger is refused before it is decoded
# (a small file can claim a huge canvas: a decompression bomb).
MAX_PIXELS = 40_000_000
UPLOAD_STATES = ("accepted", "active")


class AttachmentNotReady(AppError):
    status, code, message = 409, "attachment_not_ready", "the file has not been uploaded yet"


class AttachmentInvalid(AppError):
    status, code, message = 422, "attachment_invalid", "the uploaded file is not what was declared"


@dataclass(frozen=True)
class Attachment:
    id: uuid.UUID
    consultation_id: uuid.UUID
    uploader_id: uuid.UUID
    content_type: str
    declared_size: int
    size: int | None
    status: str

    @property
    def key(self) -> str:
        ext = TYPES[self.content_type][0]
        return f"attachments/{self.consultation_id}/{self.id}.{ext}"


_COLUMNS = "id, consultation_id, uploader_id, content_type, declared_size, size, status"
INSERT = f"""
INSERT INTO chat_attachments (id, consultation_id, uploader_id, content_type, declared_size)
VALUES ($1, $2, $3, $4, $5)
RETURNING {_COLUMNS}
"""
GET = f"SELECT {_COLUMNS} FROM chat_attachments WHERE id = $1"
GET_MANY = f"SELECT {_COLUMNS} FROM chat_attachments WHERE id = ANY($1::uuid[])"
LOCK = f"SELECT {_COLUMNS} FROM chat_attachments WHERE id = $1 FOR UPDATE"
MARK = """
UPDATE chat_attachments SET status = $2, size = $3, checked_at = now() WHERE id = $1
"""


def _of(row: asyncpg.Record) -> Attachment:
    return Attachment(**{k: row[k] for k in Attachment.__dataclass_fields__})


# -- upload -----------------------------------------------------------------------------------


async def create(
    services: Services,
    *,
    consultation_id: uuid.UUID,
    user_id: uuid.UUID,
    content_type: str,
    size: int,
) -> tuple[Attachment, Any]:
    """A participant's upload slot while the consultation is accepted or active: the row and a
    presigned upload. 404 for anyone else; 409 invalid_state; 422 type or size."""
    settings = services.settings
    if content_type not in TYPES:
        raise ValidationFailed({"content_type": "one of " + ", ".join(TYPES)})
    if not 0 < size <= settings.attachment_max_bytes:
        raise ValidationFailed({"size": f"1 to {settings.attachment_max_bytes} bytes"})
    c = await lifecycle.get(services.db, consultation_id)
    if c is None or user_id not in (c.user_id, c.astrologer_id):
        raise NotFound("no such consultation")
    if c.status not in UPLOAD_STATES:
        raise lifecycle.InvalidState(c.status, "attachments are sent during a session")
    row = await services.db.fetchrow(
        INSERT, uuid.uuid4(), consultation_id, user_id, content_type, size
    )
    assert row is not None
    attachment = _of(row)
    upload = services.storage.presign_upload(attachment.key, content_type, size)
    return attachment, upload


# -- the bytes --------------------------------------------------------------------------------


async def _read(storage: Storage, key: str) -> bytes | None:
    if isinstance(storage, LocalStorage):
        path = storage.path_of(key)
        return await asyncio.to_thread(lambda: path.read_bytes() if path.is_file() else None)
    if isinstance(storage, S3Storage):
        s3 = storage

        def get() -> bytes | None:
            try:
                body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"]
                return bytes(body.read())
            except s3.client.exceptions.NoSuchKey:
                return None

        return await asyncio.to_thread(get)
    raise TypeError(f"attachments cannot read from {type(storage).__name__}")


async def _write(storage: Storage, key: str, data: bytes, content_type: str) -> None:
    if isinstance(storage, LocalStorage):
        path = storage.path_of(key)
        await asyncio.to_thread(path.write_bytes, data)
        return
    if isinstance(storage, S3Storage):
        s3 = storage
        await asyncio.to_thread(
            lambda: s3.client.put_object(
                Bucket=s3.bucket, Key=key, Body=data, ContentType=content_type
            )
        )
        return
    raise TypeError(f"attachments cannot write to {type(storage).__name__}")


def sniff(data: bytes) -> str | None:
    """The content type the bytes really are (by their magic numbers), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def clean(data: bytes, content_type: str, max_bytes: int) -> bytes:
    """The checked file: the declared type must be the real one; an image is decoded and
    re-encoded without metadata; a PDF must have its header, a version and an end-of-file mark.
    Raises `AttachmentInvalid`."""
    if len(data) > max_bytes:
        raise AttachmentInvalid("the file is larger than allowed", details={"max": max_bytes})
    real = sniff(data)
    if real != content_type:
        raise AttachmentInvalid(details={"declared": content_type, "found": real or "unknown"})
    fmt = TYPES[content_type][1]
    if fmt is None:
        if not data[5:8].replace(b".", b"").isdigit() or b"%%EOF" not in data[-1024:]:
            raise AttachmentInvalid("not a complete PDF")
        return data
    return _reencode(data, fmt)


def _reencode(data: bytes, fmt: str) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.format != fmt:
                raise AttachmentInvalid(details={"found": probe.format})
            if probe.width * probe.height > MAX_PIXELS:
                raise AttachmentInvalid(
                    "the image is too large", details={"max_pixels": MAX_PIXELS}
                )
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = image.copy()  # the pixels only: EXIF, XMP, ICC text chunks stay behind
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise AttachmentInvalid("the image does not decode") from exc
    if fmt == "JPEG" and pixels.mode not in ("RGB", "L"):
        pixels = pixels.convert("RGB")
    pixels.info = {}
    out = io.BytesIO()
    options: dict[str, Any] = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    pixels.save(out, format=fmt, **options)
    return out.getvalue()


async def ready(
    services: Services,
    *,
    attachment_id: uuid.UUID,
    consultation_id: uuid.UUID,
    sender_id: uuid.UUID,
) -> Attachment:
    """Check an uploaded attachment once (it stays `ready` afterwards): the sender's own, of
    this consultation. `attachment_not_ready` (nothing uploaded yet), `attachment_invalid`."""
    settings = services.settings
    async with services.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LOCK, attachment_id)
        if row is None:
            raise AttachmentInvalid("no such attachment")
        a = _of(row)
        if a.consultation_id != consultation_id or a.uploader_id != sender_id:
            raise AttachmentInvalid("no such attachment")
        if a.status == "ready":
            return a
        if a.status == "invalid":
            raise AttachmentInvalid()
        data = await _read(services.storage, a.key)
        if data is None:
            raise AttachmentNotReady()
        try:
            cleaned = await asyncio.to_thread(
                clean, data, a.content_type, settings.attachment_max_bytes
            )
        except AttachmentInvalid as exc:
            refused = exc
        else:
            await _write(services.storage, a.key, cleaned, a.content_type)
            await conn.execute(MARK, a.id, "ready", len(cleaned))
            return replace(a, status="ready", size=len(cleaned))
        # Kept: a refused file is refused for good (the client uploads a new attachment).
        await conn.execute(MARK, a.id, "invalid", None)
    raise refused


# -- sending and showing ----------------------------------------------------------------------


def public(services: Services, a: Attachment) -> dict[str, Any]:
    """`{id, content_type, size, url}` with a freshly signed URL (minutes)."""
    return {
        "id": str(a.id),
        "content_type": a.content_type,
        "size": a.size or a.declared_size,
        "url": services.storage.download_url(a.key, ttl=services.settings.attachment_url_seconds),
    }


async def send(
    services: Services,
    *,
    consultation_id: uuid.UUID,
    sender_id: uuid.UUID,
    client_msg_id: str,
    text: str,
    attachment_id: uuid.UUID,
) -> tuple[chat.ChatMessage, bool]:
    """`chat:send` with an attachment: checked (once), then stored as a message carrying it."""
    existing = await services.db.fetchrow(
        chat.GET_BY_CLIENT_ID, consultation_id, sender_id, client_msg_id
    )
    if existing is None:
        await _check_active(services, consultation_id, sender_id)
        await ready(
            services,
            attachment_id=attachment_id,
            consultation_id=consultation_id,
            sender_id=sender_id,
        )
    message, created = await chat.send_attachment_message(
        services.db, consultation_id, sender_id, client_msg_id, text, attachment_id
    )
    (filled,) = await fill(services, [message])
    return filled, created


async def _check_active(
    services: Services, consultation_id: uuid.UUID, sender_id: uuid.UUID
) -> None:
    room = await chat.room_for_participant(services.db, consultation_id, sender_id)
    if room.status != "active":
        raise Conflict("attachments are sent during a session", code="not_active")


async def fill(services: Services, messages: Sequence[chat.ChatMessage]) -> list[chat.ChatMessage]:
    """The messages with their attachments' public form (fresh signed URLs)."""
    ids = [m.attachment_id for m in messages if m.attachment_id is not None]
    if not ids:
        return list(messages)
    rows = await services.db.fetch(GET_MANY, ids)
    found = {r["id"]: _of(r) for r in rows}
    return [
        replace(m, attachment=public(services, found[m.attachment_id]))
        if m.attachment_id in found
        else m
        for m in messages
    ]


async def get_for(
    services: Services,
    *,
    consultation_id: uuid.UUID,
    attachment_id: uuid.UUID,
    viewer_id: uuid.UUID,
    admin: bool,
) -> dict[str, Any]:
    """A ready attachment of a consultation, for its participants or an admin (404 otherwise)."""
    await lifecycle.get_for(services.db, consultation_id, viewer_id, admin=admin)
    row = await services.db.fetchrow(GET, attachment_id)
    if row is None or row["consultation_id"] != consultation_id or row["status"] != "ready":
        raise NotFound("no such attachment")
    return public(services, _of(row))
