-- 0017: bookings paid by shortfall, booking reminders, tips, support tickets, chat attachments
-- (issue 17). Owned by `consultations/` (booking, attachments, tips) and `support/`.

-- Bookings that wait for a shortfall payment ----------------------------------------------------

-- `awaiting_payment`: a booking whose wallet was short; the slot is kept until payment_due_at
-- while a recharge of exactly the shortfall is paid. `expired`: it was not paid in time.
ALTER TABLE consultations DROP CONSTRAINT consultations_status_check;
ALTER TABLE consultations ADD CONSTRAINT consultations_status_check CHECK (status IN (
    'awaiting_payment', 'scheduled', 'requested', 'accepted', 'active',
    'completed', 'rejected', 'missed', 'cancelled', 'expired'));
ALTER TABLE consultations
    -- Until when the slot waits for the shortfall payment (awaiting_payment only).
    ADD COLUMN payment_due_at timestamptz,
    -- The recharge that pays the shortfall; its settlement confirms the booking, once.
    ADD COLUMN shortfall_recharge_id uuid REFERENCES recharges (id),
    -- What the booking must hold once paid (the hold is placed when the recharge settles).
    ADD COLUMN hold_amount bigint CHECK (hold_amount >= 0),
    -- Reminders due before this moment are not sent: a booking made (or moved) 10 hours ahead
    -- gets no "in 24 hours" reminder. Set when a booking is made, confirmed or rescheduled.
    ADD COLUMN reminders_from timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT consultations_awaiting_shape
        CHECK ((status = 'awaiting_payment') <= (payment_due_at IS NOT NULL
                                                AND shortfall_recharge_id IS NOT NULL));
-- The settle path finds the booking of a recharge by this; one booking per recharge.
CREATE UNIQUE INDEX consultations_shortfall_recharge
    ON consultations (shortfall_recharge_id) WHERE shortfall_recharge_id IS NOT NULL;
-- The expiry sweep reads awaiting rows by due time.
CREATE INDEX consultations_payment_due ON consultations (payment_due_at)
    WHERE status = 'awaiting_payment';

-- A booking waiting for its payment keeps its slot: the no-double-booking rule of 0005 must count
-- it as open. Recreated with the same name and the status list extended.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'consultations_no_double_booking') THEN
        ALTER TABLE consultations DROP CONSTRAINT consultations_no_double_booking;
        ALTER TABLE consultations ADD CONSTRAINT consultations_no_double_booking
            EXCLUDE USING gist (astrologer_id WITH =, booked_slot WITH &&)
            WHERE (booked_slot IS NOT NULL
                   AND status IN ('awaiting_payment', 'scheduled', 'requested', 'accepted',
                                  'active'));
    ELSE
        DROP INDEX IF EXISTS consultations_no_double_booking;
        CREATE UNIQUE INDEX consultations_no_double_booking
            ON consultations (astrologer_id, scheduled_at)
            WHERE scheduled_at IS NOT NULL
              AND status IN ('awaiting_payment', 'scheduled', 'requested', 'accepted', 'active');
    END IF;
END $$;

-- Booking reminders: a sent-marker per booking, kind and booked time. A reminder job, the sweep
-- and a retry all try to insert it; the one that inserts sends. A rescheduled booking has a new
-- scheduled_at, so its reminders are new rows (sent again for the new time, once each).
CREATE TABLE booking_reminders (
    consultation_id uuid NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind ~ '^[a-z0-9_]{1,16}$'),
    scheduled_at    timestamptz NOT NULL,
    sent_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consultation_id, kind, scheduled_at)
);

-- Tips ----------------------------------------------------------------------------------------

