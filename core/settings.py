"""One `Settings` for the web and worker processes, read from the environment and `.env`.

Every variable of API.md's configuration table is here; `.env.example` documents each one.
Secrets have no public default: in development a random one is generated once and kept under
`./.data`, and production refuses to start without real ones.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Env(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    astrolive_env: Env = Env.DEVELOPMENT
    data_dir: Path = Path(".data")

    # Where the services are. Unset: a local server if one answers, else an embedded one.
    database_url: str | None = None
    redis_url: str | None = None
    db_pool_min: int = 2
    db_pool_max: int = 20

    host: str = "127.0.0.1"
    port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "json"  # json | text

    # Auth.
    jwt_secret: str | None = None
    jwt_key_id: str = "k1"
    jwt_previous_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)  # kid=secret
    jwt_issuer: str = "astrolive"
    jwt_audience: str = "astrolive-app"
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    auth_test_phones: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    default_phone_region: str = "IN"
    sms_provider: str = "console"  # console | sns
    otp_ttl_seconds: int = 300
    otp_resend_seconds: int = 30
    otp_max_per_phone_hour: int = 5
    otp_max_per_ip_hour: int = 20
    otp_max_attempts: int = 5
    auth_mode: str = "local"  # local | cognito
    cognito_region: str | None = None
    cognito_user_pool_id: str | None = None
    cognito_client_id: str | None = None
    cognito_jwks_url: str | None = None

    # Billing policy.
    currency: str = "INR"
    billing_minute_seconds: float = 60.0
    min_start_minutes: int = 5
    free_first_consultation_minutes: int = 0
    astrologer_share_percent: int = 60
    gst_percent: int = 18
    min_rate: int = 500  # ₹5.00 a minute
    max_rate: int = 100_000  # ₹1,000 a minute
    min_payout: int = 50_000
    request_timeout_seconds: float = 60.0
    disconnect_grace_seconds: float = 60.0
    max_session_minutes: int = 0  # 0: no maximum but the wallet
    cancel_full_refund_hours: float = 12.0
    slot_minutes: int = 30

    # Gateways.
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    razorpay_key_id: str | None = None
    razorpay_key_secret: str | None = None
    razorpay_webhook_secret: str | None = None
    razorpay_api_base: str | None = None
    test_gateway: bool | None = None

    # Files, push, real-time.
    s3_bucket: str | None = None
    aws_region: str = "ap-south-1"
    push_provider: str = "log"  # log | fcm
    fcm_endpoint: str | None = None
    fcm_project_id: str | None = None
    fcm_access_token: str | None = None
    email_provider: str = "log"  # log | ses
    email_from: str = "no-reply@astrolive.local"
    stun_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["stun:stun.l.google.com:19302"]
    )
    turn_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    turn_secret: str | None = None
    turn_ttl_seconds: int = 3600

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "stun_urls",
        "turn_urls",
        "jwt_previous_secrets",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("auth_test_phones", mode="before")
    @classmethod
    def _phones(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in (part.strip() for part in value.split(",") if part.strip()):
            phone, sep, code = item.rpartition(":")
            if not sep or not phone or not code.isdigit():
                raise ValueError(f"AUTH_TEST_PHONES entry {item!r} is not PHONE:CODE")
            pairs[phone] = code
        return pairs

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.test_gateway is None:
            self.test_gateway = self.astrolive_env is not Env.PRODUCTION
        if self.astrolive_env is Env.PRODUCTION:
            problems = []
            if not self.jwt_secret:
                problems.append("JWT_SECRET must be set")
            if self.sms_provider == "console":
                problems.append("SMS_PROVIDER=console is for development")
            if self.test_gateway:
                problems.append("TEST_GATEWAY is refused in production")
            if problems:
                raise ValueError("production settings: " + "; ".join(problems))
        return self

    @property
    def is_production(self) -> bool:
        return self.astrolive_env is Env.PRODUCTION

    def jwt_signing_secret(self) -> str:
        """The HS256 secret: the configured one, else one generated once and kept in `.data`."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        path.write_text(value)
        path.chmod(0o600)
        self.jwt_secret = value
        return value

    def minute_seconds(self) -> float:
        return self.billing_minute_seconds
