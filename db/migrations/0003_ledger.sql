-- 0003: the ledger's second half. Holds for scheduled bookings, the roll-up queue of the hot system
-- accounts, and one entry per account per transfer. Only billing/ledger.py and billing/holds.py
-- write these tables (and accounts, transfers, entries).

-- A posting aggregates its legs per account, so a transfer has at most one entry per account.
-- The unique index replaces the plain transfer index of 0001 (same lookups, one more guarantee).
CREATE UNIQUE INDEX entries_transfer_account ON entries (transfer_id, account_id);
DROP INDEX entries_transfer;

-- System accounts (platform revenue, promotions, ...) are touched by nearly every charge, so a
-- posting never updates their row (DESIGN.md: hot rows). Instead every statement that inserts
-- entries leaves one delta per system account here (a trigger, so no writer can forget it), and
-- billing.ledger.rollup_system_balances moves the deltas into accounts.balance in batches:
-- DELETE ... RETURNING sees only committed deltas and two roll-ups never move the same one, so no
-- entry is ever counted twice or lost, whatever the order in which postings commit.
-- Invariant (checked by reconciliation): balance + pending deltas = sum of the account's entries.
-- No foreign key: the entry that caused the delta already references the account, and a key
-- check per insert would take a share lock on the hottest rows of the database.
CREATE TABLE ledger_system_deltas (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  uuid NOT NULL,
    amount      bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One statement-level check per INSERT into entries, set-based (a hash join over the batch rather
-- than a per-row trigger call): every entry names an existing transfer and account, every
-- transfer touched sums to zero, and the system-account deltas are queued. It replaces 0001's
-- balance check and the two per-row foreign keys of entries, which cost more than half of a
-- 500-charge batch (2 x 1,500 key lookups through SPI). Nothing is lost: transfers and entries
-- are append-only (0001 triggers) and accounts cannot be deleted (below), so an entry's
-- references, checked when it is written, stay valid forever.
ALTER TABLE entries DROP CONSTRAINT entries_transfer_id_fkey;
ALTER TABLE entries DROP CONSTRAINT entries_account_id_fkey;

CREATE OR REPLACE FUNCTION entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad uuid;
BEGIN
    SELECT n.transfer_id INTO bad
      FROM new_entries n LEFT JOIN transfers t ON t.id = n.transfer_id
     WHERE t.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry of unknown transfer %', bad USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.account_id INTO bad
      FROM new_entries n LEFT JOIN accounts a ON a.id = n.account_id
     WHERE a.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry of unknown account %', bad USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- Entries are immutable, so "the entries each statement adds to a transfer sum to zero" keeps
    -- every transfer summing to zero, and needs no read of older entries (whose number grows).
    SELECT n.transfer_id INTO bad
      FROM new_entries n
     GROUP BY n.transfer_id
    HAVING sum(n.amount) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transfer % does not sum to zero', bad USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO ledger_system_deltas (account_id, amount)
    SELECT n.account_id, sum(n.amount)
      FROM new_entries n
     WHERE n.account_id IN (SELECT id FROM accounts WHERE owner_id IS NULL)
     GROUP BY n.account_id
    HAVING sum(n.amount) <> 0;
    RETURN NULL;
END $$;

-- The few system accounts, for the trigger above (a tiny index instead of a scan of every wallet).
CREATE INDEX accounts_system ON accounts (id) WHERE owner_id IS NULL;

-- Owned balances are updated on every charge; leaving a fifth of each page free lets PostgreSQL
-- keep those updates HOT (no index writes, no index bloat on the hottest rows).
ALTER TABLE accounts SET (fillfactor = 80);

-- Accounts are never deleted: entries refer to them for ever (see above). (TRUNCATE, which only
-- a database owner wiping everything would run, is left alone, as for transfers and entries.)
CREATE FUNCTION accounts_undeletable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'accounts are never deleted' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER accounts_undeletable BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_undeletable();

-- A hold reserves part of a wallet for a scheduled booking: accounts.held grows by `amount` in the
-- same transaction (under the wallet's row lock), and wallet_not_negative (balance - held >= 0)
-- then keeps anything else from spending it. A hold ends exactly once: captured (the booking's
-- money moves through a ledger transfer), released (cancelled) or expired (the sweep).
CREATE TABLE holds (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Derived from the cause (e.g. booking:{consultation_id}): a retry finds the first hold.
    idempotency_key      text NOT NULL UNIQUE,
    -- Fingerprint of what was asked; the same key with other content is a conflict.
    request_hash         text NOT NULL,
    account_id           uuid NOT NULL REFERENCES accounts (id),
    user_id              uuid NOT NULL REFERENCES users (id),
    amount               bigint NOT NULL CHECK (amount > 0),
    currency             char(3) NOT NULL,
    reason               text NOT NULL,
    consultation_id      uuid REFERENCES consultations (id),
    status               text NOT NULL DEFAULT 'open'
                         CHECK (status IN ('open', 'captured', 'released', 'expired')),
    expires_at           timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    closed_at            timestamptz,
    close_reason         text,
    -- A capture is one transfer, and one transfer captures at most one hold.
    capture_transfer_id  uuid UNIQUE REFERENCES transfers (id),
    CHECK ((status = 'open') = (closed_at IS NULL)),
    CHECK ((status = 'captured') = (capture_transfer_id IS NOT NULL))
);
-- The expiry sweep reads open holds by due time.
CREATE INDEX holds_open_expiry ON holds (expires_at) WHERE status = 'open';
-- Reconciliation sums open holds per wallet (held = sum of open holds).
CREATE INDEX holds_open_account ON holds (account_id) WHERE status = 'open';
-- Cancelling a booking finds its hold.
CREATE INDEX holds_consultation ON holds (consultation_id) WHERE consultation_id IS NOT NULL;
