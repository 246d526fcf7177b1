"""File storage behind one interface: S3 presigned URLs, or a local folder served by the app.

    storage = services.storage                          # built once: astrolive/resources.py
    up = storage.presign_upload("avatars/<user>/<id>.jpg", "image/jpeg", 123_456)
    # the client: PUT up.url with up.headers and exactly `size` bytes
    url = storage.download_url("avatars/<user>/<id>.jpg")

- S3 (S3_BUCKET set): a SigV4 presigned PUT whose signature covers `Content-Type` and
  `Content-Length`, so S3 refuses another type or size (SignatureDoesNotMatch). boto3's usual
  configuration applies (credentials, AWS_ENDPOINT_URL_S3 to point at another S3).
- Local (default): files under `<DATA_DIR>/files`, served by `/v1/files` (api/files.py) with
  HMAC-signed expiring URLs that pin the method, key, content type and exact size the same way.

Both are pure signing, no network call, so they are plain synchronous methods.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from core.settings import Settings

UPLOAD_URL_TTL_SECONDS = 15 * 60  # long enough for a slow mobile upload, short enough to not leak
DOWNLOAD_URL_TTL_SECONDS = 60 * 60  # a profile screen's images stay valid for an hour of browsing
# Keys are made by our code (`<kind>/<owner>/<uuid>.<ext>`); anything else is refused.
KEY_PATTERN = re.compile(r"^[a-z0-9_-]+(/[a-z0-9_-]+)*\.[a-z0-9]{1,5}$")


@dataclass(frozen=True)
class PresignedUpload:
    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)
    key: str = ""
    expires_in: int = UPLOAD_URL_TTL_SECONDS


class Storage(Protocol):
    """Where uploaded files live. Keys are relative paths made by the caller (see KEY_PATTERN)."""

    name: str

    def presign_upload(self, key: str, content_type: str, size: int) -> PresignedUpload:
        """A URL the client uploads exactly `size` bytes of `content_type` to, once, soon."""
        ...

    def download_url(self, key: str, ttl: int = DOWNLOAD_URL_TTL_SECONDS) -> str:
        """A short-lived URL to read the file (valid `ttl` seconds; issue 17: chat attachments
        ask for minutes)."""
        ...


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key) or ".." in key:
        raise ValueError(f"not a storage key: {key!r}")
    return key


class S3Storage:
    name = "s3"

    def __init__(self, bucket: str, region: str, *, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client: Any = boto3.client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(signature_version="s3v4"),
        )

    def presign_upload(self, key: str, content_type: str, size: int) -> PresignedUpload:
        url = self.client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": check_key(key),
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=UPLOAD_URL_TTL_SECONDS,
            HttpMethod="PUT",
        )
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        return PresignedUpload(str(url), "PUT", headers, key)

    def download_url(self, key: str, ttl: int = DOWNLOAD_URL_TTL_SECONDS) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": check_key(key)},
                ExpiresIn=ttl,
            )
        )


class LocalStorage:
    """A folder, with URLs signed like S3's: `/v1/files?key=..&ct=..&len=..&exp=..&sig=..`."""

    name = "local"
    PATH = "/v1/files"

    def __init__(self, root: Path, base_url: str, secret: bytes) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")
        self._secret = secret

    def _sign(self, method: str, key: str, content_type: str, size: str, expires: str) -> str:
        message = "\n".join([method, key, content_type, size, expires]).encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _url(self, method: str, key: str, content_type: str, size: str, ttl: int) -> str:
        expires = str(int(time.time()) + ttl)
        params = {"key": check_key(key), "exp": expires}
        if method == "PUT":
            params |= {"ct": content_type, "len": size}
        params["sig"] = self._sign(method, key, content_type, size, expires)
        return f"{self.base_url}{self.PATH}?{urlencode(params)}"

    def presign_upload(self, key: str, content_type: str, size: int) -> PresignedUpload:
        url = self._url("PUT", key, content_type, str(size), UPLOAD_URL_TTL_SECONDS)
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        return PresignedUpload(url, "PUT", headers, key)

    def download_url(self, key: str, ttl: int = DOWNLOAD_URL_TTL_SECONDS) -> str:
        return self._url("GET", key, "", "", ttl)

    def check(self, method: str, params: dict[str, str]) -> str:
        """The key a signed URL's parameters grant `method` on; ValueError when the signature is
        wrong, the URL expired or the key is not ours."""
        key = check_key(params.get("key", ""))
        content_type = params.get("ct", "") if method == "PUT" else ""
        size = params.get("len", "") if method == "PUT" else ""
        expires = params.get("exp", "")
        expected = self._sign(method, key, content_type, size, expires)
        if not hmac.compare_digest(expected, params.get("sig", "")):
            raise ValueError("signature does not match")
        if not expires.isdigit() or int(expires) < time.time():
            raise ValueError("URL expired")
        return key

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)


def make_storage(settings: Settings) -> Storage:
    """S3 when S3_BUCKET is set, else the local folder."""
    if settings.s3_bucket:
        return S3Storage(settings.s3_bucket, settings.aws_region)
    secret = settings.jwt_signing_secret().encode()
    key = hmac.new(secret, b"astrolive:files", hashlib.sha256).digest()
    return LocalStorage(settings.data_dir / "files", settings.public_base_url, key)


STORAGE: web.AppKey[Storage] = web.AppKey("storage")
