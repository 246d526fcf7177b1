-- 0012: live sessions made airtight (issue 12). Owned by `live/`.

-- The last presence of each participant of a session, written coarsely: at join, at the
-- disconnect of their last socket, and every few heartbeats (live/keys.py
-- PRESENCE_WRITE_EVERY_BEATS). Redis holds the exact presence; after Redis loses it, the rebuild
-- reads this table so that a session is never billed beyond a participant's last presence plus
-- the grace (before, the rebuild marked everybody "seen now" and billed the whole outage).
-- A table of its own, not columns of `meters`: the meter batch locks `meters` rows, and presence
-- writes must never wait for (or hold up) a charge.
CREATE TABLE session_presence (
    consultation_id  uuid NOT NULL REFERENCES consultations (id),
    user_id          uuid NOT NULL REFERENCES users (id),
    -- When the participant was last known present (join or heartbeat), Redis time.
    present_at       timestamptz NOT NULL,
    -- When their last socket left; NULL while connected (a later join clears it).
    gone_at          timestamptz,
    PRIMARY KEY (consultation_id, user_id)
);

-- The join timeout (JOIN_TIMEOUT_SECONDS): the sweep looks for accepted consultations that never
-- became active, oldest acceptance first.
CREATE INDEX consultations_accepted_at ON consultations (accepted_at) WHERE status = 'accepted';

-- One open instant request per user at a time (bookings have their own hold): one balance
-- covered any number of open requests before. The request use case refuses a new request while
-- the user has one requested, accepted or active (409 open_request_exists); this index settles
-- two concurrent requests (a session that is already active cannot race a new request of its
-- own user: only the user's new request could, and that is checked first).
CREATE UNIQUE INDEX consultations_one_open_instant ON consultations (user_id)
    WHERE scheduled_at IS NULL AND status IN ('requested', 'accepted');
