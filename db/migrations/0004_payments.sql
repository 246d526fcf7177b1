-- 0004: payments. Wallet recharges through the gateways, the gateway events we received, card
-- refunds of recharges, consultation refunds to the wallet and astrologer payouts. Only
-- billing/recharges.py, billing/refunds.py and billing/payouts.py write these tables; every money
-- movement itself is a ledger transfer (billing/ledger.py).

-- A wallet recharge: what the user asked for, what the gateway was told, and how it ended.
-- `total` (what the user pays) = amount + tax; the wallet gets amount + bonus.
CREATE TABLE recharges (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES users (id),
    gateway             text NOT NULL CHECK (gateway IN ('stripe', 'razorpay', 'test')),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'succeeded', 'failed')),
    amount              bigint NOT NULL CHECK (amount > 0),
    bonus               bigint NOT NULL DEFAULT 0 CHECK (bonus >= 0),
    tax                 bigint NOT NULL DEFAULT 0 CHECK (tax >= 0),
    total               bigint NOT NULL,
    currency            char(3) NOT NULL DEFAULT 'INR',
    pack_id             uuid,
    -- The gateway's object: a Stripe PaymentIntent id, a Razorpay order id, a test order id.
    gateway_order_id    text,
    client_secret       text,
    -- The payment that settled it; the ledger key is recharge:{gateway}:{gateway_payment_id}.
    gateway_payment_id  text,
    transfer_id         uuid REFERENCES transfers (id),
    failure_reason      text,
    -- Sent back to the card so far (amount part, tax excluded); never more than was credited.
    refunded            bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    settled_at          timestamptz,
    CHECK (total = amount + tax),
    -- Succeeded means credited: the two are set in the same transaction.
    CHECK ((status = 'succeeded') = (transfer_id IS NOT NULL)),
    CHECK (refunded >= 0 AND refunded <= amount),
    CHECK (refunded = 0 OR status = 'succeeded')
);
-- One gateway object is one recharge: webhooks find their recharge through it.
CREATE UNIQUE INDEX recharges_gateway_order ON recharges (gateway, gateway_order_id)
    WHERE gateway_order_id IS NOT NULL;
-- One gateway payment credits one recharge, whatever the number of deliveries (the dedupe id).
CREATE UNIQUE INDEX recharges_gateway_payment ON recharges (gateway, gateway_payment_id)
    WHERE gateway_payment_id IS NOT NULL;
CREATE INDEX recharges_user_recent ON recharges (user_id, created_at DESC, id DESC);
-- Reconciliation and the settle sweep look at what is still open.
CREATE INDEX recharges_pending ON recharges (created_at) WHERE status = 'pending';

-- Every verified gateway event, once per event id: the audit trail of what the gateway told us,
-- and the "gateway successes" side of reconciliation.
CREATE TABLE payment_events (
    gateway      text NOT NULL,
    event_id     text NOT NULL,
    type         text NOT NULL,
    recharge_id  uuid REFERENCES recharges (id),
    payment_id   text,
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, event_id)
);
CREATE INDEX payment_events_recharge ON payment_events (recharge_id) WHERE recharge_id IS NOT NULL;

-- A refund of (part of) a recharge back to the card. The wallet is debited when it is requested
-- (so the money cannot be spent twice); the arq job process_refund calls the gateway with the
-- fixed key card_refund:{id}; if the gateway finally fails, the money goes back to the wallet.
CREATE TABLE card_refunds (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recharge_id        uuid NOT NULL REFERENCES recharges (id),
    amount             bigint NOT NULL CHECK (amount > 0),   -- taken from the wallet's cash part
    bonus              bigint NOT NULL DEFAULT 0 CHECK (bonus >= 0),  -- bonus clawed back
    tax                bigint NOT NULL DEFAULT 0 CHECK (tax >= 0),    -- GST given back
    status             text NOT NULL DEFAULT 'requested'
                       CHECK (status IN ('requested', 'submitted', 'succeeded', 'failed')),
    gateway_refund_id  text,
    failure_reason     text,
    reason             text NOT NULL,
    actor_id           uuid REFERENCES users (id),
    transfer_id        uuid NOT NULL REFERENCES transfers (id),
    reversal_id        uuid REFERENCES transfers (id),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- A failed card refund has put the money back into the wallet, and only then.
    CHECK ((status = 'failed') = (reversal_id IS NOT NULL))
);
CREATE INDEX card_refunds_recharge ON card_refunds (recharge_id);
CREATE INDEX card_refunds_open ON card_refunds (created_at) WHERE status IN ('requested', 'submitted');

-- Per consultation: what the user was charged and what was refunded so far. Refunds lock this row
-- (INSERT ... ON CONFLICT DO UPDATE) so concurrent partial refunds queue up, and the CHECK is the
-- last word on "never more than was charged".
CREATE TABLE consultation_refund_totals (
    consultation_id  uuid PRIMARY KEY REFERENCES consultations (id),
    charged          bigint NOT NULL CHECK (charged >= 0),
    refunded         bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    CHECK (refunded <= charged)
);

-- One refund of a consultation to the wallet. `key` derives from its cause (an admin request's
-- Idempotency-Key, an automatic rule's name), so a retry makes no second refund.
CREATE TABLE consultation_refunds (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key              text NOT NULL UNIQUE,
    consultation_id  uuid NOT NULL REFERENCES consultations (id),
    user_id          uuid NOT NULL REFERENCES users (id),
    amount           bigint NOT NULL CHECK (amount > 0),
    requested        bigint,  -- what was asked (NULL: everything left), for replay matching
    earnings_reversed bigint NOT NULL DEFAULT 0 CHECK (earnings_reversed >= 0),
    reason           text NOT NULL,
    actor_id         uuid REFERENCES users (id),
    transfer_id      uuid NOT NULL REFERENCES transfers (id),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consultation_refunds_consultation ON consultation_refunds (consultation_id);

-- Astrologer payouts. The amount is moved out of earnings into payouts_clearing when requested
-- (reserved: it cannot be requested twice), paid by the payout provider after admin approval, and
-- moved back if the payout fails.
CREATE TABLE payouts (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    astrologer_id  uuid NOT NULL REFERENCES users (id),
    amount         bigint NOT NULL CHECK (amount > 0),
    currency       char(3) NOT NULL DEFAULT 'INR',
    status         text NOT NULL DEFAULT 'requested'
                   CHECK (status IN ('requested', 'approved', 'paid', 'failed')),
    reserve_id     uuid NOT NULL REFERENCES transfers (id),
    reversal_id    uuid REFERENCES transfers (id),
    provider       text,
    provider_ref   text,
    failure_reason text,
    approved_by    uuid REFERENCES users (id),
    approved_at    timestamptz,
    paid_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'failed') = (reversal_id IS NOT NULL))
);
-- One pending payout per astrologer at a time: the database refuses a second one.
CREATE UNIQUE INDEX payouts_one_pending ON payouts (astrologer_id)
    WHERE status IN ('requested', 'approved');
CREATE INDEX payouts_astrologer_recent ON payouts (astrologer_id, created_at DESC, id DESC);
CREATE INDEX payouts_recent ON payouts (created_at DESC, id DESC);
