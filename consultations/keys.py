"""Every Redis key of `consultations/` and its lifetime. Redis holds only presence here, which can
be rebuilt: a lost key means "offline" until the astrologer's next heartbeat.

The number of seconds an astrologer stays online without a heartbeat is the setting
`PRESENCE_TTL_SECONDS`; the others are fixed below with their reasons.
"""

from __future__ import annotations

import uuid

# Set while the astrologer's live socket sends heartbeats; expires PRESENCE_TTL_SECONDS after the
# last one, which is what bounds how long a lost astrologer still looks online.
PRESENCE_ALIVE = "presence:alive:{id}"

# "online" or "offline": the astrologer's explicit choice (REST or the connect default). No TTL:
# a choice lasts until changed; if Redis loses it, the next heartbeat re-derives it.
PRESENCE_WANTS = "presence:wants:{id}"

# Set by the state machine while the astrologer has an accepted or active consultation.
PRESENCE_BUSY = "presence:busy:{id}"
# A stuck `busy` (a process died between commit and clear) is repaired by the sweep within
# seconds; this TTL is only the last resort, longer than any session is allowed to run.
PRESENCE_BUSY_TTL_SECONDS = 12 * 3600

# The last status published as the `presence` event, so each change is emitted once.
PRESENCE_LAST = "presence:last:{id}"

# Ids whose last published status is not offline: the sweep walks only these, and
# `online=true` discovery starts from them (a few thousand at most, never the whole table).
PRESENCE_LISTED = "presence:listed"

# How often the consultations sweep runs (missed requests, due bookings, offer expiry, presence):
# a lost astrologer is offline at most PRESENCE_TTL_SECONDS + this, a request missed at most
# REQUEST_TIMEOUT_SECONDS + this after it was made, even with no delayed job.
SWEEP_EVERY_SECONDS = 5


def alive(astrologer_id: uuid.UUID) -> str:
    return PRESENCE_ALIVE.format(id=astrologer_id)


def wants(astrologer_id: uuid.UUID) -> str:
    return PRESENCE_WANTS.format(id=astrologer_id)


def busy(astrologer_id: uuid.UUID) -> str:
    return PRESENCE_BUSY.format(id=astrologer_id)


def last(astrologer_id: uuid.UUID) -> str:
    return PRESENCE_LAST.format(id=astrologer_id)


# arq job ids: deterministic, so enqueuing the same timer twice while it is queued is one job.
# (They dedupe only while queued; the jobs themselves are safe to run twice.)
def expire_request_job(consultation_id: uuid.UUID) -> str:
    return f"consultation:expire:{consultation_id}"


def expire_unstarted_job(consultation_id: uuid.UUID) -> str:
    """The join timeout's job (JOIN_TIMEOUT_SECONDS after the acceptance; issue 12)."""
    return f"consultation:unstarted:{consultation_id}"


def start_booking_job(consultation_id: uuid.UUID) -> str:
    return f"consultation:start-booking:{consultation_id}"


def expire_offer_job(entry_id: uuid.UUID) -> str:
    return f"waitlist:expire-offer:{entry_id}"
