"""What every event says, in English and Hindi. The person's `users.locale` chooses the language.

A template names the fields it needs; `render` refuses data without them, so a caller's mistake
shows up where it is made, not as "{astrologer_name}" on somebody's lock screen. Money fields
(`amount`, `total`, `balance`, `bonus`) are integers in minor units, with `currency` beside them
(INR when absent), and are shown as `₹25.00`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Locale = Literal["en", "hi"]
LOCALES: tuple[Locale, ...] = ("en", "hi")
DEFAULT_LOCALE: Locale = "en"

MONEY_FIELDS = ("amount", "total", "balance", "bonus")
_SYMBOLS = {"INR": "₹", "USD": "$", "EUR": "€", "GBP": "£"}
_TYPES: dict[Locale, dict[str, str]] = {
    "en": {"chat": "chat", "voice": "call", "video": "video call"},
    "hi": {"chat": "चैट", "voice": "कॉल", "video": "वीडियो कॉल"},
}


@dataclass(frozen=True)
class Text:
    title: str
    body: str


@dataclass(frozen=True)
class Template:
    event: str
    needs: tuple[str, ...]
    texts: Mapping[Locale, Text]


@dataclass(frozen=True)
class Rendered:
    locale: Locale
    title: str
    body: str


def _t(event: str, needs: tuple[str, ...], en: tuple[str, str], hi: tuple[str, str]) -> Template:
    return Template(event, needs, {"en": Text(*en), "hi": Text(*hi)})


TEMPLATES: dict[str, Template] = {
    t.event: t
    for t in (
        # Sent as SMS by the sign-in flow (auth), never through the inbox.
        _t(
            "otp",
            ("code", "minutes"),
            (
                "Your astrolive code",
                "{code} is your astrolive code. It expires in {minutes} minutes. "
                "Do not share it with anyone.",
            ),
            (
                "आपका astrolive कोड",
                "{code} आपका astrolive कोड है। यह {minutes} मिनट में समाप्त हो जाएगा। "
                "इसे किसी के साथ साझा न करें।",
            ),
        ),
        _t(
            "consultation_requested",
            ("user_name", "type"),
            (
                "New {type} request",
                "{user_name} wants a {type} with you. Accept within a minute.",
            ),
            (
                "नया {type} अनुरोध",
                "{user_name} आपसे {type} करना चाहते हैं। एक मिनट के भीतर स्वीकार करें।",
            ),
        ),
        _t(
            "consultation_accepted",
            ("astrologer_name", "type"),
            (
                "{astrologer_name} accepted",
                "{astrologer_name} accepted your {type} request. Join now.",
            ),
            (
                "{astrologer_name} ने स्वीकार किया",
                "{astrologer_name} ने आपका {type} अनुरोध स्वीकार कर लिया है। अभी जुड़ें।",
            ),
        ),
        _t(
            "consultation_rejected",
            ("astrologer_name", "type"),
            (
                "Request declined",
                "{astrologer_name} cannot take your {type} right now. No money was charged.",
            ),
            (
                "अनुरोध अस्वीकार",
                "{astrologer_name} अभी आपका {type} नहीं ले सकते। कोई पैसा नहीं काटा गया।",
            ),
        ),
        _t(
            "consultation_missed",
            ("astrologer_name", "type"),
            (
                "Request missed",
                "{astrologer_name} did not answer your {type} request in time. "
                "No money was charged.",
            ),
            (
                "अनुरोध छूट गया",
                "{astrologer_name} ने समय पर आपके {type} अनुरोध का जवाब नहीं दिया। "
                "कोई पैसा नहीं काटा गया।",
            ),
        ),
        _t(
            "session_ended",
            ("other_name", "type", "minutes", "total"),
            (
                "Your {type} has ended",
                "{type_cap} with {other_name}: {minutes} min, total {total}.",
            ),
            (
                "आपका {type} समाप्त हुआ",
                "{other_name} के साथ {type}: {minutes} मिनट, कुल {total}।",
            ),
        ),
        _t(
            "low_balance",
            ("balance", "minutes_left"),
            (
                "Low balance",
                "Your wallet has {balance}, about {minutes_left} min left. "
                "Recharge to keep talking.",
            ),
            (
                "बैलेंस कम है",
                "आपके वॉलेट में {balance} हैं, लगभग {minutes_left} मिनट बचे हैं। "
                "बात जारी रखने के लिए रिचार्ज करें।",
            ),
        ),
        _t(
            "recharge_succeeded",
            ("amount", "balance"),
            (
                "Recharge successful",
                "{amount} was added to your wallet. New balance: {balance}.",
            ),
            (
                "रिचार्ज सफल",
                "आपके वॉलेट में {amount} जोड़े गए। नया बैलेंस: {balance}।",
            ),
        ),
        _t(
            "recharge_failed",
            ("amount",),
            (
                "Recharge failed",
                "Your recharge of {amount} did not go through. "
                "If money left your account, it will be returned by your bank.",
            ),
            (
                "रिचार्ज विफल",
                "{amount} का आपका रिचार्ज पूरा नहीं हुआ। "
                "अगर आपके खाते से पैसा कटा है, तो बैंक उसे वापस कर देगा।",
            ),
        ),
        _t(
            "refund_issued",
            ("amount",),
            (
                "Refund issued",
                "{amount} was refunded to your wallet.",
            ),
            (
                "रिफ़ंड जारी",
                "{amount} आपके वॉलेट में वापस कर दिए गए हैं।",
            ),
        ),
        _t(
            "payout_paid",
            ("amount",),
            (
                "Payout sent",
                "Your payout of {amount} has been paid.",
            ),
            (
                "भुगतान भेजा गया",
                "{amount} का आपका भुगतान कर दिया गया है।",
            ),
        ),
        _t(
            "astrologer_verified",
            (),
            (
                "Profile verified",
                "Your astrologer profile is verified. You can go online and take consultations.",
            ),
            (
                "प्रोफ़ाइल सत्यापित",
                "आपकी ज्योतिषी प्रोफ़ाइल सत्यापित हो गई है। अब आप ऑनलाइन होकर परामर्श ले सकते हैं।",
            ),
        ),
        _t(
            "astrologer_rejected",
            ("reason",),
            (
                "Profile not approved",
                "Your astrologer profile was not approved: {reason}",
            ),
            (
                "प्रोफ़ाइल स्वीकृत नहीं",
                "आपकी ज्योतिषी प्रोफ़ाइल स्वीकृत नहीं हुई: {reason}",
            ),
        ),
        _t(
            "followed_astrologer_online",
            ("astrologer_name",),
            (
                "{astrologer_name} is online",
                "{astrologer_name}, whom you follow, is online now. Start a consultation.",
            ),
            (
                "{astrologer_name} ऑनलाइन हैं",
                "आप जिन्हें फ़ॉलो करते हैं, वे {astrologer_name} अभी ऑनलाइन हैं। परामर्श शुरू करें।",
            ),
        ),
        # -- issue 16: questions and e-mail verification (helper E) ------------------------
        # Never the question's or answer's text: inbox titles and bodies are stored in the clear.
        _t(
            "question_received",
            ("user_name", "amount"),
            (
                "New question",
                "{user_name} asked you a question ({amount}). Answer it before it expires.",
            ),
            (
                "नया प्रश्न",
                "{user_name} ने आपसे एक प्रश्न पूछा है ({amount})। समय रहते उत्तर दें।",
            ),
        ),
        _t(
            "question_answered",
            ("astrologer_name",),
            (
                "Your question was answered",
                "{astrologer_name} answered your question. Open the app to read it.",
            ),
            (
                "आपके प्रश्न का उत्तर आ गया",
                "{astrologer_name} ने आपके प्रश्न का उत्तर दिया है। पढ़ने के लिए ऐप खोलें।",
            ),
        ),
        _t(
            "question_expired",
            ("astrologer_name", "amount"),
            (
                "Question not answered",
                "{astrologer_name} did not answer in time. {amount} is available in your wallet "
                "again.",
            ),
            (
                "प्रश्न का उत्तर नहीं मिला",
                "{astrologer_name} ने समय पर उत्तर नहीं दिया। {amount} फिर से आपके वॉलेट में उपलब्ध है।",
            ),
        ),
        _t(
            "question_cancelled",
            ("user_name",),
            (
                "Question withdrawn",
                "{user_name} withdrew their question.",
            ),
            (
                "प्रश्न वापस लिया गया",
                "{user_name} ने अपना प्रश्न वापस ले लिया।",
            ),
        ),
        # Sent only by e-mail, to the address being verified (never through the inbox).
        _t(
            "email_verify",
            ("link", "hours"),
            (
                "Confirm your e-mail address",
                "Open this link within {hours} hours to confirm your e-mail address for "
                "astrolive: {link}",
            ),
            (
                "अपना ई-मेल पता पुष्टि करें",
                "astrolive के लिए अपना ई-मेल पता पुष्टि करने हेतु {hours} घंटों के भीतर यह लिंक खोलें: {link}",
            ),
        ),
        # -- issue 17: tips, bookings, support tickets (helper C) --------------------------
        _t(
            "tip_received",
            ("user_name", "amount"),
            (
                "You received a tip",
                "{user_name} sent you a tip. {amount} was added to your earnings.",
            ),
            ("आपको टिप मिली", "{user_name} ने आपको टिप भेजी। आपकी कमाई में {amount} जोड़े गए।"),
        ),
        _t(
            "tip_sent",
            ("astrologer_name", "amount"),
            ("Tip sent", "You tipped {astrologer_name} {amount}. Thank you!"),
            ("टिप भेजी गई", "आपने {astrologer_name} को {amount} की टिप दी। धन्यवाद!"),
        ),
        _t(
            "booking_confirmed",
            ("other_name", "type", "when"),
            (
                "Booking confirmed",
                "Your {type} with {other_name} is booked for {when}.",
            ),
            (
                "बुकिंग पक्की",
                "{other_name} के साथ आपका {type} {when} के लिए बुक हो गया है।",
            ),
        ),
        _t(
            "booking_rescheduled",
            ("other_name", "type", "when"),
            (
                "Booking moved",
                "Your {type} with {other_name} now takes place at {when}.",
            ),
            (
                "बुकिंग का समय बदला",
                "{other_name} के साथ आपका {type} अब {when} पर होगा।",
            ),
        ),
        _t(
            "booking_cancelled",
            ("other_name", "type", "when"),
            (
                "Booking cancelled",
                "Your {type} with {other_name} at {when} was cancelled.",
            ),
            (
                "बुकिंग रद्द",
                "{other_name} के साथ {when} का आपका {type} रद्द कर दिया गया।",
            ),
        ),
        _t(
            "booking_expired",
            ("other_name", "type", "when"),
            (
                "Booking not paid",
                "Your {type} with {other_name} at {when} was not paid in time and the slot was "
                "released. Any money that arrives stays in your wallet.",
            ),
            (
                "बुकिंग का भुगतान नहीं हुआ",
                "{other_name} के साथ {when} का आपका {type} समय पर भुगतान न होने से रद्द हो गया। "
                "बाद में आया पैसा आपके वॉलेट में रहेगा।",
            ),
        ),
        _t(
            "booking_reminder",
            ("other_name", "type", "when", "lead"),
            (
                "Your {type} starts in {lead}",
                "Reminder: your {type} with {other_name} starts at {when}.",
            ),
            (
                "आपका {type} {lead} में शुरू होगा",
                "याद दिलाना: {other_name} के साथ आपका {type} {when} पर शुरू होगा।",
            ),
        ),
        _t(
            "ticket_updated",
            ("ticket_status",),
            (
                "Your support ticket was updated",
                "Your ticket is now {ticket_status}. Open it to see the details.",
            ),
            (
                "आपका सहायता टिकट अपडेट हुआ",
                "आपका टिकट अब {ticket_status} है। विवरण देखने के लिए इसे खोलें।",
            ),
        ),
        _t(
            "ticket_reply",
            (),
            (
                "New reply to your ticket",
                "Support replied to your ticket. Open it to read the answer.",
            ),
            (
                "आपके टिकट पर नया जवाब",
                "सहायता टीम ने आपके टिकट का जवाब दिया है। जवाब पढ़ने के लिए इसे खोलें।",
            ),
        ),
    )
}

EVENTS: tuple[str, ...] = tuple(TEMPLATES)


def format_money(amount: int, currency: str = "INR") -> str:
    """`₹25.00` from 2500 paise; minor units are hundredths for every currency we take."""
    sign = "-" if amount < 0 else ""
    units, cents = divmod(abs(int(amount)), 100)
    symbol = _SYMBOLS.get(currency.upper(), currency.upper() + " ")
    return f"{sign}{symbol}{units:,}.{cents:02d}"


def locale_of(value: str | None) -> Locale:
    return "hi" if value == "hi" else DEFAULT_LOCALE


def render(event: str, locale: str | None, data: Mapping[str, Any]) -> Rendered:
    """The title and body of `event` in `locale` (English when unknown) filled from `data`.

    Raises `KeyError` for an unknown event and `ValueError` when a needed field is missing."""
    template = TEMPLATES[event]
    missing = [name for name in template.needs if data.get(name) in (None, "")]
    if missing:
        raise ValueError(f"{event} needs {', '.join(missing)}")
    loc = locale_of(locale)
    values: dict[str, str] = {k: str(v) for k, v in data.items()}
    currency = str(data.get("currency") or "INR")
    for name in MONEY_FIELDS:
        if isinstance(data.get(name), int):
            values[name] = format_money(int(data[name]), currency)
    if "type" in data:
        kind = str(data["type"])
        values["type"] = _TYPES[loc].get(kind, kind)
        values["type_cap"] = values["type"][:1].upper() + values["type"][1:]
    text = template.texts[loc]
    return Rendered(loc, text.title.format_map(values), text.body.format_map(values))


def otp_text(locale: str | None, code: str, minutes: int) -> str:
    """The OTP SMS in the person's language, for the sign-in flow's SMS provider."""
    return render("otp", locale, {"code": code, "minutes": minutes}).body
