-- 0016: birth profiles, questions (e-mail consultations), e-mail verification, and personal data
-- encrypted at rest (issue 16).
--
-- Every `*_enc` column holds an envelope of core/crypto.py: `v1:<key id>:<nonce + AES-GCM
-- ciphertext>`, bound by its associated data to its table, column and row. The database never
-- sees the keys, so a dump shows none of these texts; `astrolive rotate-data-key` re-encrypts
-- them under a new key in batches while the service runs.

-- Chat texts ---------------------------------------------------------------------------------

-- New messages are stored encrypted in body_enc; `body` keeps the plaintext of messages written
-- before this release until rotate-data-key encrypts them (it then sets body to NULL), so the
-- upgrade needs no downtime. Exactly one of the two holds the text.
ALTER TABLE chat_messages
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN body_enc bytea,
    ADD CONSTRAINT chat_messages_one_body CHECK ((body IS NULL) <> (body_enc IS NULL));

-- E-mail and language -------------------------------------------------------------------------

-- An address is unverified until the signed link sent to it is used; notifications go only to
-- verified addresses (notify/inbox.py). Changing the address clears this.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

-- Birth profiles ------------------------------------------------------------------------------

-- A person's saved birth details: their own (`self`, which is also what GET /v1/me shows) and
-- family and friends'. Everything personal (name, gender, date, time, place, coordinates, time
-- zone) is one encrypted JSON document in `data`; only the relation is in the clear, because the
-- database must keep one `self` per account. At most 20 per account: counted under the user's row
-- lock in auth/birth_profiles.py. users.birth_* (plaintext, from before) are moved into the self
-- profile on first read or by rotate-data-key.
CREATE TABLE birth_profiles (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    relation    text NOT NULL CHECK (relation IN (
                    'self', 'spouse', 'partner', 'child', 'parent', 'sibling', 'friend', 'other')),
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One `self` profile per account, even when two PATCH /v1/me race to create it.
CREATE UNIQUE INDEX birth_profiles_one_self ON birth_profiles (user_id) WHERE relation = 'self';
-- The owner's list, oldest first (self is shown first by the code).
CREATE INDEX birth_profiles_owner ON birth_profiles (user_id, created_at, id);

-- The frozen copy on a consultation: the profiles as they were when it was requested (encrypted
-- JSON list). Editing or deleting a profile later never changes what the astrologer was shown.
ALTER TABLE consultations ADD COLUMN profiles_enc bytea;

-- Questions -----------------------------------------------------------------------------------

-- The fixed price of one written question; NULL: the astrologer does not take questions.
ALTER TABLE astrologer_profiles ADD COLUMN rate_question bigint CHECK (rate_question > 0);

-- A written question to an astrologer, paid by a wallet hold placed when it is asked:
-- open -> answered (the hold is captured: wallet -> earnings + platform) | expired | cancelled
-- (the hold is released). The state moves only by conditional updates of an `open` row under its
-- row lock, so answering and expiring can never both happen.
CREATE TABLE questions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id),
    astrologer_id   uuid NOT NULL REFERENCES users (id),
    status          text NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'answered', 'expired', 'cancelled')),
    text_enc        bytea NOT NULL,
    answer_enc      bytea,
    profiles_enc    bytea,
    -- Frozen when asked: a later price or share change never re-prices an open question.
    price           bigint NOT NULL CHECK (price > 0),
    currency        char(3) NOT NULL DEFAULT 'INR',
    share_percent   integer NOT NULL CHECK (share_percent BETWEEN 0 AND 100),
    hold_id         uuid NOT NULL UNIQUE REFERENCES holds (id),
    charge_transfer_id uuid REFERENCES transfers (id),
    -- The client's Idempotency-Key and a hash of what was asked: a retry returns this question,
    -- the same key with another question is 409 (kept here, not in idempotency_keys, whose stored
    -- responses would hold the question's text in the clear).
    idempotency_key text NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    text NOT NULL,
    answer_due_at   timestamptz NOT NULL,
    answered_at     timestamptz,
    closed_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (user_id <> astrologer_id),
    CONSTRAINT questions_idempotency UNIQUE (user_id, idempotency_key),
    CONSTRAINT questions_answer_shape CHECK ((status = 'answered') = (answer_enc IS NOT NULL)),
    CHECK ((status = 'answered') = (charge_transfer_id IS NOT NULL)),
    CHECK ((status = 'open') = (closed_at IS NULL))
);
-- "Mine, newest first" for each side, keyset-paginated on (created_at, id).
CREATE INDEX questions_user_recent ON questions (user_id, created_at DESC, id DESC);
CREATE INDEX questions_astrologer_recent ON questions (astrologer_id, created_at DESC, id DESC);
-- The expiry sweep reads only open questions by due time.
CREATE INDEX questions_due ON questions (answer_due_at) WHERE status = 'open';

-- Reviews of answered questions count toward the astrologer's rating like consultations': a
-- review is of exactly one consultation or one question, once.
ALTER TABLE reviews
    ALTER COLUMN consultation_id DROP NOT NULL,
    ADD COLUMN question_id uuid UNIQUE REFERENCES questions (id),
    ADD CONSTRAINT reviews_one_subject CHECK ((consultation_id IS NULL) <> (question_id IS NULL));
