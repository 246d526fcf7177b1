-- 0007: notifications. The in-app inbox, the devices that receive push, the delivery state of
-- every notification on every channel, and who follows which astrologer. Only `notify/` writes
-- these tables.

-- Where e-mail notifications go. Optional: most people sign in with their phone only. IF NOT
-- EXISTS because a profile capability may add the same column; whoever comes first defines it.
ALTER TABLE users ADD COLUMN IF NOT EXISTS email text
    CHECK (char_length(email) <= 254 AND email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$');

-- The inbox: one row per thing a person was told. Title and body are rendered in the person's
-- language when the notification is made, so the inbox shows exactly what the push said.
CREATE TABLE notifications (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event       text NOT NULL CHECK (event ~ '^[a-z_]{1,64}$'),
    -- Derived from the cause (`consultation_missed:{consultation_id}`): the same cause reported
    -- twice (a retried job, two processes racing) makes one notification, not two.
    key         text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 200),
    locale      text NOT NULL CHECK (locale IN ('en', 'hi')),
    title       text NOT NULL,
    body        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    read_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, key)
);
-- The inbox is read newest first with keyset pagination on (created_at, id).
CREATE INDEX notifications_inbox ON notifications (user_id, created_at DESC, id DESC);
-- The unread count is asked on every inbox load; a partial index keeps it to the unread rows.
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;

-- Push registrations. A token identifies one app install; when it shows up under another account
-- (someone signed in as another person on the same phone), it moves: UNIQUE on the token.
CREATE TABLE devices (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform      text NOT NULL CHECK (platform IN ('android', 'ios', 'web')),
    push_token    text NOT NULL UNIQUE CHECK (char_length(push_token) BETWEEN 1 AND 4096),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);
-- Fan-out to every device of a person when a notification is made.
CREATE INDEX devices_user ON devices (user_id);

-- Delivery state, one row per notification per channel per target (a person with two phones has
-- two push rows). `sending` is a claim: the worker that flipped queued -> sending with a
-- conditional UPDATE is the only one that sends; a claim older than the lease (a killed worker)
-- may be taken over. `attempts` counts claims and fences late writers.
CREATE TABLE notification_deliveries (
    id               bigserial PRIMARY KEY,
    notification_id  uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel          text NOT NULL CHECK (channel IN ('push', 'sms', 'email')),
    target           text NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Why it failed (permanent), or the last transient error while it waits for a retry.
    reason           text,
    provider_id      text,
    claimed_at       timestamptz,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- At most one delivery of a notification per channel and target, whatever runs twice.
    UNIQUE (notification_id, channel, target),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
    CHECK (status <> 'sending' OR claimed_at IS NOT NULL)
);
-- The sweep finds deliveries whose job was never enqueued (a crash right after the commit).
CREATE INDEX notification_deliveries_pending ON notification_deliveries (created_at)
    WHERE status IN ('queued', 'sending');

-- Who follows which astrologer, to tell them when the astrologer comes online.
CREATE TABLE follows (
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    astrologer_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, astrologer_id),
    CHECK (user_id <> astrologer_id)
);
-- Fan-out pages through an astrologer's followers in user_id order.
CREATE INDEX follows_astrologer ON follows (astrologer_id, user_id);
