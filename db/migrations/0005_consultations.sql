-- 0005: discovery, the consultation state machine's extra facts, scheduled bookings, the waitlist,
-- promo codes, free first consultations, reviews and complaints. Owned by `consultations/`.

-- Name search uses a trigram index (ILIKE '%q%' cannot use a btree); double booking is refused by
-- an exclusion constraint that mixes `=` on a uuid with `&&` on a range, which needs btree_gist.
-- Both are contrib extensions: every managed PostgreSQL (RDS, Aurora) has them, but the embedded
-- server of a fresh machine (pgserver) does not. Without them this file installs fallbacks,
-- marked below: name search without an index, and double booking refused per slot start.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'btree_gist') THEN
        CREATE EXTENSION IF NOT EXISTS btree_gist;
    END IF;
END $$;

-- Discovery ----------------------------------------------------------------------------------

-- The cheapest offered rate, for `sort=rate_*` and `max_rate` when no `type` is given. Stored so
-- it can be indexed; NULL only when nothing is offered (such a profile is never listed).
ALTER TABLE astrologer_profiles
    ADD COLUMN min_rate bigint GENERATED ALWAYS AS (LEAST(rate_chat, rate_voice, rate_video)) STORED;

-- One index per sort order, each ending in user_id: the keyset cursor is (sort value, user_id)
-- compared as a row, so every page is an index range scan that stops after `limit` rows, whatever
-- the table size (descending sorts read these backwards). Partial on `approved` because nothing
-- else is ever listed.
CREATE INDEX astrologer_profiles_by_rating
    ON astrologer_profiles (rating_avg, user_id) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_by_experience
    ON astrologer_profiles (experience_years, user_id) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_by_popularity
    ON astrologer_profiles (consultations_count, user_id) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_by_min_rate
    ON astrologer_profiles (min_rate, user_id) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_by_rate_chat
    ON astrologer_profiles (rate_chat, user_id) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_by_rate_voice
    ON astrologer_profiles (rate_voice, user_id) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_by_rate_video
    ON astrologer_profiles (rate_video, user_id) WHERE verification = 'approved';
-- `skill=` and `language=` are array containment (`skills @> ARRAY[...]`): GIN answers them.
-- fastupdate off: profiles change rarely and are read on every listing; a GIN pending list left
-- unmerged after a bulk load made the planner skip these indexes (seen with 10,000 profiles).
CREATE INDEX astrologer_profiles_skills ON astrologer_profiles USING gin (skills)
    WITH (fastupdate = off) WHERE verification = 'approved';
CREATE INDEX astrologer_profiles_languages ON astrologer_profiles USING gin (languages)
    WITH (fastupdate = off) WHERE verification = 'approved';
-- `q=` is a case-insensitive substring match on the display name (ILIKE '%q%'). Fallback
-- without pg_trgm: no index (a scan of the approved profiles, ~10 ms at 10,000).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX astrologer_profiles_name_trgm ON astrologer_profiles
            USING gin (display_name gin_trgm_ops) WITH (fastupdate = off)
            WHERE verification = 'approved';
    END IF;
END $$;

-- Consultations: what the state machine freezes beyond 0001 ----------------------------------

ALTER TABLE consultations
    -- The astrologer's own per-minute rate when the request was made; `rate` is what the user
    -- pays after a percent promo. The astrologer's share is computed on list_rate (the platform's
    -- promotions account funds the difference), so a promo never cuts the astrologer's pay.
    ADD COLUMN list_rate bigint CHECK (list_rate >= 0),
    -- A flat promo: this much of the first charges is paid by the promotions account.
    ADD COLUMN promo_credit bigint NOT NULL DEFAULT 0 CHECK (promo_credit >= 0),
    -- The booked interval of a scheduled consultation (NULL for instant requests).
    ADD COLUMN booked_slot tstzrange,
    -- The wallet hold of a booking (billing/holds.py); released or captured by the state machine.
    ADD COLUMN hold_id uuid REFERENCES holds (id),
    -- Who cancelled, and why a consultation closed without a session (for support and audits).
    ADD COLUMN closed_by uuid REFERENCES users (id),
    ADD COLUMN close_reason text CHECK (char_length(close_reason) <= 500),
    ADD CONSTRAINT consultations_booking_shape
        CHECK ((booked_slot IS NULL) = (scheduled_at IS NULL));

-- Two bookings of one astrologer can never overlap while either is still going to happen: two
-- users racing for one slot leave exactly one booking (the other gets 409 slot_taken).
-- Fallback without btree_gist: a unique slot start per astrologer (slots are cut on one grid, so
-- this refuses the same slot; only a change of SLOT_MINUTES could let two overlap).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
        ALTER TABLE consultations ADD CONSTRAINT consultations_no_double_booking
            EXCLUDE USING gist (astrologer_id WITH =, booked_slot WITH &&)
            WHERE (booked_slot IS NOT NULL
                   AND status IN ('scheduled', 'requested', 'accepted', 'active'));
    ELSE
        CREATE UNIQUE INDEX consultations_no_double_booking
            ON consultations (astrologer_id, scheduled_at)
            WHERE scheduled_at IS NOT NULL
              AND status IN ('scheduled', 'requested', 'accepted', 'active');
    END IF;
END $$;

-- The sweep that turns due bookings into requests reads only scheduled rows by time.
CREATE INDEX consultations_scheduled_due ON consultations (scheduled_at) WHERE status = 'scheduled';
-- The missed-request sweep reads requested rows oldest first (0001's consultations_open covers
-- it); the review and complaint checks read by consultation id (the primary key).

-- Weekly availability -------------------------------------------------------------------------

