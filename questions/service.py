"""Questions: ask (the price held from the wallet), answer (the hold captured and split by the
money rules), cancel and expire (the hold released), list, read, review.

State: `open → answered | expired | cancelled`. Every transition locks the question's row first
(`FOR UPDATE`), checks it is still `open`, moves the hold, and sets the new status in the same
transaction, so a question racing its own expiry is answered once or expired once, never both,
and its hold is captured or released exactly once. Lock order, the same on every path: the
question row, then the hold row, then accounts in id order (billing/holds.py).

Texts at rest: the question, the answer and the frozen birth profiles are encrypted
(core/crypto.py), each bound to the question's id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from auth import birth_profiles
from billing import holds, rules
from billing.ledger import Leg, account_id, idempotency_conflict
from core import crypto, events
from core.errors import Conflict, NotFound, ValidationFailed
from core.services import Services
from core.times import rfc3339
from db.pool import Conn, Executor
from questions import keys

log = logging.getLogger(__name__)

MAX_TEXT = 2000  # API.md: a question's text
MAX_ANSWER = 8000  # API.md: an answer's text
STATUSES = ("open", "answered", "expired", "cancelled")


class QuestionsNotOffered(Conflict):
    code, message = "questions_not_offered", "this astrologer does not answer questions"


class QuestionNotOpen(Conflict):
    code, message = "invalid_state", "the question is no longer open"

    def __init__(self, status: str) -> None:
        super().__init__(f"the question is {status}", details={"status": status})


class QuestionExpired(Conflict):
    code, message = "question_expired", "the time to answer this question has passed"


class AlreadyReviewed(Conflict):
    code, message = "already_reviewed", "this question has already been reviewed"


def text_aad(question_id: object) -> bytes:
    return crypto.aad("questions.text_enc", question_id)


def answer_aad(question_id: object) -> bytes:
    return crypto.aad("questions.answer_enc", question_id)


for _column, _aad in (("text_enc", text_aad), ("answer_enc", answer_aad)):
    crypto.register(
        crypto.EncryptedColumn(
            table="questions",
            column=_column,
            key="id",
            aad_columns=("id",),
            aad_of=lambda values, f=_aad: f(values[0]),  # type: ignore[misc]  # bound per column
        )
    )
crypto.register(
    crypto.EncryptedColumn(
        table="questions",
        column="profiles_enc",
        key="id",
        aad_columns=("id",),
        aad_of=lambda values: birth_profiles.frozen_aad("questions", values[0]),
    )
)


@dataclass(frozen=True)
class Question:
    id: uuid.UUID
    user_id: uuid.UUID
    astrologer_id: uuid.UUID
    status: str
    text: str
    answer: str | None
    profiles: list[dict[str, Any]]
    price: int
    currency: str
    share_percent: int
    hold_id: uuid.UUID
    answer_due_at: datetime
    answered_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    user_name: str | None
    astrologer_name: str | None
    request_hash: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Question:
        ring = crypto.current()
        qid = row["id"]
        answer = row["answer_enc"]
        return cls(
            id=qid,
            user_id=row["user_id"],
            astrologer_id=row["astrologer_id"],
            status=row["status"],
            text=ring.decrypt_text(row["text_enc"], text_aad(qid)),
            answer=ring.decrypt_text(answer, answer_aad(qid)) if answer is not None else None,
            profiles=birth_profiles.open_frozen("questions", qid, row["profiles_enc"]),
            price=row["price"],
            currency=row["currency"].strip(),
            share_percent=row["share_percent"],
            hold_id=row["hold_id"],
            answer_due_at=row["answer_due_at"],
            answered_at=row["answered_at"],
            closed_at=row["closed_at"],
            created_at=row["created_at"],
            user_name=row["user_name"],
            astrologer_name=row["astrologer_name"],
            request_hash=row["request_hash"],
        )

    def profiles_visible(self, viewer_id: uuid.UUID, visible_days: float) -> bool:
        """Its astrologer sees the frozen profiles while it is open and PROFILE_VISIBLE_DAYS
        after it closed; nobody else does."""
        if viewer_id != self.astrologer_id:
            return False
        if self.closed_at is None:
            return True
        return datetime.now(UTC) < self.closed_at + timedelta(days=visible_days)

    def to_public(self, viewer_id: uuid.UUID, *, visible_days: float) -> dict[str, Any]:
        """The question as REST and Socket.IO show it to `viewer_id` (its user, its astrologer or
        an admin): `profiles` only for its astrologer within the window, absent otherwise."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "user": {"id": str(self.user_id), "name": self.user_name},
            "astrologer": {"id": str(self.astrologer_id), "display_name": self.astrologer_name},
            "user_id": str(self.user_id),
            "astrologer_id": str(self.astrologer_id),
            "status": self.status,
            "text": self.text,
            "answer": self.answer,
            "price": self.price,
            "currency": self.currency,
            "answer_due_at": rfc3339(self.answer_due_at),
            "answered_at": rfc3339(self.answered_at),
            "closed_at": rfc3339(self.closed_at),
            "created_at": rfc3339(self.created_at),
        }
        if self.profiles_visible(viewer_id, visible_days):
            data["profiles"] = self.profiles
        return data


