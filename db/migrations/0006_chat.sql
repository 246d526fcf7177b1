-- 0006: chat messages of consultations. Only consultations/chat.py writes these tables.
--
-- Each message gets a per-consultation sequence number (`seq`, 1, 2, 3, ...) from a counter row
-- that is bumped in the same statement that inserts the message, so the two participants' messages
-- never share a seq nor leave a gap: a failed insert rolls its bump back with it. Clients catch up
-- after a reconnect with `after_seq`.

-- The last seq handed out per consultation. A row of its own (not a column of `consultations`) so
-- that sending a message never waits on the lock the minute meter or the lifecycle hold on the
-- consultation row.
CREATE TABLE chat_counters (
    consultation_id  uuid PRIMARY KEY REFERENCES consultations (id) ON DELETE CASCADE,
    last_seq         bigint NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE chat_messages (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    consultation_id  uuid NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    seq              bigint NOT NULL CHECK (seq > 0),
    sender_id        uuid NOT NULL REFERENCES users (id),
    -- Chosen by the sending device; a resend with the same id is stored once (API.md).
    client_msg_id    text NOT NULL CHECK (char_length(client_msg_id) BETWEEN 1 AND 64),
    body             text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 4000),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- No two messages of a consultation share a seq; this index also serves `after_seq` reads.
    CONSTRAINT chat_messages_seq_unique UNIQUE (consultation_id, seq),
    -- Idempotent resends: one row per (consultation, sender, client_msg_id).
    CONSTRAINT chat_messages_client_id_unique UNIQUE (consultation_id, sender_id, client_msg_id)
);

-- How far each participant has read (read receipts). Only moves forward.
CREATE TABLE chat_reads (
    consultation_id  uuid NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users (id),
    up_to_seq        bigint NOT NULL CHECK (up_to_seq >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consultation_id, user_id)
);
