"""`create-admin` and `seed-demo`: data a newcomer can sign in with straight away.

The test phones come from `AUTH_TEST_PHONES` (see `.env.example`): the first is the demo user, the
second a demo astrologer, the third an admin. All of it is idempotent: run it as often as you like.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from billing.ledger import Leg, account_id, post_transfer, wallet_balance
from core.phones import normalise_phone
from core.settings import Settings
from db import identity
from db.pool import Conn, connect

DEMO_QUESTION_PRICE = 5_000  # ₹50.00 a written question (issue 16)
DEMO_WALLET_CREDIT = 50_000  # ₹500.00: enough for a few demo sessions at demo rates
DEFAULT_TEST_PHONES = ("+919000000001", "+919000000002", "+919000000003")


@dataclass(frozen=True)
class DemoAstrologer:
    phone: str
    display_name: str
    skills: list[str]
    languages: list[str]
    experience_years: int
    rates: tuple[int | None, int | None, int | None]  # chat, voice, video a minute, paise
    bio: str


DEMO_ASTROLOGERS = [
    DemoAstrologer("+919000000101", "Acharya Meera", ["vedic", "kundli"], ["hi", "en"], 12,
                   (1500, 2000, 3000), "Vedic astrology and kundli matching for 12 years."),
    DemoAstrologer("+919000000102", "Pandit Raghav", ["vedic", "vastu"], ["hi"], 20,
                   (2500, 3000, 4000), "Vastu and muhurta; twenty years of practice."),
    DemoAstrologer("+919000000103", "Tara Iyer", ["tarot", "numerology"], ["en", "ta"], 6,
                   (1000, 1500, 2500), "Tarot and numerology readings in English and Tamil."),
    DemoAstrologer("+919000000104", "Dev Sharma", ["kp", "prashna"], ["hi", "en"], 9,
                   (1200, 1800, 2800), "KP system and prashna kundli."),
    DemoAstrologer("+919000000105", "Noor Fatima", ["palmistry", "face-reading"], ["ur", "hi"], 4,
                   (800, 1200, 2000), "Palmistry and face reading."),
]  # fmt: skip

UPSERT_PROFILE = """
INSERT INTO astrologer_profiles (user_id, display_name, bio, skills, languages, experience_years,
                                 rate_chat, rate_voice, rate_video, verification, verified_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'approved', now())
ON CONFLICT (user_id) DO UPDATE
   SET display_name = EXCLUDED.display_name, bio = EXCLUDED.bio, skills = EXCLUDED.skills,
       languages = EXCLUDED.languages, experience_years = EXCLUDED.experience_years,
       rate_chat = EXCLUDED.rate_chat, rate_voice = EXCLUDED.rate_voice,
       rate_video = EXCLUDED.rate_video, verification = 'approved',
       verified_at = coalesce(astrologer_profiles.verified_at, now()), updated_at = now()
