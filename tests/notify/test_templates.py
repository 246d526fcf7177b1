"""Every event has a template in English and Hindi, and refuses data it cannot render."""

from __future__ import annotations

import re

import pytest

from notify import templates

DEVANAGARI = re.compile(r"[\u0900-\u097F]")

SAMPLE_DATA: dict[str, dict[str, object]] = {
    "otp": {"code": "482913", "minutes": 5},
    "consultation_requested": {"user_name": "Asha", "type": "chat"},
    "consultation_accepted": {"astrologer_name": "Pandit Rao", "type": "voice"},
    "consultation_rejected": {"astrologer_name": "Pandit Rao", "type": "video"},
    "consultation_missed": {"astrologer_name": "Pandit Rao", "type": "chat"},
    "session_ended": {"other_name": "Pandit Rao", "type": "chat", "minutes": 7, "total": 7000},
    "low_balance": {"balance": 2000, "minutes_left": 2},
    "recharge_succeeded": {"amount": 50000, "balance": 62500},
    "recharge_failed": {"amount": 50000},
    "refund_issued": {"amount": 3000},
    "payout_paid": {"amount": 1234567},
    "astrologer_verified": {},
    "astrologer_rejected": {"reason": "the ID proof is unreadable"},
    "followed_astrologer_online": {"astrologer_name": "Pandit Rao"},
    # issue 17: tips, bookings, support tickets
    "tip_received": {"user_name": "Asha", "amount": 9000},
    "tip_sent": {"astrologer_name": "Pandit Rao", "amount": 10000},
    "booking_confirmed": {"other_name": "Pandit Rao", "type": "chat", "when": "1 Dec 10:00"},
    "booking_rescheduled": {"other_name": "Pandit Rao", "type": "voice", "when": "2 Dec 10:00"},
    "booking_cancelled": {"other_name": "Asha", "type": "video", "when": "1 Dec 10:00"},
    "booking_expired": {"other_name": "Pandit Rao", "type": "chat", "when": "1 Dec 10:00"},
    "booking_reminder": {
        "other_name": "Pandit Rao",
        "type": "chat",
        "when": "1 Dec 10:00",
        "lead": "15 min",
    },
    "ticket_updated": {"ticket_status": "resolved"},
    "ticket_reply": {},
    # issue 16
    "question_received": {"user_name": "Asha", "amount": 5000},
    "question_answered": {"astrologer_name": "Pandit Rao"},
    "question_expired": {"astrologer_name": "Pandit Rao", "amount": 5000},
    "question_cancelled": {"user_name": "Asha"},
    "email_verify": {"link": "https://astrolive.example/v1/me/email/verify?token=t", "hours": 48},
}


def test_every_event_of_the_issue_has_a_template() -> None:
    assert set(templates.EVENTS) == set(SAMPLE_DATA)


@pytest.mark.parametrize("event", sorted(SAMPLE_DATA))
def test_each_event_renders_in_english_and_hindi(event: str) -> None:
    en = templates.render(event, "en", SAMPLE_DATA[event])
    hi = templates.render(event, "hi", SAMPLE_DATA[event])
    for text in (en, hi):
        assert "{" not in text.title + text.body, "a field was left unfilled"
        assert text.title
        assert text.body
    assert not DEVANAGARI.search(en.title + en.body)
    assert DEVANAGARI.search(hi.title)
    assert DEVANAGARI.search(hi.body)
    assert (en.locale, hi.locale) == ("en", "hi")


def test_unknown_locale_falls_back_to_english() -> None:
    assert templates.render("refund_issued", "fr", {"amount": 100}).locale == "en"
    assert templates.render("refund_issued", None, {"amount": 100}).locale == "en"


def test_money_and_consultation_type_are_shown_for_people() -> None:
    text = templates.render("session_ended", "en", SAMPLE_DATA["session_ended"])
    assert text.body == "Chat with Pandit Rao: 7 min, total ₹70.00."
    assert (
        "वीडियो कॉल"
        in templates.render(
            "consultation_rejected", "hi", SAMPLE_DATA["consultation_rejected"]
        ).body
    )
    assert templates.format_money(1234567) == "₹12,345.67"
    assert templates.format_money(5, "USD") == "$0.05"


def test_missing_data_is_refused() -> None:
    with pytest.raises(ValueError, match="astrologer_name"):
        templates.render("consultation_missed", "en", {"type": "chat"})
    with pytest.raises(KeyError):
        templates.render("no_such_event", "en", {})


def test_otp_text_for_the_sign_in_flow() -> None:
    assert templates.otp_text("en", "482913", 5).startswith("482913 is your astrolive code")
    assert "482913" in templates.otp_text("hi", "482913", 5)
