"""Phone numbers in any common notation, normalised to E.164 with the `phonenumbers` library."""

from __future__ import annotations

import phonenumbers

from core.errors import ValidationFailed


def normalise_phone(raw: str, default_region: str = "IN", *, field: str = "phone") -> str:
    """`+919812345678` from `098123 45678`, `+91 98123-45678`, `919812345678`...; 422 otherwise."""
    text = (raw or "").strip()
    if not text or len(text) > 32:
        raise ValidationFailed({field: "not a phone number"})
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed({field: "not a phone number"}) from exc
    if not phonenumbers.is_valid_number(number):
        # "919812345678" without '+': try it as an international number too.
        try:
            alt = phonenumbers.parse("+" + text.lstrip("0"), None)
        except phonenumbers.NumberParseException:
            alt = None
        if alt is None or not phonenumbers.is_valid_number(alt):
            raise ValidationFailed({field: "not a valid phone number"})
        number = alt
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