# -- SQL -------------------------------------------------------------------------------------

_COLUMNS = """
q.id, q.user_id, q.astrologer_id, q.status, q.text_enc, q.answer_enc, q.profiles_enc, q.price,
q.currency, q.share_percent, q.hold_id, q.answer_due_at, q.answered_at, q.closed_at, q.created_at,
q.request_hash, u.name AS user_name, p.display_name AS astrologer_name
"""
_JOINS = """
JOIN users u ON u.id = q.user_id
LEFT JOIN astrologer_profiles p ON p.user_id = q.astrologer_id
"""
GET = f"SELECT {_COLUMNS} FROM questions q {_JOINS} WHERE q.id = $1"
GET_BY_KEY = f"""
SELECT {_COLUMNS} FROM questions q {_JOINS} WHERE q.user_id = $1 AND q.idempotency_key = $2
"""
# Every transition starts here: the row lock serialises answer, cancel, expire and review.
LOCK = """
SELECT id, user_id, astrologer_id, status, hold_id, price, currency, share_percent, answer_due_at,
       now() AS txn_now
  FROM questions WHERE id = $1 FOR UPDATE
"""
ASTROLOGER = """
SELECT rate_question, share_percent, verification FROM astrologer_profiles WHERE user_id = $1
"""
INSERT = """
INSERT INTO questions (id, user_id, astrologer_id, text_enc, profiles_enc, price, currency,
                       share_percent, hold_id, idempotency_key, request_hash, answer_due_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (user_id, idempotency_key) DO NOTHING
RETURNING id
"""
SET_ANSWERED = """
UPDATE questions SET status = 'answered', answer_enc = $2, answered_at = now(), closed_at = now(),
       charge_transfer_id = $3, updated_at = now()
 WHERE id = $1 AND status = 'open'
"""
SET_CLOSED = """
UPDATE questions SET status = $2, closed_at = now(), updated_at = now()
 WHERE id = $1 AND status = 'open'
"""
# Mine, newest first (keyset on created_at, id); the side is chosen by $2.
LIST = f"""
SELECT {_COLUMNS} FROM questions q {_JOINS}
 WHERE (CASE WHEN $2 THEN q.astrologer_id ELSE q.user_id END) = $1
   AND ($3::text IS NULL OR q.status = $3)
   AND ($4::timestamptz IS NULL OR (q.created_at, q.id) < ($4, $5::uuid))
 ORDER BY q.created_at DESC, q.id DESC
 LIMIT $6
"""
DUE = """
SELECT id FROM questions WHERE status = 'open' AND answer_due_at <= now()
 ORDER BY answer_due_at LIMIT $1
"""
INSERT_REVIEW = """
INSERT INTO reviews (question_id, user_id, astrologer_id, rating, comment)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (question_id) DO NOTHING
RETURNING id, question_id, rating, comment, created_at
"""
ADD_RATING = """
UPDATE astrologer_profiles SET rating_sum = rating_sum + $2, rating_count = rating_count + 1
 WHERE user_id = $1
"""


