-- 0001: the first schema. People and their logins, astrologer profiles, consultations, the ledger
-- core and the admin audit trail. Later capabilities add their own numbered files.

-- People. One row per phone number: the phone is the identity (E.164, unique), the role decides
-- what the API lets them do. A blocked user's tokens stop working at once (checked on refresh and
-- on Socket.IO connect through auth_sessions).
CREATE TABLE users (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    phone        text NOT NULL UNIQUE CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    role         text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'astrologer', 'admin')),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    name         text CHECK (char_length(name) <= 100),
    gender       text CHECK (gender IN ('male', 'female', 'other')),
    birth_date   date,
    birth_time   time,
    birth_place  text CHECK (char_length(birth_place) <= 200),
    languages    text[] NOT NULL DEFAULT '{}',
    locale       text NOT NULL DEFAULT 'en' CHECK (locale IN ('en', 'hi')),
    avatar_key   text,
    cognito_sub  text UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- A login: one per successful OTP verify. Refresh tokens belong to it and rotate; revoking the
-- session (logout, reuse detected, user blocked) kills every token of that login at once.
CREATE TABLE auth_sessions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text,
    user_agent     text,
    ip             inet
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id) WHERE revoked_at IS NULL;

-- Opaque refresh tokens, stored only as SHA-256 hashes. `rotated_at` set means it was used once;
-- presenting it again is reuse, which revokes the session.
CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id  uuid NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Astrologer profile, keyed by the user id (an astrologer's id is their user id). Rates are per
-- minute in minor units; NULL means that consultation type is not offered. Only `approved`
-- profiles are listed or may go online. Rating aggregates are kept here so discovery sorts on an
-- indexed column instead of aggregating a million reviews.
CREATE TABLE astrologer_profiles (
    user_id           uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    display_name      text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
    bio               text NOT NULL DEFAULT '' CHECK (char_length(bio) <= 4000),
    skills            text[] NOT NULL DEFAULT '{}',
    languages         text[] NOT NULL DEFAULT '{}',
    experience_years  integer NOT NULL DEFAULT 0 CHECK (experience_years BETWEEN 0 AND 80),
    rate_chat         bigint CHECK (rate_chat > 0),
    rate_voice        bigint CHECK (rate_voice > 0),
    rate_video        bigint CHECK (rate_video > 0),
    -- NULL: the platform default (ASTROLOGER_SHARE_PERCENT).
    share_percent     integer CHECK (share_percent BETWEEN 0 AND 100),
    verification      text NOT NULL DEFAULT 'pending'
                      CHECK (verification IN ('pending', 'approved', 'rejected')),
    verification_reason text,
    verified_at       timestamptz,
    timezone          text NOT NULL DEFAULT 'Asia/Kolkata',
    rating_sum        bigint NOT NULL DEFAULT 0 CHECK (rating_sum >= 0),
    rating_count      integer NOT NULL DEFAULT 0 CHECK (rating_count >= 0),
    rating_avg        numeric(3, 2) GENERATED ALWAYS AS (
                          CASE WHEN rating_count = 0 THEN 0
                               ELSE round(rating_sum::numeric / rating_count, 2) END) STORED,
    consultations_count integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Consultations. The rate, the astrologer's share and the free minutes are copied here when the
-- request is made/accepted, so later price changes never re-price a session (DESIGN.md).
CREATE TABLE consultations (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id),
    astrologer_id  uuid NOT NULL REFERENCES users (id),
    type           text NOT NULL CHECK (type IN ('chat', 'voice', 'video')),
    status         text NOT NULL CHECK (status IN (
                       'scheduled', 'requested', 'accepted', 'active',
                       'completed', 'rejected', 'missed', 'cancelled')),
    end_reason     text CHECK (end_reason IN (
                       'user_ended', 'astrologer_ended', 'insufficient_balance',
                       'disconnected', 'max_duration')),
    rate           bigint NOT NULL CHECK (rate >= 0),
    currency       char(3) NOT NULL DEFAULT 'INR',
    share_percent  integer NOT NULL CHECK (share_percent BETWEEN 0 AND 100),
    free_minutes   integer NOT NULL DEFAULT 0 CHECK (free_minutes >= 0),
    max_minutes    integer CHECK (max_minutes > 0),
    promo_id       uuid,
    scheduled_at   timestamptz,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    accepted_at    timestamptz,
    started_at     timestamptz,
    ended_at       timestamptz,
    billed_minutes integer NOT NULL DEFAULT 0 CHECK (billed_minutes >= 0),
    total_charged  bigint NOT NULL DEFAULT 0 CHECK (total_charged >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (user_id <> astrologer_id),
    CHECK ((status = 'completed') = (end_reason IS NOT NULL))
);
-- One astrologer, at most one accepted or live session: the database is the last word.
CREATE UNIQUE INDEX consultations_one_live_per_astrologer
    ON consultations (astrologer_id) WHERE status IN ('accepted', 'active');
CREATE INDEX consultations_user_recent ON consultations (user_id, created_at DESC, id DESC);
CREATE INDEX consultations_astrologer_recent
    ON consultations (astrologer_id, created_at DESC, id DESC);
CREATE INDEX consultations_open ON consultations (status, requested_at)
    WHERE status IN ('requested', 'accepted', 'active', 'scheduled');

-- The ledger. Double entry: every movement is a transfer whose entries sum to zero. Amounts are
-- integers in minor units. Only billing/ledger.py writes these three tables.
CREATE TABLE accounts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind        text NOT NULL CHECK (kind IN (
                    'user_wallet', 'astrologer_earnings', 'platform_revenue', 'promotions',
                    'tax_payable', 'gateway_clearing', 'refunds', 'payouts_clearing')),
    owner_id    uuid REFERENCES users (id),
    currency    char(3) NOT NULL DEFAULT 'INR',
    -- Maintained in the posting transaction for owned accounts. System accounts (no owner) are hot:
    -- their balance is rolled up from entries in batches, never updated per charge (DESIGN.md).
    balance     bigint NOT NULL DEFAULT 0,
    held        bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((owner_id IS NULL) = (kind NOT IN ('user_wallet', 'astrologer_earnings'))),
    -- No wallet ever goes below zero, counting what is held for bookings: available = balance - held.
    CONSTRAINT wallet_not_negative CHECK (kind <> 'user_wallet' OR balance - held >= 0),
    UNIQUE NULLS NOT DISTINCT (kind, owner_id, currency)
);

CREATE TABLE transfers (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Derived from the cause (charge:{consultation}:{minute}, recharge:{gateway}:{payment}, ...):
    -- a retry or a duplicate delivery finds the first transfer instead of making a second.
    idempotency_key  text NOT NULL UNIQUE,
    -- Fingerprint of what was asked; the same key with other content is a conflict.
    request_hash     text NOT NULL,
    kind             text NOT NULL,
    consultation_id  uuid REFERENCES consultations (id),
    actor_id         uuid REFERENCES users (id),
    reason           text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transfers_consultation ON transfers (consultation_id) WHERE consultation_id IS NOT NULL;

CREATE TABLE entries (
    id             bigserial PRIMARY KEY,
    transfer_id    uuid NOT NULL REFERENCES transfers (id),
    account_id     uuid NOT NULL REFERENCES accounts (id),
    amount         bigint NOT NULL CHECK (amount <> 0),
    -- The account's balance right after this entry, for owned accounts (wallet history shows it).
    balance_after  bigint,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_account_recent ON entries (account_id, id DESC);
CREATE INDEX entries_transfer ON entries (transfer_id);

-- Every statement that inserts entries must leave each of its transfers summing to zero. A
-- statement-level trigger with a transition table checks a whole batch at once, cheaply.
CREATE FUNCTION entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad uuid;
BEGIN
    SELECT n.transfer_id INTO bad
      FROM (SELECT DISTINCT transfer_id FROM new_entries) n
      JOIN entries e ON e.transfer_id = n.transfer_id
     GROUP BY n.transfer_id
    HAVING sum(e.amount) <> 0
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'transfer % does not sum to zero', bad USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_balanced AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION entries_balanced();

-- Transfers and entries are immutable: corrections are new transfers (refunds, reversals).
CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

-- Who did what, when and why, for every admin action.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    actor_id     uuid REFERENCES users (id),
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text NOT NULL,
    reason       text,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, created_at DESC);

-- Idempotency-Key on money and booking POSTs: the first response is kept for 24 h and replayed
-- for the same key and body. A NULL status_code means the first request is still running.
CREATE TABLE idempotency_keys (
    owner_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key           text NOT NULL,
    route         text NOT NULL,
    request_hash  text NOT NULL,
    status_code   integer,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
