"""POST /v1/auth/otp, /verify, /refresh, /logout: mobile OTP sign-in (API.md "Auth")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.framework import Call, Router
from api.me import UserOut
from api.models import Input, Output
from auth import otp, sessions
from core.storage import STORAGE

router = Router("auth")


class OtpIn(Input):
    phone: str = Field(max_length=32, examples=["+91 98123 45678"])
    role: Literal["user", "astrologer"] = "user"


class OtpOut(Output):
    expires_in: int = Field(description="seconds the code is valid")
    resend_after: int = Field(description="seconds before another code may be asked for")


class VerifyIn(Input):
    phone: str = Field(max_length=32)
    code: str = Field(pattern=r"^\d{4,8}$", examples=["123456"])


class RefreshIn(Input):
    refresh_token: str = Field(min_length=16, max_length=256)


class TokensOut(Output):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105  # the OAuth token type, not a secret
    expires_in: int = Field(description="seconds the access token is valid")
    user: UserOut
    is_new_user: bool


def _tokens(call: Call, result: sessions.SignIn) -> TokensOut:
    return TokensOut(
        access_token=result.tokens.access_token,
        refresh_token=result.tokens.refresh_token,
        expires_in=result.tokens.expires_in,
        user=UserOut.of(result.user, call.request.app[STORAGE]),
        is_new_user=result.is_new_user,
    )


@router.post(
    "/v1/auth/otp",
    access="public",
    body=OtpIn,
    response=OtpOut,
    status=202,
    errors={422: "not a phone number", 429: "cooldown or hourly limit; see Retry-After"},
)
async def request_otp(call: Call) -> OtpOut:
    """POST /v1/auth/otp

    Send a sign-in code by SMS. `role` decides the role of a new account (default `user`)."""
    body = call.body(OtpIn)
    issued = await otp.request_otp(call.services, body.phone, body.role, call.client_ip())
    return OtpOut(expires_in=issued.expires_in, resend_after=issued.resend_after)


@router.post(
    "/v1/auth/verify",
    access="public",
    body=VerifyIn,
    response=TokensOut,
    errors={
        401: "invalid_otp, or otp_expired (expired, used, or burnt after 5 wrong codes)",
        429: "too many wrong codes for this phone, or from this client IP, in the hour "
        "(OTP_MAX_WRONG_PER_PHONE_HOUR, OTP_MAX_WRONG_PER_IP_HOUR); see Retry-After",
    },
)
async def verify_otp(call: Call) -> TokensOut:
    """POST /v1/auth/verify

    Exchange the code for tokens; registers the phone on its first successful verify."""
    body = call.body(VerifyIn)
    result = await otp.verify_otp(
        call.services,
        body.phone,
        body.code,
        client_ip=call.client_ip(),
        user_agent=call.request.headers.get("User-Agent"),
    )
    return _tokens(call, result)


@router.post(
    "/v1/auth/refresh",
    access="public",
    body=RefreshIn,
    response=TokensOut,
    errors={401: "unknown, expired or revoked; token_reused revokes the whole login"},
)
async def refresh(call: Call) -> TokensOut:
    """POST /v1/auth/refresh

    A new token pair; the presented refresh token stops working. Presenting an already rotated
    refresh token is 401 `token_reused` and signs that login out everywhere."""
    body = call.body(RefreshIn)
    return _tokens(call, await sessions.refresh_login(call.services, body.refresh_token))


@router.post("/v1/auth/logout", access="public", body=RefreshIn, status=204)
async def logout(call: Call) -> None:
    """POST /v1/auth/logout

    Sign out the login this refresh token belongs to: its access tokens stop working at once."""
    await sessions.logout(call.services, call.body(RefreshIn).refresh_token)
