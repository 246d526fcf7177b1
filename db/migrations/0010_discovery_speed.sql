-- 0010: `online=true` discovery as one SQL round trip. Owned by `consultations/presence.py`.
--
-- Presence lives in Redis (consultations/keys.py); `presence:listed` holds the astrologers whose
-- last published status is online or busy. `GET /v1/astrologers?online=true` used to read that
-- set (SMEMBERS, a UUID parse of every member) and send it back to PostgreSQL as a
-- `user_id = ANY($n)` array on every request: with 1,000 astrologers online that cost more than
-- the rest of the request (about 2 ms of Python plus 1 ms of planning a 1,000-element array).
-- This table mirrors the set, so the listing joins it instead (an index probe per scanned row).
--
-- It is a cache of Redis, not a second truth: `presence.publish` inserts or deletes a row when an
-- astrologer's published status crosses online/busy <-> offline, and the presence sweep (every
-- few seconds) makes the table equal to the set again, so a lost write or a lost Redis is repaired
-- within one sweep. The listing still reads each page's exact statuses from Redis and drops the
-- few that went offline since (as it did with the set).
CREATE TABLE astrologer_presence_listed (
    -- Deleting a user removes their row; only astrologers ever publish a status.
    astrologer_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- When the row was written, for whoever debugs a disagreement with Redis.
    listed_at     timestamptz NOT NULL DEFAULT now()
);
