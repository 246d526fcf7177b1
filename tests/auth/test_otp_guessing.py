"""Issue 14: OTP guessing is bounded for every phone, test phones included, across codes and per
client IP on /v1/auth/verify."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.auth.support import TEST_CODE, TEST_PHONE

Client = TestClient[Any, Any]


async def _verify(client: Client, code: str, phone: str = TEST_PHONE, **headers: str) -> Any:
    return await client.post(
        "/v1/auth/verify", json={"phone": phone, "code": code}, headers=headers
    )


async def test_twelve_rounds_of_guesses_on_a_test_phone_are_stopped(client: Client) -> None:
    """The issue's attack: 12 rounds of (new code + 5 wrong codes), then the right code. Each new
    code used to reset the counter, so all 60 guesses were allowed and the right code signed in."""
    statuses: list[int] = []
    for round_no in range(12):
        assert (await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})).status == 202
        for guess in range(5):
            resp = await _verify(client, f"{round_no:03d}{guess:03d}")
            statuses.append(resp.status)
    assert 429 in statuses
    first = statuses.index(429)
    assert first == 10  # OTP_MAX_WRONG_PER_PHONE_HOUR (10) wrong codes, then refused
    assert set(statuses[first:]) == {429}
    resp = await _verify(client, TEST_CODE)
    assert resp.status == 429
    body = await resp.json()
    assert body["error"]["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) > 3000


async def test_right_code_clears_the_phone_counter(make_client: Any) -> None:
    client = await make_client(otp_max_wrong_per_phone_hour=3)
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    for _ in range(2):
        assert (await _verify(client, "000000")).status == 401
    assert (await _verify(client, TEST_CODE)).status == 200
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    for _ in range(2):
        assert (await _verify(client, "000000")).status == 401
    assert (await _verify(client, TEST_CODE)).status == 200


async def test_wrong_codes_per_client_ip_across_phones(make_client: Any) -> None:
    client = await make_client(
        otp_max_wrong_per_ip_hour=4, otp_max_per_ip_hour=100, trusted_proxies="127.0.0.1/32"
    )
    phones = ["+919000000001", "+919000000002", "+919000000003"]
    for phone in phones:
        await client.post("/v1/auth/otp", json={"phone": phone})
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    codes = [(await _verify(client, "000000", phone, **attacker)).status for phone in phones]
    codes.append((await _verify(client, "000000", phones[0], **attacker)).status)
    assert codes == [401, 401, 401, 401]
    # The fifth wrong try from that address is refused before the code is compared, whatever
    # the phone, even with the right code.
    resp = await _verify(client, TEST_CODE, phones[1], **attacker)
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    # Another address is not affected.
    other = await _verify(client, TEST_CODE, phones[1], **{"X-Forwarded-For": "198.51.100.2"})
    assert other.status == 200


async def test_exempt_ips_skip_the_ip_limit_only(make_client: Any) -> None:
    client = await make_client(
        otp_max_wrong_per_ip_hour=2,
        otp_max_wrong_per_phone_hour=4,
        rate_limit_exempt_ips="127.0.0.0/8",
    )
    phones = ["+919000000001", "+919000000002", "+919000000003"]
    for phone in phones:
        await client.post("/v1/auth/otp", json={"phone": phone})
    # More wrong codes than the IP limit: the exempt address goes on...
    assert [(await _verify(client, "000000", p)).status for p in phones] == [401, 401, 401]
    # ...but the per-phone limit still applies to it.
    for _ in range(3):
        await client.post("/v1/auth/otp", json={"phone": phones[0]})
        await _verify(client, "000000", phones[0])
    assert (await _verify(client, TEST_CODE, phones[0])).status == 429


async def test_production_test_phones_have_the_same_limits(make_client: Any) -> None:
    client = await make_client(
        astrolive_env="production",
        sms_provider="sns",
        auth_test_phones="+919000000001:123456",
        auth_test_phones_in_production=True,
    )
    await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
    statuses = []
    for round_no in range(3):
        await client.post("/v1/auth/otp", json={"phone": TEST_PHONE})
        for guess in range(5):
            statuses.append((await _verify(client, f"9{round_no}{guess}999")).status)
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429] * 5
    assert (await _verify(client, TEST_CODE)).status == 429
