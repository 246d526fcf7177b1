"""The local file store's endpoints (used when S3_BUCKET is unset): signed PUT and GET of a file.

The URLs come from `core.storage.LocalStorage`; the signature is the credential, as with S3's
presigned URLs, so the routes are public. With S3 configured they answer 404.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
import uuid
from pathlib import Path

from aiohttp import web

from api.framework import Call, Router
from core.errors import AppError, Forbidden, NotFound
from core.storage import STORAGE, LocalStorage

router = Router("files")
CHUNK_BYTES = 64 * 1024
# A signed upload URL works once (issue 14): its signature is claimed here for as long as the URL
# could still be used (until its expiry, plus a minute of clock margin), and given back only when
# the upload failed, so the same URL can be retried after an error but never used twice.
USED_UPLOAD_PREFIX = "files:used:"
USED_MARGIN_SECONDS = 60


def _local(call: Call) -> LocalStorage:
    storage = call.request.app[STORAGE]
    if not isinstance(storage, LocalStorage):
        raise NotFound()
    return storage


def _granted(storage: LocalStorage, call: Call, method: str) -> str:
    try:
        return storage.check(method, dict(call.request.query))
    except ValueError as exc:
        raise Forbidden(str(exc), code="invalid_signature") from exc


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temp.write_bytes(data)
    os.replace(temp, path)  # readers never see half a file


@router.put(
    "/v1/files",
    access="public",
    status=200,
    errors={
        400: "the body is shorter than its Content-Length",
        403: "invalid_signature (signature, expiry, content type or size), or upload_url_used",
    },
)
async def upload_file(call: Call) -> dict[str, str]:
    """PUT /v1/files?key=..&ct=..&len=..&exp=..&sig=..

    Upload through a signed URL from a presigned-upload endpoint: exactly the signed content type
    and size, else 403 (as S3 answers a request that does not match its presigned signature)."""
    storage = _local(call)
    key = _granted(storage, call, "PUT")
    request = call.request
    signed_type = call.request.query.get("ct", "")
    if request.headers.get("Content-Type", "").split(";")[0].strip().lower() != signed_type:
        raise Forbidden("Content-Type differs from the signed one", code="invalid_signature")
    size = int(call.request.query.get("len", "0"))
    if request.content_length != size:
        raise Forbidden("Content-Length differs from the signed size", code="invalid_signature")
    used = USED_UPLOAD_PREFIX + call.request.query.get("sig", "")
    ttl = max(1, int(call.request.query.get("exp", "0")) - int(time.time())) + USED_MARGIN_SECONDS
    if not await call.services.redis.set(used, "1", nx=True, ex=ttl):
        raise Forbidden("this upload URL was already used", code="upload_url_used")
    try:
        await _receive(storage, key, request, size)
    except BaseException:
        await call.services.redis.delete(used)
        raise
    return {"key": key}


async def _receive(storage: LocalStorage, key: str, request: web.Request, size: int) -> None:
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        received += len(chunk)
        if received > size:
            raise Forbidden("body longer than the signed size", code="invalid_signature")
        chunks.append(chunk)
    if received != size:
        raise AppError("body shorter than its Content-Length", code="bad_request", status=400)
    await asyncio.to_thread(_write, storage.path_of(key), b"".join(chunks))


@router.get("/v1/files", access="public", errors={403: "the signature is invalid or expired"})
async def download_file(call: Call) -> web.StreamResponse:
    """GET /v1/files?key=..&exp=..&sig=..

    Read a file through a signed download URL."""
    storage = _local(call)
    path = storage.path_of(_granted(storage, call, "GET"))
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("no such file")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, max-age=3600"}
    )
