-- 0008: the minute meter of live sessions. Redis only times the meters (a sorted set of due
-- minutes); what was started, charged, warned and ended is kept here, so a lost Redis is rebuilt
-- from these rows and any bill can be explained minute by minute. Only billing/meter.py writes
-- these two tables.

-- One row per started session. `charged_minutes` moves in the same transaction as the ledger
-- charge of that minute, so "the next minute" is never ambiguous after a crash. `stopped_at` is
-- when the meter stopped (the session's end): no minute that starts at or after it is charged.
-- The consultation itself is completed by finalization (an arq job) from these facts.
CREATE TABLE meters (
    consultation_id  uuid PRIMARY KEY REFERENCES consultations (id),
    started_at       timestamptz NOT NULL,
    -- The minute length in force when the session started: a config change (or two processes
    -- started with different settings) never re-times a running session.
    minute_seconds   double precision NOT NULL CHECK (minute_seconds > 0),
    -- NULL: no maximum but the wallet. Copied at start from the consultation / MAX_SESSION_MINUTES.
    max_minutes      integer CHECK (max_minutes > 0),
    charged_minutes  integer NOT NULL DEFAULT 0 CHECK (charged_minutes >= 0),
    -- What the wallet paid and what promotions paid (free minutes), for quick totals.
    charged_amount   bigint NOT NULL DEFAULT 0 CHECK (charged_amount >= 0),
    free_amount      bigint NOT NULL DEFAULT 0 CHECK (free_amount >= 0),
    stopped_at       timestamptz,
    stop_reason      text CHECK (stop_reason IN (
                         'user_ended', 'astrologer_ended', 'insufficient_balance',
                         'disconnected', 'max_duration')),
    -- Who caused the stop (the one who ended or who was gone), for the refund rules.
    stop_party       text CHECK (stop_party IN ('user', 'astrologer', 'system')),
    finalized_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- A stopped meter always says why; an unstopped one cannot be finalized.
    CHECK ((stopped_at IS NULL) = (stop_reason IS NULL)),
    CHECK (finalized_at IS NULL OR stopped_at IS NOT NULL),
    -- Never billed for time after the end: the last charged minute started before the stop.
    CHECK (stopped_at IS NULL OR charged_minutes = 0
           OR started_at + (charged_minutes - 1) * minute_seconds * interval '1 second'
              < stopped_at)
);
-- The recovery sweep reads running meters, and stopped ones that still need finalizing.
CREATE INDEX meters_running ON meters (started_at) WHERE stopped_at IS NULL;
CREATE INDEX meters_unfinalized ON meters (stopped_at)
    WHERE stopped_at IS NOT NULL AND finalized_at IS NULL;

-- Every meter event: start, each charged minute, low-balance warnings, the end and its reason,
-- automatic refunds. Append-only; GET /v1/consultations/{id} shows them as the bill's breakdown.
CREATE TABLE meter_events (
    id               bigserial PRIMARY KEY,
    consultation_id  uuid NOT NULL REFERENCES consultations (id),
    kind             text NOT NULL CHECK (kind IN ('start', 'charge', 'low_balance', 'end', 'refund')),
    minute           integer CHECK (minute > 0),
    -- For a charge: when the minute was due (start + (minute - 1) minutes); `at` is when it was
    -- charged, so the lag of every charge can be measured.
    due_at           timestamptz,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    amount           bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    free_amount      bigint NOT NULL DEFAULT 0 CHECK (free_amount >= 0),
    astrologer_share bigint NOT NULL DEFAULT 0 CHECK (astrologer_share >= 0),
    balance_after    bigint,
    minutes_left     integer,
    reason           text,
    details          jsonb NOT NULL DEFAULT '{}',
    CHECK (kind <> 'charge' OR (minute IS NOT NULL AND due_at IS NOT NULL))
);
-- One explanation line per charged minute (the ledger key charge:{id}:{minute} guards the money).
CREATE UNIQUE INDEX meter_events_one_charge ON meter_events (consultation_id, minute)
    WHERE kind = 'charge';
-- One start and one end per session, whatever the number of processes that raced to write them.
CREATE UNIQUE INDEX meter_events_one_start_end ON meter_events (consultation_id, kind)
    WHERE kind IN ('start', 'end');
-- The breakdown reads a consultation's events in order.
CREATE INDEX meter_events_consultation ON meter_events (consultation_id, id);

CREATE TRIGGER meter_events_immutable BEFORE UPDATE OR DELETE ON meter_events
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
