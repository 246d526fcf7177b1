"""E-mail and language of a person (PATCH /v1/me): a new address gets a signed verification link
through SES (moto's server), notifications use the person's locale and go by e-mail only to a
verified address."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from aiohttp.test_utils import TestClient
from moto.backends import get_backend
from moto.core.models import DEFAULT_ACCOUNT_ID

from api.framework import SERVICES
from astrolive.app import create_app
from notify import notify
from tests.conftest import make_settings
from tests.factories import auth, make_user
from tests.notify.test_templates import DEVANAGARI

Client = TestClient[Any, Any]
SENDER = "no-reply@astrolive.example"


@pytest.fixture
async def ses_client(
    aiohttp_client: Any, aws_env: str, database_url: str, redis_url: str, tmp_path: Path
) -> Client:
    boto3.client("sesv2", region_name="us-east-1", endpoint_url=aws_env).create_email_identity(
        EmailIdentity=SENDER
    )
    settings = make_settings(
        database_url,
        redis_url,
        tmp_path / "data",
        email_provider="ses",
        email_from=SENDER,
        aws_region="us-east-1",
    )
    client: Client = await aiohttp_client(create_app(settings))
    return client


def _mails_to(address: str) -> list[Any]:
    sent = get_backend("ses")[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    return [m for m in sent if address in m.destinations["ToAddresses"]]


def _link(body: str) -> str:
    match = re.search(r"https?://\S+/v1/me/email/verify\?token=\S+", body)
    assert match, body
    parts = urlsplit(match.group(0))
    return f"{parts.path}?{parts.query}"


async def _code(resp: Any) -> str:
    return str((await resp.json())["error"]["code"])


async def test_a_new_address_is_verified_by_the_mailed_link(ses_client: Client) -> None:
    client = ses_client
    services = client.app[SERVICES]
    db, settings = services.db, services.settings
    user = await make_user(db)
    headers = await auth(db, settings, user)
    address = f"asha+{uuid.uuid4().hex[:6]}@example.com"
    resp = await client.patch(
        "/v1/me", json={"email": address.replace("example.com", "Example.COM"), "locale": "hi"},
        headers=headers,
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    me = await resp.json()
    assert (me["email"], me["email_verified"], me["locale"]) == (address, False, "hi")
    [mail] = _mails_to(address)
    assert DEVANAGARI.search(mail.subject)  # in the person's language
    link = _link(mail.body)
    # Unverified: a notification reaches the inbox and push, not the address.
    await notify(services, user.id, "astrologer_verified", {}, key="n1")
    channels = await db.fetch(
        "SELECT d.channel FROM notification_deliveries d JOIN notifications n "
        "ON n.id = d.notification_id WHERE n.key = 'n1'"
    )
    assert [r["channel"] for r in channels] == []
    title = await db.fetchval("SELECT title FROM notifications WHERE key = 'n1'")
    assert DEVANAGARI.search(title)
    # The link verifies without signing in.
    resp = await client.get(link)
    assert resp.status == 200
    assert (await resp.json()) == {"email": address, "email_verified": True}
    assert (await (await client.get("/v1/me", headers=headers)).json())["email_verified"] is True
    await notify(services, user.id, "astrologer_verified", {}, key="n2")
    channels = await db.fetch(
        "SELECT d.channel, d.target FROM notification_deliveries d JOIN notifications n "
        "ON n.id = d.notification_id WHERE n.key = 'n2'"
    )
    assert [(r["channel"], r["target"]) for r in channels] == [("email", address)]
    # The same address again: still verified, no new mail. Another: unverified, new mail.
    await client.patch("/v1/me", json={"email": address}, headers=headers)
    assert len(_mails_to(address)) == 1
    other = f"other+{uuid.uuid4().hex[:6]}@example.com"
    me = await (await client.patch("/v1/me", json={"email": other}, headers=headers)).json()
    assert me["email_verified"] is False
    assert len(_mails_to(other)) == 1
    # The old link no longer verifies anything (the address changed).
    resp = await client.post(link)
    assert (resp.status, await _code(resp)) == (400, "invalid_token")
    resp = await client.get("/v1/me/email/verify?token=forged.token.value")
    assert (resp.status, await _code(resp)) == (400, "invalid_token")
    assert (await client.get("/v1/me/email/verify")).status == 422
    # Clearing the address.
    me = await (await client.patch("/v1/me", json={"email": None}, headers=headers)).json()
    assert (me["email"], me["email_verified"]) == (None, False)


async def test_bad_email_or_locale_changes_nothing(client: Client, db: Any, settings: Any) -> None:
    user = await make_user(db)
    headers = await auth(db, settings, user)
    for body in ({"email": "not-an-address"}, {"email": "a b@c.de"}, {"locale": "fr"},
                 {"locale": None}, {"email": "x@" + "y" * 260 + ".com"}):  # fmt: skip
        resp = await client.patch("/v1/me", json=body, headers=headers)
        assert resp.status == 422, body
    row = await db.fetchrow("SELECT email, locale FROM users WHERE id = $1", user.id)
    assert (row["email"], row["locale"]) == (None, "en")


async def test_development_mails_the_link_to_the_log(
    client: Client, db: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "astrolive.notify.outbox")
    user = await make_user(db)
    resp = await client.patch(
        "/v1/me", json={"email": "dev@example.com"}, headers=await auth(db, settings, user)
    )
    assert resp.status == 200
    [record] = [r for r in caplog.records if "email to" in r.getMessage()]
    link = _link(record.getMessage())
    assert (await client.get(link)).status == 200
