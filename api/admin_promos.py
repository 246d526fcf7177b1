"""Admin: promo codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from api.framework import Call, Router
from api.models import Input, Output
from consultations import promos
from core.times import rfc3339

router = Router("admin")


INT32_MAX = 2**31 - 1


class PromoIn(Input):
    code: str = Field(pattern=r"^[A-Za-z0-9_-]{3,32}$", examples=["FIRST50"])
    kind: Literal["percent", "flat", "free_minutes"]
    # Bounded by the columns (PostgreSQL integer): issue 14, no input is a server error.
    value: int = Field(
        gt=0,
        le=INT32_MAX,
        description="percent off the rate (1-100), a flat amount in minor units, or minutes",
    )
    max_uses: int | None = Field(
        None, gt=0, le=INT32_MAX, description="total uses; null: unlimited"
    )
    per_user: int = Field(1, gt=0, le=INT32_MAX, description="uses per user")
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    first_consultation_only: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> PromoIn:
        if self.kind == "percent" and self.value > 100:
            raise ValueError("a percent promo is at most 100")
        start = self.valid_from or datetime.now(UTC)
        if self.valid_until is not None and self.valid_until <= start:
            raise ValueError("valid_until must be after valid_from (and in the future)")
        return self


class PromoOut(Output):
    id: str
    code: str
    kind: str
    value: int
    max_uses: int | None
    per_user: int
    valid_from: str | None
    valid_until: str | None
    first_consultation_only: bool
    used_count: int
    created_at: str | None

    @classmethod
    def of(cls, p: promos.Promo) -> PromoOut:
        data = p.to_public()
        for field in ("valid_from", "valid_until", "created_at"):
            value = data[field]
            data[field] = rfc3339(value) if isinstance(value, datetime) else value
        return cls(**data)


@router.post(
    "/v1/admin/promos",
    access="admin",
    body=PromoIn,
    response=PromoOut,
    status=201,
    errors={409: "promo_exists"},
)
async def create_promo(call: Call) -> PromoOut:
    """POST /v1/admin/promos

    Create a promo code (stored upper-case; users may type it in any case). Redemptions are
    counted atomically against `max_uses` and `per_user`; the creation is audited."""
    body = call.body(PromoIn)
    async with call.services.db.acquire() as conn:
        promo = await promos.create(
            conn,
            code=body.code,
            kind=body.kind,
            value=body.value,
            max_uses=body.max_uses,
            per_user=body.per_user,
            valid_from=body.valid_from,
            valid_until=body.valid_until,
            first_consultation_only=body.first_consultation_only,
            created_by=call.principal.user_id,
        )
    return PromoOut.of(promo)
