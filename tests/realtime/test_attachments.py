"""Chat attachments (issue 17): a presigned upload, the bytes checked by content before the
message goes out, images re-encoded without metadata, signed short-lived URLs in `chat:message`
and the history, for participants and admins only."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from PIL import Image

from core.settings import Settings
from tests.factories import make_user, token_for
from tests.realtime.support import Peer, make_consultation, make_pair

GPS_TAG = 0x8825  # EXIF GPSInfo: where a palm photo was taken, not for the astrologer to see


def _jpeg_with_gps() -> bytes:
    image = Image.new("RGB", (64, 48), (200, 120, 40))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[GPS_TAG] = {1: "N", 2: (28.0, 36.0, 50.0)}
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(out, format="PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def _local(base: str, url: str) -> str:
    parts = urlsplit(url)
    return f"{base}{parts.path}?{parts.query}"


class Api:
    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base, self.http = base, http

    async def slot(self, token: str, cid: uuid.UUID, content_type: str, size: int) -> Any:
        async with self.http.post(
            f"{self.base}/v1/consultations/{cid}/attachments",
            json={"content_type": content_type, "size": size},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return resp.status, await resp.json()

    async def upload(self, up: dict[str, Any], data: bytes) -> int:
        async with self.http.put(
            _local(self.base, up["upload_url"]), data=data, headers=up["headers"]
        ) as resp:
            return resp.status

    async def get(self, token: str, path: str) -> tuple[int, Any]:
        async with self.http.get(
            f"{self.base}{path}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json()

    async def download(self, url: str) -> tuple[int, bytes]:
        async with self.http.get(_local(self.base, url)) as resp:
            return resp.status, await resp.read()


async def test_an_image_is_cleaned_and_delivered_with_a_signed_url(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, _user, utoken, _astro, atoken = await make_pair(db, rt_settings)
    photo = _jpeg_with_gps()
    assert b"PhoneMaker" in photo
    u, a = Peer(), Peer()
    async with aiohttp.ClientSession() as http:
        api = Api(rt_url, http)
        try:
            await u.connect(rt_url, utoken)
            await a.connect(rt_url, atoken)
            for peer in (u, a):
                assert (await peer.call("consultation:join", {"consultation_id": str(cid)}))["ok"]
            status, up = await api.slot(utoken, cid, "image/jpeg", len(photo))
            assert status == 201, up
            # Sent before the upload: not ready (and nothing is stored).
            early = await u.call(
                "chat:send",
                {"consultation_id": str(cid), "client_msg_id": "p0",
                 "attachment_id": up["attachment_id"]},
            )  # fmt: skip
            assert early["error"]["code"] == "attachment_not_ready"
            assert await api.upload(up, photo) in (200, 201, 204)
            ack = await u.call(
                "chat:send",
                {"consultation_id": str(cid), "client_msg_id": "p1",
                 "attachment_id": up["attachment_id"]},
            )  # fmt: skip
            assert ack["ok"], ack
            assert ack["seq"] == 1
            got = await a.wait_for("chat:message", lambda ms: len(ms) >= 1)
            attachment = got[0]["attachment"]
            assert attachment["id"] == up["attachment_id"]
            assert attachment["content_type"] == "image/jpeg"
            assert got[0]["text"] == ""
            # The URL works, and the file has no metadata left.
            status, data = await api.download(attachment["url"])
            assert status == 200
            assert attachment["size"] == len(data)
            with Image.open(io.BytesIO(data)) as clean:
                assert clean.format == "JPEG"
                assert clean.size == (64, 48)
                assert not clean.getexif()
            assert b"PhoneMaker" not in data
            # The URL expires within minutes.
            expires = int(
                dict(p.split("=", 1) for p in urlsplit(attachment["url"]).query.split("&"))["exp"]
            )
            assert 0 < expires - time.time() <= rt_settings.attachment_url_seconds
            # History (REST and socket) carries it; a resend is the same message.
            status, page = await api.get(atoken, f"/v1/consultations/{cid}/messages")
            assert page["items"][0]["attachment"]["id"] == up["attachment_id"]
            hist = await a.call("chat:history", {"consultation_id": str(cid), "after_seq": 0})
            assert hist["messages"][0]["attachment"]["id"] == up["attachment_id"]
            again = await u.call(
                "chat:send",
                {"consultation_id": str(cid), "client_msg_id": "p1",
                 "attachment_id": up["attachment_id"]},
            )  # fmt: skip
            assert again["seq"] == 1
            # Participants and admins get a fresh link; anyone else 404.
            path = f"/v1/consultations/{cid}/attachments/{up['attachment_id']}"
            assert (await api.get(atoken, path))[0] == 200
            admin = await make_user(db, role="admin")
            assert (await api.get(await token_for(db, rt_settings, admin), path))[0] == 200
            stranger = await token_for(db, rt_settings, await make_user(db))
            assert (await api.get(stranger, path))[0] == 404
            assert (await api.get(stranger, f"/v1/consultations/{cid}/messages"))[0] == 404
        finally:
            await u.close()
            await a.close()


async def test_bad_attachments_are_refused(
    rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, user, utoken, astro, atoken = await make_pair(db, rt_settings)
    u = Peer()
    async with aiohttp.ClientSession() as http:
        api = Api(rt_url, http)
        try:
            await u.connect(rt_url, utoken)
            assert (await u.call("consultation:join", {"consultation_id": str(cid)}))["ok"]

            async def send(attachment_id: str, mid: str) -> Any:
                return await u.call(
                    "chat:send",
                    {"consultation_id": str(cid), "client_msg_id": mid,
                     "attachment_id": attachment_id},
                )  # fmt: skip

            # Declared PNG, uploaded JPEG bytes: invalid (and stays refused).
            photo = _jpeg_with_gps()
            _, up = await api.slot(utoken, cid, "image/png", len(photo))
            await api.upload(up, photo)
            assert (await send(up["attachment_id"], "b1"))["error"]["code"] == "attachment_invalid"
            assert (await send(up["attachment_id"], "b2"))["error"]["code"] == "attachment_invalid"
            # Not a PDF at all / a truncated PDF: invalid; a real one goes through untouched.
            for body in (b"MZ\x90\x00 not a pdf at all", PDF[:-7]):
                _, up = await api.slot(utoken, cid, "application/pdf", len(body))
                await api.upload(up, body)
                assert (await send(up["attachment_id"], f"pdf{len(body)}"))["error"]["code"] == (
                    "attachment_invalid"
                )
            _, up = await api.slot(utoken, cid, "application/pdf", len(PDF))
            await api.upload(up, PDF)
            assert (await send(up["attachment_id"], "pdf-ok"))["ok"]
            # A PNG that is only a header: invalid.
            broken = _png()[:40]
            _, up = await api.slot(utoken, cid, "image/png", len(broken))
            await api.upload(up, broken)
            assert (await send(up["attachment_id"], "b3"))["error"]["code"] == "attachment_invalid"
            # The astrologer's upload cannot be sent by the user; an unknown id neither.
            _, theirs = await api.slot(atoken, cid, "image/png", len(_png()))
            await api.upload(theirs, _png())
            assert (await send(theirs["attachment_id"], "b4"))["error"]["code"] == (
                "attachment_invalid"
            )
            assert (await send(str(uuid.uuid4()), "b5"))["error"]["code"] == "attachment_invalid"
            # Bad slots: type, size, a stranger, a consultation not accepted or active.
            for content_type, size in (
                ("image/gif", 10),
                ("image/png", 0),
                ("image/png", 10 * 1024 * 1024 + 1),
                ("image/png", "9"),
            ):
                status, _ = await api.slot(utoken, cid, content_type, size)  # type: ignore[arg-type]  # bad on purpose
                assert status == 422, (content_type, size)
            stranger = await token_for(db, rt_settings, await make_user(db))
            assert (await api.slot(stranger, cid, "image/png", 10))[0] == 404
            done = await make_consultation(db, user, astro, status="completed")
            status, body = await api.slot(utoken, done, "image/png", 10)
            assert status == 409
            # Only what went through is stored: the PDF.
            count = await db.fetchval(
                "SELECT count(*) FROM chat_messages WHERE attachment_id IS NOT NULL"
            )
            assert count == 1
        finally:
            await u.close()