def request_hash(astrologer_id: uuid.UUID, text: str, profile_ids: list[uuid.UUID] | None) -> str:
    """What a retry with the same Idempotency-Key must repeat exactly."""
    canonical = json.dumps(
        [str(astrologer_id), text, None if profile_ids is None else [str(p) for p in profile_ids]],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- reads -----------------------------------------------------------------------------------


async def get(conn: Executor, question_id: uuid.UUID) -> Question | None:
    row = await conn.fetchrow(GET, question_id)
    return Question.from_row(row) if row else None


async def get_for(
    conn: Executor, question_id: uuid.UUID, viewer_id: uuid.UUID, *, admin: bool = False
) -> Question:
    """The question if `viewer_id` is its user or astrologer (or an admin); 404 otherwise."""
    q = await get(conn, question_id)
    if q is None or not (admin or viewer_id in (q.user_id, q.astrologer_id)):
        raise NotFound("no such question")
    return q


async def list_mine(
    conn: Executor,
    viewer_id: uuid.UUID,
    *,
    as_astrologer: bool,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Question]:
    rows = await conn.fetch(
        LIST,
        viewer_id,
        as_astrologer,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [Question.from_row(r) for r in rows]


# -- ask -------------------------------------------------------------------------------------


async def ask(
    services: Services,
    *,
    user_id: uuid.UUID,
    astrologer_id: uuid.UUID,
    text: str,
    profile_ids: list[uuid.UUID] | None,
    idempotency_key: str | None,
) -> tuple[Question, bool]:
    """Ask a question: the astrologer's `rates.question` is held from the wallet until it is
    answered (captured), cancelled or expired (released). Returns it and whether it is new (False:
    the same Idempotency-Key and question again). 404 unknown astrologer or profile, 409
    questions_not_offered, 402 insufficient_balance, 409 idempotency_conflict."""
    settings = services.settings
    text = text.strip()
    if not 1 <= len(text) <= MAX_TEXT:
        raise ValidationFailed({"text": f"1 to {MAX_TEXT} characters"})
    if "\x00" in text:
        raise ValidationFailed({"text": "must not contain NUL characters"})
    if user_id == astrologer_id:
        raise ValidationFailed({"astrologer_id": "you cannot ask yourself"})
    digest = request_hash(astrologer_id, text, profile_ids)
    key = idempotency_key or f"auto:{uuid.uuid4()}"
    async with services.db.acquire() as conn:
        existing = await _replay(conn, user_id, key, digest)
        if existing is not None:
            return existing, False
        profile = await conn.fetchrow(ASTROLOGER, astrologer_id)
        if profile is None or profile["verification"] != "approved":
            raise NotFound("no such astrologer")
        price = profile["rate_question"]
        if price is None:
            raise QuestionsNotOffered()
        share = profile["share_percent"]
        share = int(share) if share is not None else settings.astrologer_share_percent
        frozen = await birth_profiles.freeze(conn, user_id, profile_ids)
        qid = uuid.uuid4()
        ring = crypto.current()
        try:
            async with conn.transaction():
                due = await conn.fetchval(
                    "SELECT now() + make_interval(secs => $1::float8)",
                    settings.question_answer_hours * 3600,
                )
                hold = await holds.place_hold(
                    conn,
                    key=keys.hold_key(qid),
                    user_id=user_id,
                    amount=price,
                    currency=settings.currency,
                    reason="question",
                    expires_at=due + timedelta(seconds=keys.HOLD_MARGIN_SECONDS),
                )
                inserted = await conn.fetchval(
                    INSERT,
                    qid,
                    user_id,
                    astrologer_id,
                    ring.encrypt_text(text, text_aad(qid)),
                    birth_profiles.seal_frozen("questions", qid, frozen),
                    price,
                    settings.currency,
                    share,
                    hold.id,
                    key,
                    digest,
                    due,
                )
                if inserted is None:  # the same key committed meanwhile: undo our hold
                    raise _LostRace()
        except _LostRace:
            existing = await _replay(conn, user_id, key, digest)
            if existing is None:
                raise
            return existing, False
        q = await get(conn, qid)
    assert q is not None
    await _schedule_expiry(services, q)
    await _publish(services, q, created=True)
    await _notify(
        services,
        q.astrologer_id,
        "question_received",
        {"user_name": q.user_name or "A user", "amount": q.price, "currency": q.currency},
        key=f"question_received:{q.id}",
    )
    return q, True


class _LostRace(Conflict):
    code, message = "request_in_progress", "the same question is being asked right now"


async def _replay(conn: Executor, user_id: uuid.UUID, key: str, digest: str) -> Question | None:
    row = await conn.fetchrow(GET_BY_KEY, user_id, key)
    if row is None:
        return None
    if row["request_hash"] != digest:
        raise idempotency_conflict()
    return Question.from_row(row)


# -- answer, cancel, expire --------------------------------------------------------------------


async def answer(
    services: Services, *, astrologer_id: uuid.UUID, question_id: uuid.UUID, text: str
) -> Question:
    """Its astrologer answers while it is open and not past its deadline: the hold becomes a
    charge (wallet → astrologer's share to earnings, the rest to platform revenue), and the user
    is told (inbox, push, e-mail when verified). 404 for anyone else; 409 invalid_state /
    question_expired."""
    text = text.strip()
    if not 1 <= len(text) <= MAX_ANSWER:
        raise ValidationFailed({"text": f"1 to {MAX_ANSWER} characters"})
    if "\x00" in text:
        raise ValidationFailed({"text": "must not contain NUL characters"})
    async with services.db.acquire() as conn:
        async with conn.transaction():
            row = await _lock_txn(conn, question_id, "astrologer_id", astrologer_id)
            # `now()` is when this answer's transaction began: an answer sent before the deadline
            # counts even if it waited on the row lock past it.
            if row["txn_now"] >= row["answer_due_at"]:
                raise QuestionExpired()
            transfer = await _capture_txn(conn, row)
            sealed = crypto.current().encrypt_text(text, answer_aad(question_id))
            status = await conn.execute(SET_ANSWERED, question_id, sealed, transfer.id)
            assert status.endswith(" 1"), "the row is locked and was open"
        q = await get(conn, question_id)
    assert q is not None
    await _publish(services, q)
    await _notify(
        services,
        q.user_id,
        "question_answered",
        {"astrologer_name": q.astrologer_name or "Your astrologer"},
        key=f"question_answered:{q.id}",
    )
    return q


async def _lock_txn(
    conn: Conn, question_id: uuid.UUID, party: str, party_id: uuid.UUID, *, status: str = "open"
) -> asyncpg.Record:
    """Lock the question's row: 404 unless `party_id` is its `party` (user_id or astrologer_id),
    409 invalid_state unless it is in `status`."""
    row: asyncpg.Record | None = await conn.fetchrow(LOCK, question_id)
    if row is None or row[party] != party_id:
        raise NotFound("no such question")
    if row["status"] != status:
        raise QuestionNotOpen(row["status"])
    return row


async def _capture_txn(conn: Conn, row: asyncpg.Record) -> Any:
    price, currency = row["price"], row["currency"].strip()
    astrologer_part, platform_part = rules.question_split(price, row["share_percent"])
    wallet = await account_id(conn, "user_wallet", row["user_id"], currency)
    legs = [Leg(wallet, -price)]
    if astrologer_part:
        earnings = await account_id(conn, "astrologer_earnings", row["astrologer_id"], currency)
        legs.append(Leg(earnings, astrologer_part))
    if platform_part:
        revenue = await account_id(conn, "platform_revenue", None, currency)
        legs.append(Leg(revenue, platform_part))
    return await holds.capture_hold(
        conn,
        row["hold_id"],
        key=keys.charge_key(row["id"]),
        kind=keys.CHARGE_KIND,
        legs=legs,
        actor_id=row["astrologer_id"],
        reason="question answered",
        metadata={"question_id": str(row["id"])},
    )


async def cancel(services: Services, *, user_id: uuid.UUID, question_id: uuid.UUID) -> Question:
    """Its user withdraws it while open: the hold is released. 404 for anyone else; 409
    invalid_state once answered, expired or cancelled."""
    async with services.db.acquire() as conn:
        async with conn.transaction():
            row = await _lock_txn(conn, question_id, "user_id", user_id)
            await holds.release_hold(conn, row["hold_id"], "question cancelled")
            await conn.execute(SET_CLOSED, question_id, "cancelled")
        q = await get(conn, question_id)
    assert q is not None
    await _publish(services, q)
    await _notify(
        services,
        q.astrologer_id,
        "question_cancelled",
        {"user_name": q.user_name or "A user"},
        key=f"question_cancelled:{q.id}",
    )
    return q


async def expire(services: Services, question_id: uuid.UUID) -> Question | None:
    """Expire it if still open and due (the job and the sweep both call this; it is safe to run
    any number of times, concurrently too): the hold is released and the user told. Returns the
    expired question, or None when there was nothing to do."""
    async with services.db.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(LOCK, question_id)
            if row is None or row["status"] != "open" or row["txn_now"] < row["answer_due_at"]:
                return None
            await holds.release_hold(conn, row["hold_id"], "question expired")
            await conn.execute(SET_CLOSED, question_id, "expired")
        q = await get(conn, question_id)
    assert q is not None
    await _publish(services, q)
    await _notify(
        services,
        q.user_id,
        "question_expired",
        {
            "astrologer_name": q.astrologer_name or "The astrologer",
            "amount": q.price,
            "currency": q.currency,
        },
        key=f"question_expired:{q.id}",
    )
    return q


async def seconds_until_due(services: Services, question_id: uuid.UUID) -> float | None:
    """Seconds until an open question is due (<= 0: due now); None when it is not open."""
    value = await services.db.fetchval(
        "SELECT extract(epoch FROM answer_due_at - now()) FROM questions "
        "WHERE id = $1 AND status = 'open'",
        question_id,
    )
    return None if value is None else float(value)


async def sweep(services: Services) -> int:
    """Expire every overdue open question (the backstop of the delayed jobs)."""
    expired = 0
    while True:
        ids = [r["id"] for r in await services.db.fetch(DUE, keys.SWEEP_BATCH)]
        for qid in ids:
            expired += await expire(services, qid) is not None
        if len(ids) < keys.SWEEP_BATCH:
            return expired


# -- reviews ---------------------------------------------------------------------------------


async def review(
    services: Services,
    *,
    user_id: uuid.UUID,
    question_id: uuid.UUID,
    rating: int,
    comment: str | None,
) -> dict[str, Any]:
    """Its user reviews an answered question, once; it counts toward the astrologer's rating like
    a consultation's review (same table, same aggregates, same transaction)."""
    async with services.db.acquire() as conn, conn.transaction():
        row = await _lock_txn(conn, question_id, "user_id", user_id, status="answered")
        inserted = await conn.fetchrow(
            INSERT_REVIEW, question_id, user_id, row["astrologer_id"], rating, comment
        )
        if inserted is None:
            raise AlreadyReviewed()
        await conn.execute(ADD_RATING, row["astrologer_id"], rating)
    return {
        "id": str(inserted["id"]),
        "question_id": str(inserted["question_id"]),
        "rating": inserted["rating"],
        "comment": inserted["comment"],
        "created_at": rfc3339(inserted["created_at"]),
    }


# -- after-commit effects --------------------------------------------------------------------


async def _schedule_expiry(services: Services, q: Question) -> None:
    """The durable expiry: an arq job due at the deadline. If Redis loses it, the sweep (every
    QUESTION_SWEEP_SECONDS) expires the question from PostgreSQL."""
    try:
        await services.arq.enqueue_job(
            keys.EXPIRE_JOB,
            str(q.id),
            _job_id=keys.expire_job_id(q.id),
            _defer_until=q.answer_due_at,
        )
    except (RedisError, OSError):
        log.warning("could not enqueue a question's expiry; the sweep will", exc_info=True)


async def _publish(services: Services, q: Question, *, created: bool = False) -> None:
    """`question:created` to the astrologer (a new question), `question:updated` to both sides
    (every later change), each with the view that side may see."""
    days = services.settings.profile_visible_days
    try:
        if created:
            view = events.Question.model_validate(q.to_public(q.astrologer_id, visible_days=days))
            await events.send(
                services.emitter,
                events.QuestionCreated(question=view),
                events.Room.user(q.astrologer_id),
            )
            return
        for viewer in (q.user_id, q.astrologer_id):
            view = events.Question.model_validate(q.to_public(viewer, visible_days=days))
            await events.send(
                services.emitter, events.QuestionUpdated(question=view), events.Room.user(viewer)
            )
    except (RedisError, OSError):
        log.warning("question event not emitted", extra={"question_id": str(q.id)})


async def _notify(
    services: Services, user_id: uuid.UUID, event: str, data: dict[str, Any], *, key: str
) -> None:
    from notify import notify  # beside us; imported late to keep the import order free

    try:
        await notify(services, user_id, event, data, key=key)
    except (ValueError, RedisError, OSError, asyncpg.PostgresError):
        # A notification must never undo or fail a transition that is already committed.
        log.exception("question notification failed", extra={"key": key})
