"""Wallet: balance, statement, recharge packs and recharges (API.md "Wallet and payments")."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from api.framework import Call, Router
from api.models import Input, ListQuery, Output, Page, encode_cursor, int_cursor
from billing import recharges, rules, statements
from billing.ledger import wallet_balance
from billing.recharges import Recharge
from core import ratelimit

router = Router("wallet")


class WalletOut(Output):
    balance: int = Field(description="minor units; what can be spent is balance - held")
    held: int = Field(description="reserved for scheduled bookings")
    currency: str


class TransactionOut(Output):
    id: uuid.UUID
    kind: str = Field(examples=["recharge", "bonus", "consultation_charge", "refund"])
    amount: int = Field(description="signed: + into the wallet, - out of it")
    balance_after: int | None
    consultation_id: uuid.UUID | None = None
    created_at: datetime


class PackOut(Output):
    id: uuid.UUID
    amount: int = Field(description="credited to the wallet")
    bonus: int = Field(description="credited on top, free")
    tax: int = Field(description="GST added to what is paid")
    total: int = Field(description="what the user pays: amount + tax")


class RechargeIn(Input):
    amount: int | None = Field(None, gt=0, description="minor units; or give pack_id")
    pack_id: uuid.UUID | None = None
    gateway: Literal["stripe", "razorpay", "test"]

    @model_validator(mode="after")
    def _one_of(self) -> RechargeIn:
        if (self.amount is None) == (self.pack_id is None):
            raise ValueError("give exactly one of amount or pack_id")
        return self


class RechargeOut(Output):
    id: uuid.UUID
    status: Literal["pending", "succeeded", "failed"]
    amount: int
    bonus: int
    tax: int
    total: int
    currency: str
    gateway: str
    client_secret: str | None = Field(None, description="Stripe: confirm the PaymentIntent")
    order_id: str | None = Field(None, description="Razorpay: open checkout with this order")
    key_id: str | None = Field(None, description="Razorpay: the key id for checkout")
    failure_reason: str | None = None
    created_at: datetime
    settled_at: datetime | None = None


def recharge_out(recharge: Recharge, razorpay_key_id: str | None = None) -> RechargeOut:
    return RechargeOut(
        id=recharge.id,
        status=recharge.status,  # type: ignore[arg-type]  # the CHECK constraint limits it
        amount=recharge.amount,
        bonus=recharge.bonus,
        tax=recharge.tax,
        total=recharge.total,
        currency=recharge.currency,
        gateway=recharge.gateway,
        client_secret=recharge.client_secret,
        order_id=recharge.gateway_order_id,
        key_id=razorpay_key_id if recharge.gateway == "razorpay" else None,
        failure_reason=recharge.failure_reason,
        created_at=recharge.created_at,
        settled_at=recharge.settled_at,
    )


@router.get("/v1/wallet", access="user", response=WalletOut)
async def get_wallet(call: Call) -> WalletOut:
    """GET /v1/wallet

    The caller's wallet balance and what is held for bookings."""
    currency = call.services.settings.currency
    async with call.services.db.acquire() as conn:
        balance, held = await wallet_balance(conn, call.principal.user_id, currency)
    return WalletOut(balance=balance, held=held, currency=currency)


@router.get(
    "/v1/wallet/transactions", access="user", query=ListQuery, response=Page[TransactionOut]
)
async def list_transactions(call: Call) -> Page[TransactionOut]:
    """GET /v1/wallet/transactions

    The wallet's ledger lines, newest first, each with the balance right after it."""
    query = call.query(ListQuery)
    before = int_cursor(query.cursor)
    found = await statements.lines(
        call.services.db,
        kind="user_wallet",
        owner_id=call.principal.user_id,
        currency=call.services.settings.currency,
        before=before,
        limit=query.limit + 1,
    )
    items = [TransactionOut.model_validate(line) for line in found[: query.limit]]
    more = len(found) > query.limit
    return Page(
        items=items, next_cursor=encode_cursor(found[query.limit - 1].cursor) if more else None
    )


@router.get("/v1/recharge-packs", access="public", response=list[PackOut])
async def list_packs(call: Call) -> list[PackOut]:
    """GET /v1/recharge-packs

    The recharge packs, with the GST added to each and the total to pay."""
    gst = call.services.settings.gst_percent
    out = []
    for pack in recharges.RECHARGE_PACKS:
        q = rules.recharge_quote(pack.amount, gst, pack.bonus)
        out.append(PackOut(id=pack.id, amount=q.amount, bonus=q.bonus, tax=q.tax, total=q.total))
    return out


@router.post(
    "/v1/wallet/recharges",
    access="user",
    body=RechargeIn,
    response=RechargeOut,
    status=201,
    idempotent=True,
    errors={422: "bad amount, unknown pack or gateway not enabled", 502: "gateway unavailable"},
    rate_limit=ratelimit.RECHARGE,
)
async def create_recharge(call: Call) -> RechargeOut:
    """POST /v1/wallet/recharges

    Start a recharge: a pending recharge and the gateway's payment object. Honours
    Idempotency-Key. The wallet is credited when the gateway confirms the payment."""
    body = call.body(RechargeIn)
    recharge = await recharges.create_recharge(
        call.services,
        user_id=call.principal.user_id,
        gateway=body.gateway,
        amount=body.amount,
        pack_id=body.pack_id,
    )
    return recharge_out(recharge, call.services.settings.razorpay_key_id)


@router.get("/v1/wallet/recharges/{id}", access="user", response=RechargeOut)
async def get_recharge(call: Call) -> RechargeOut:
    """GET /v1/wallet/recharges/{id}

    One of the caller's recharges: pending, succeeded or failed."""
    recharge = await recharges.get_recharge_of(
        call.services.db, call.principal.user_id, call.uuid("id")
    )
    return recharge_out(recharge, call.services.settings.razorpay_key_id)