-- Weekly hours in the astrologer's own time zone (astrologer_profiles.timezone), in minutes from
-- midnight; end 1440 is midnight at the end of the day. Windows of one weekday never overlap.
CREATE TABLE astrologer_availability (
    astrologer_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    weekday       smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6),  -- 0 = Monday
    start_minute  integer NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute    integer NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
    CHECK (start_minute < end_minute),
    -- Without btree_gist (see the top) only the code's own overlap check remains.
    PRIMARY KEY (astrologer_id, weekday, start_minute)
);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gist') THEN
        ALTER TABLE astrologer_availability ADD CONSTRAINT astrologer_availability_no_overlap
            EXCLUDE USING gist (astrologer_id WITH =, weekday WITH =,
                                int4range(start_minute, end_minute) WITH &&);
    END IF;
END $$;

-- Waitlist ------------------------------------------------------------------------------------

-- A user's place in a busy astrologer's queue. `offered`: the astrologer became free and this
-- user may request them until offer_expires_at; nobody else may meanwhile.
CREATE TABLE waitlist_entries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    astrologer_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type             text NOT NULL CHECK (type IN ('chat', 'voice', 'video')),
    status           text NOT NULL DEFAULT 'waiting' CHECK (status IN (
                         'waiting', 'offered', 'fulfilled', 'left', 'expired', 'skipped')),
    offered_at       timestamptz,
    offer_expires_at timestamptz,
    consultation_id  uuid REFERENCES consultations (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'offered') <= (offer_expires_at IS NOT NULL))
);
-- One place per user in one queue: joining twice is answered with the existing position.
CREATE UNIQUE INDEX waitlist_one_open_per_user
    ON waitlist_entries (astrologer_id, user_id) WHERE status IN ('waiting', 'offered');
-- One offer at a time per astrologer: two processes noticing "free" at once offer once.
CREATE UNIQUE INDEX waitlist_one_offer_per_astrologer
    ON waitlist_entries (astrologer_id) WHERE status = 'offered';
-- The queue in order, for the next in line and for positions.
CREATE INDEX waitlist_queue
    ON waitlist_entries (astrologer_id, created_at, id) WHERE status IN ('waiting', 'offered');
-- The offer-expiry sweep.
CREATE INDEX waitlist_offers_due ON waitlist_entries (offer_expires_at) WHERE status = 'offered';

-- Promo codes ---------------------------------------------------------------------------------

CREATE TABLE promo_codes (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code                    text NOT NULL CHECK (code ~ '^[A-Z0-9_-]{3,32}$'),
    kind                    text NOT NULL CHECK (kind IN ('percent', 'flat', 'free_minutes')),
    value                   integer NOT NULL CHECK (value > 0),
    max_uses                integer CHECK (max_uses > 0),
    per_user                integer NOT NULL DEFAULT 1 CHECK (per_user > 0),
    valid_from              timestamptz NOT NULL DEFAULT now(),
    valid_until             timestamptz,
    first_consultation_only boolean NOT NULL DEFAULT false,
    -- Counted by one conditional UPDATE; the CHECK makes over-redemption impossible even for a
    -- statement that forgot the condition.
    used_count              integer NOT NULL DEFAULT 0,
    created_by              uuid REFERENCES users (id),
    created_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'percent' OR value <= 100),
    CHECK (valid_until IS NULL OR valid_until > valid_from),
    CHECK (used_count >= 0 AND (max_uses IS NULL OR used_count <= max_uses))
);
-- Codes are case-insensitive to users; stored upper-case, unique.
CREATE UNIQUE INDEX promo_codes_code ON promo_codes (code);

-- One row per consultation that used a code; deleted (and the count given back) when that
-- consultation closes without ever starting.
CREATE TABLE promo_redemptions (
    promo_id        uuid NOT NULL REFERENCES promo_codes (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    consultation_id uuid NOT NULL UNIQUE REFERENCES consultations (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The per-user limit counts a user's redemptions of one code.
CREATE INDEX promo_redemptions_user ON promo_redemptions (promo_id, user_id);
ALTER TABLE consultations ADD CONSTRAINT consultations_promo_fk
    FOREIGN KEY (promo_id) REFERENCES promo_codes (id);

-- Free first consultation: one per person. Each grant claims keys (`user:<id>`, `phone:<e164>`,
-- `device:<sha256 of a push token>`); the primary key refuses a second grant to the same user, to
-- the same phone re-registered, or to another account on the same device. Claims of a
-- consultation that never started are given back.
CREATE TABLE free_consultation_claims (
    claim           text PRIMARY KEY,
    consultation_id uuid NOT NULL REFERENCES consultations (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX free_consultation_claims_consultation ON free_consultation_claims (consultation_id);

-- Reviews and complaints ----------------------------------------------------------------------

-- One review per consultation (UNIQUE): a second is 409 already_reviewed even under a race.
CREATE TABLE reviews (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    consultation_id uuid NOT NULL UNIQUE REFERENCES consultations (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    astrologer_id   uuid NOT NULL REFERENCES users (id),
    rating          smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment         text CHECK (char_length(comment) <= 2000),
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- An astrologer's reviews newest first, keyset-paginated: with a million reviews this is the
-- only way the detail page and /reviews stay an index range scan.
CREATE INDEX reviews_astrologer_recent ON reviews (astrologer_id, created_at DESC, id DESC);

-- A user's request for a refund review of a consultation; one open complaint per consultation.
CREATE TABLE complaints (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    consultation_id uuid NOT NULL UNIQUE REFERENCES consultations (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    reason          text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 2000),
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'dismissed')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX complaints_open ON complaints (created_at) WHERE status = 'open';