"""


async def make_admin(conn: Conn, phone: str) -> identity.User:
    user, created = await identity.upsert_user(conn, phone, "admin")
    if created or user.role != "admin":
        user = await identity.set_role(conn, user.id, "admin")
        await conn.execute(
            "INSERT INTO audit_log (actor_id, action, target_type, target_id, reason) "
            "VALUES (NULL, 'make_admin', 'user', $1, 'astrolive create-admin')",
            str(user.id),
        )
    return user


async def create_admin(settings: Settings, raw_phone: str) -> identity.User:
    phone = normalise_phone(raw_phone, settings.default_phone_region)
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        return await make_admin(conn, phone)
    finally:
        await conn.close()


async def add_astrologer(conn: Conn, demo: DemoAstrologer) -> uuid.UUID:
    user, _ = await identity.upsert_user(conn, demo.phone, "astrologer")
    if user.role != "astrologer":
        user = await identity.set_role(conn, user.id, "astrologer")
    await conn.execute(
        UPSERT_PROFILE, user.id, demo.display_name, demo.bio, demo.skills, demo.languages,
        demo.experience_years, *demo.rates,
    )  # fmt: skip
    # Issue 16: demo astrologers also answer written questions (the console's Questions screen).
    await conn.execute(
        "UPDATE astrologer_profiles SET rate_question = coalesce(rate_question, $2) "
        "WHERE user_id = $1",
        user.id,
        DEMO_QUESTION_PRICE,
    )
    return user.id


async def fund_wallet(conn: Conn, user_id: uuid.UUID, amount: int, currency: str, key: str) -> None:
    """Credit a wallet from the promotions account through the ledger, once per `key`."""
    wallet = await account_id(conn, "user_wallet", user_id, currency)
    promos = await account_id(conn, "promotions", None, currency)
    await post_transfer(
        conn,
        key=key,
        kind="demo_credit",
        legs=[Leg(promos, -amount), Leg(wallet, amount)],
        reason="seed-demo",
    )


async def seed_demo(settings: Settings) -> str:
    if settings.is_production:
        # Issue 14: seed-demo makes a test phone an admin and funds a wallet for free.
        from core.errors import Forbidden

        raise Forbidden("seed-demo is for development: it refuses ASTROLIVE_ENV=production")
    phones = list(settings.auth_test_phones) or list(DEFAULT_TEST_PHONES)
    phones += list(DEFAULT_TEST_PHONES[len(phones) :])
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        async with conn.transaction():
            user, _ = await identity.upsert_user(conn, phones[0], "user")
            await fund_wallet(
                conn, user.id, DEMO_WALLET_CREDIT, settings.currency, f"demo:grant:{user.id}"
            )
            first = DEMO_ASTROLOGERS[0]
            demo_astro = DemoAstrologer(
                phones[1], *[getattr(first, f) for f in list(first.__dataclass_fields__)[1:]]
            )
            await add_astrologer(conn, demo_astro)
            for demo in DEMO_ASTROLOGERS[1:]:
                await add_astrologer(conn, demo)
            from astrolive.demo_astrologer import DEMO_BOT  # it imports this module

            await add_astrologer(conn, DEMO_BOT)
            await make_admin(conn, phones[2])
            balance, _ = await wallet_balance(conn, user.id, settings.currency)
    finally:
        await conn.close()
    return demo_summary(settings, phones, balance)


def demo_summary(settings: Settings, phones: list[str], balance: int) -> str:
    """What `./dev up` prints: who to sign in as, and how."""
    from astrolive.demo_astrologer import DEMO_BOT

    codes = {normalise_phone(p, settings.default_phone_region): c for p, c in
             settings.auth_test_phones.items()}  # fmt: skip
    base = settings.public_base_url.rstrip("/")

    def code(phone: str) -> str:
        return codes.get(phone, "see the log: OTP for <phone>")

    rows = [
        ("user", phones[0], f"wallet {balance / 100:.2f} {settings.currency}"),
        ("astrologer", phones[1], f"{DEMO_ASTROLOGERS[0].display_name}, approved"),
        ("admin", phones[2], "verifies astrologers, refunds"),
    ]
    lines = [
        "",
        "Demo accounts (no SMS is sent to them; the code is fixed):",
        *(f"  {role:<11} {phone}  code {code(phone)}  {note}" for role, phone, note in rows),
        "Sign in: POST /v1/auth/otp {phone}, then POST /v1/auth/verify {phone, code}.",
        "A code is good for ONE sign-in: ask for a new one (/v1/auth/otp) before each verify.",
        f"{len(DEMO_ASTROLOGERS) + 1} astrologers are listed. "
        + (
            f"{DEMO_BOT.display_name} ({DEMO_BOT.phone}) is online while this runs: it accepts "
            f"chats, answers, and ends each after {settings.demo_astrologer_session_seconds:g} s."
            if settings.demo_astrologer_on
            else "DEMO_ASTROLOGER is off: nobody answers requests unless you sign in as one."
        ),
        f"Console {base}/ · API reference {base}/docs · guide docs/guide.md",
        "",
    ]
    return "\n".join(lines)
