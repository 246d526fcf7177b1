"""File storage: S3 presigned uploads checked with botocore's own SigV4 code and uploaded to moto's
S3 on loopback (which does not check signatures, DESIGN.md); both stores share one contract."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import boto3
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from core.storage import LocalStorage, S3Storage, Storage, check_key, make_storage
from tests.aws_server import FAKE_CREDENTIALS

BUCKET = "astrolive-test-files"
REGION = "ap-south-1"


@pytest.fixture(scope="module")
def bucket(moto_url: str) -> str:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_url)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return BUCKET


def s3_accepts(url: str, method: str, headers: dict[str, str]) -> bool:
    """Would S3 accept this request to a presigned URL? Recompute the SigV4 query signature with
    botocore over the request actually sent, as S3 does, and compare."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    unsigned = urlunsplit(
        parts._replace(query=urlencode([(k, v) for k, v in query if k != "X-Amz-Signature"]))
    )
    request = AWSRequest(method=method, url=unsigned, headers=headers)
    request.context["timestamp"] = params["X-Amz-Date"]
    signer = S3SigV4QueryAuth(
        Credentials(
            FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
        ),
        "s3",
        REGION,
        expires=int(params["X-Amz-Expires"]),
    )
    signed_headers = ";".join(sorted(h.lower() for h in [*headers, "host"]))
    if signed_headers != params["X-Amz-SignedHeaders"]:
        return False  # S3 refuses a request that lacks or adds a signed header
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return bool(expected == params["X-Amz-Signature"])


def _key() -> str:
    return f"avatars/{uuid.uuid4()}/{uuid.uuid4()}.png"


def test_s3_upload_signature_pins_type_and_size(moto_url: str, bucket: str) -> None:
    storage = S3Storage(bucket, REGION, endpoint_url=moto_url)
    up = storage.presign_upload(_key(), "image/png", 1234)
    assert up.method == "PUT"
    params = dict(parse_qsl(urlsplit(up.url).query))
    assert params["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    assert s3_accepts(up.url, "PUT", up.headers)
    assert not s3_accepts(up.url, "PUT", {**up.headers, "Content-Type": "text/html"})
    assert not s3_accepts(up.url, "PUT", {**up.headers, "Content-Length": "99999999"})
    assert not s3_accepts(up.url, "PUT", {"Content-Length": "1234"})  # type left out
    assert not s3_accepts(up.url.replace("avatars", "documents"), "PUT", up.headers)


async def test_s3_upload_and_download_through_moto(moto_url: str, bucket: str) -> None:
    storage = S3Storage(bucket, REGION, endpoint_url=moto_url)
    key = _key()
    data = b"\x89PNG fake image bytes"
    up = storage.presign_upload(key, "image/png", len(data))
    async with aiohttp.ClientSession() as http:
        async with http.put(up.url, data=data, headers=up.headers) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(storage.download_url(key)) as resp:
            assert resp.status == 200
            assert await resp.read() == data
            assert resp.headers["Content-Type"] == "image/png"


def test_local_signature_pins_method_key_type_and_size(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "http://127.0.0.1:8080", b"k" * 32)
    up = storage.presign_upload("documents/a/b.pdf", "application/pdf", 10)
    params = dict(parse_qsl(urlsplit(up.url).query))
    assert storage.check("PUT", params) == "documents/a/b.pdf"
    for change in ({"ct": "text/html"}, {"len": "11"}, {"key": "documents/a/c.pdf"}):
        with pytest.raises(ValueError, match="signature"):
            storage.check("PUT", {**params, **change})
    with pytest.raises(ValueError, match="signature"):
        storage.check("GET", params)  # an upload URL does not read
    other = LocalStorage(tmp_path, "http://127.0.0.1:8080", b"x" * 32)
    with pytest.raises(ValueError, match="signature"):
        other.check("PUT", params)
    expired = dict(parse_qsl(urlsplit(storage._url("GET", "a/b.png", "", "", -5)).query))
    with pytest.raises(ValueError, match="expired"):
        storage.check("GET", expired)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_both_stores_share_one_contract(
    kind: str, moto_url: str, bucket: str, tmp_path: Path
) -> None:
    storage: Storage = (
        LocalStorage(tmp_path, "http://127.0.0.1:8080", b"k" * 32)
        if kind == "local"
        else S3Storage(bucket, REGION, endpoint_url=moto_url)
    )
    up = storage.presign_upload("avatars/u/x.jpg", "image/jpeg", 42)
    assert up.method == "PUT"
    assert up.headers == {"Content-Type": "image/jpeg", "Content-Length": "42"}
    assert up.key == "avatars/u/x.jpg"
    assert up.url.startswith("http")
    assert storage.download_url("avatars/u/x.jpg").startswith("http")
    with pytest.raises(ValueError, match="not a storage key"):
        storage.presign_upload("../etc/passwd", "image/jpeg", 42)


def test_keys_are_checked() -> None:
    assert check_key("avatars/abc-1/def_2.jpg") == "avatars/abc-1/def_2.jpg"
    for bad in ["", "/abs/x.jpg", "a/../b.jpg", "a/b", "A/b.jpg", "a//b.jpg", "a/b.jpg?x=1"]:
        with pytest.raises(ValueError, match="not a storage key"):
            check_key(bad)


def test_settings_choose_the_store(settings: object) -> None:
    from core.settings import Settings

    assert isinstance(settings, Settings)
    assert isinstance(make_storage(settings), LocalStorage)
    s3 = make_storage(settings.model_copy(update={"s3_bucket": BUCKET}))
    assert isinstance(s3, S3Storage)