-- One row per tip; its money moved in the ledger transfer `tip:{id}` (wallet -> astrologer's
-- earnings + platform revenue). The Idempotency-Key of the request is the cause: a replay finds
-- this row instead of tipping twice.
CREATE TABLE tips (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    consultation_id  uuid NOT NULL REFERENCES consultations (id),
    user_id          uuid NOT NULL REFERENCES users (id),
    astrologer_id    uuid NOT NULL REFERENCES users (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    astrologer_part  bigint NOT NULL CHECK (astrologer_part >= 0 AND astrologer_part <= amount),
    currency         char(3) NOT NULL DEFAULT 'INR',
    idempotency_key  text NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 200),
    transfer_id      uuid NOT NULL UNIQUE REFERENCES transfers (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);
-- The daily limit sums one user's tips of the last day.
CREATE INDEX tips_user_recent ON tips (user_id, created_at);
CREATE INDEX tips_consultation ON tips (consultation_id);

-- Support tickets ------------------------------------------------------------------------------

-- `open -> in_review -> resolved | rejected`. Texts are personal data: `*_enc` columns hold
-- AES-GCM envelopes (core/crypto.py) bound to their row, never plaintext. One open refund ticket per
-- consultation: the partial unique index is the last word (409 ticket_exists).
CREATE TABLE support_tickets (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    author_id        uuid NOT NULL REFERENCES users (id),
    category         text NOT NULL
                     CHECK (category IN ('refund', 'payment', 'technical', 'behaviour', 'other')),
    consultation_id  uuid REFERENCES consultations (id),
    recharge_id      uuid REFERENCES recharges (id),
    question_id      uuid REFERENCES questions (id),
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'in_review', 'resolved', 'rejected')),
    text_enc         bytea NOT NULL,
    outcome          text CHECK (outcome IN ('refund', 'rejected', 'answered')),
    refund_amount    bigint CHECK (refund_amount > 0),
    refund_id        uuid REFERENCES consultation_refunds (id),
    note_enc         bytea,
    resolved_by      uuid REFERENCES users (id),
    resolved_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- A closed ticket says how and when; an open one does not.
    CHECK ((status IN ('resolved', 'rejected')) = (resolved_at IS NOT NULL)),
    CHECK ((outcome = 'refund') = (refund_id IS NOT NULL)),
    CHECK (category <> 'refund' OR consultation_id IS NOT NULL OR question_id IS NOT NULL)
);
CREATE UNIQUE INDEX support_tickets_one_open_refund
    ON support_tickets (consultation_id)
    WHERE category = 'refund' AND status IN ('open', 'in_review');
CREATE UNIQUE INDEX support_tickets_one_open_question_refund
    ON support_tickets (question_id)
    WHERE category = 'refund' AND status IN ('open', 'in_review') AND question_id IS NOT NULL;
-- The admin queue, oldest first, per status.
CREATE INDEX support_tickets_queue ON support_tickets (status, created_at, id);
-- An author's tickets, newest first.
CREATE INDEX support_tickets_author ON support_tickets (author_id, created_at DESC, id DESC);

CREATE TABLE support_ticket_messages (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id  uuid NOT NULL REFERENCES support_tickets (id) ON DELETE CASCADE,
    author_id  uuid NOT NULL REFERENCES users (id),
    text_enc   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX support_ticket_messages_ticket ON support_ticket_messages (ticket_id, created_at, id);

-- Chat attachments ----------------------------------------------------------------------------

-- An upload slot made by a participant; `ready` once its bytes were checked (type by content,
-- size, image metadata stripped) when it was first sent. Where the bytes are is derived from the
-- ids (consultations/attachments.py), so no storage key is kept in the clear.
CREATE TABLE chat_attachments (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    consultation_id  uuid NOT NULL REFERENCES consultations (id),
    uploader_id      uuid NOT NULL REFERENCES users (id),
    content_type     text NOT NULL CHECK (content_type IN (
                         'image/jpeg', 'image/png', 'image/webp', 'application/pdf')),
    declared_size    bigint NOT NULL CHECK (declared_size > 0),
    size             bigint CHECK (size > 0),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'ready', 'invalid')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    checked_at       timestamptz
);
CREATE INDEX chat_attachments_consultation ON chat_attachments (consultation_id);
-- A chat message may carry one attachment (then its text may be empty: texts are stored
-- encrypted in body_enc since 0016, which takes an empty text).
ALTER TABLE chat_messages ADD COLUMN attachment_id uuid REFERENCES chat_attachments (id);
