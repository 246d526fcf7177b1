-- 0013: money rules, payment states and sweeps (issue 13). Owned by billing/.

-- Earnings never negative, in the database -------------------------------------------------------
--
-- The choice (README, Money): a CHECK constraint, not a receivable account. A refund of a
-- consultation takes the astrologer's share back out of their earnings only as far as the
-- earnings balance goes (billing/refunds.py, under the earnings row lock); what was already paid
-- out is taken from platform revenue instead, so the user is always refunded and the platform, not
-- a hidden negative balance, carries the loss. A later refund of the same consultation catches up
-- on the share first (its cumulative target counts what the earlier one could not take), which is
-- the recovery from future earnings that a receivable would give, without a debt that can grow.
-- A payout can never reserve more than the balance (billing/payouts.py locks and checks too).
-- NOT VALID: enforced for every new write at once; rows written before (there should be none) are
-- reported by reconciliation (`earnings_not_negative`) instead of failing this migration.
ALTER TABLE accounts
    ADD CONSTRAINT earnings_not_negative
        CHECK (kind <> 'astrologer_earnings' OR balance >= 0) NOT VALID;

-- Payouts: an admin may reject a requested or approved payout ----------------------------------
--
-- `rejected` gives the reserved amount back to earnings (its reversal transfer), like `failed`.
ALTER TABLE payouts DROP CONSTRAINT payouts_status_check;
ALTER TABLE payouts ADD CONSTRAINT payouts_status_check
    CHECK (status IN ('requested', 'approved', 'paid', 'failed', 'rejected'));
ALTER TABLE payouts DROP CONSTRAINT payouts_check;
ALTER TABLE payouts ADD CONSTRAINT payouts_reversed_when_closed_unpaid
    CHECK ((status IN ('failed', 'rejected')) = (reversal_id IS NOT NULL));
ALTER TABLE payouts
    ADD COLUMN rejected_by uuid REFERENCES users (id),
    ADD COLUMN rejection_reason text,
    -- When the sweep last asked the provider about an approved payout (several workers: the one
    -- that moves this forward owns the row for that round).
    ADD COLUMN checked_at timestamptz;
CREATE INDEX payouts_approved ON payouts (approved_at) WHERE status = 'approved';

-- Sweeps: when each stuck item was last looked at -----------------------------------------------
--
-- The payment sweeps (workers/payments.py) claim stuck rows with FOR UPDATE SKIP LOCKED and a
-- conditional update of checked_at, so several workers never ask the gateway about the same row
-- in one round, and a row asked about recently waits for the next round.
ALTER TABLE recharges ADD COLUMN checked_at timestamptz;
ALTER TABLE card_refunds ADD COLUMN checked_at timestamptz;

-- Gateway payments that must not be credited ------------------------------------------------------
--
-- A payment the gateway captured that we did not credit: a second capture on an order already
-- paid (`extra_payment`), or a capture whose amount or currency differs from the recharge's
-- (`amount_mismatch`, `currency_mismatch`). Recorded once per gateway payment and flagged for a
-- refund to the card: the payment sweep refunds it through the gateway (`refunding`, key
-- `anomaly_refund:{id}`) until the gateway confirms (`resolved`). The money never entered the
-- ledger, so the refund moves nothing in it. Reconciliation reports every one not resolved.
CREATE TABLE payment_anomalies (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    gateway      text NOT NULL,
    payment_id   text NOT NULL,
    recharge_id  uuid NOT NULL REFERENCES recharges (id),
    kind         text NOT NULL
                 CHECK (kind IN ('extra_payment', 'amount_mismatch', 'currency_mismatch')),
    amount       bigint,
    currency     text,
    status       text NOT NULL DEFAULT 'flagged'
                 CHECK (status IN ('flagged', 'refunding', 'resolved')),
    gateway_refund_id text,
    note         text,
    checked_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    -- One record per gateway payment, whatever the number of webhooks and sweeps that see it.
    UNIQUE (gateway, payment_id)
);
CREATE INDEX payment_anomalies_open ON payment_anomalies (created_at) WHERE status <> 'resolved';
