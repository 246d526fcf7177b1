"""Job ids and ledger keys of questions, each derived from the question (never random), so a
retried job or request finds what the first one did."""

from __future__ import annotations

import uuid

EXPIRE_JOB = "expire_question"
# Hold placed when the question is asked, and the transfer that captures it when answered.
HOLD_KEY = "question_hold:{question_id}"
CHARGE_KEY = "question_charge:{question_id}"
CHARGE_KIND = "question_charge"
# The hold outlives the question's own deadline by this much, so the generic hold sweep
# (billing/holds.expire_holds) never releases it before the question's expiry does, which also
# tells the user; it is only the backstop if question expiry were broken.
HOLD_MARGIN_SECONDS = 24 * 3600
# How many overdue questions one sweep pass expires (each its own short transaction).
SWEEP_BATCH = 200
# A job that fires before the deadline (clocks apart) retries after what is left plus this.
EARLY_MARGIN_SECONDS = 0.2


def expire_job_id(question_id: uuid.UUID) -> str:
    """One delayed expiry job per question while it is queued."""
    return f"question:expire:{question_id}"


def hold_key(question_id: uuid.UUID) -> str:
    return HOLD_KEY.format(question_id=question_id)


def charge_key(question_id: uuid.UUID) -> str:
    return CHARGE_KEY.format(question_id=question_id)
