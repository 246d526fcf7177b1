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
    # The minute meter (billing/meter.py). A claimed meter comes back to every process after the
    # lease, so a dead process delays its sessions' next charge by at most this long.
    meter_lease_seconds: float = 10.0
    meter_batch_size: int = 500  # meters charged per ledger transaction
    meter_concurrency: int = 2  # batches in flight per web process
    meter_poll_seconds: float = 0.05  # how often an idle meter loop looks for due minutes
    meter_sweep_seconds: float = 30.0  # periodic rebuild of Redis meters from PostgreSQL
    meter_loop: bool = True  # run the meter loop in web processes
    # Automatic refunds at finalization: `cause:max_billed_minutes:percent`, cause one of
    # astrologer_ended, astrologer_disconnected, user_disconnected, any.
    auto_refund_rules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["astrologer_ended:1:100", "astrologer_disconnected:1:100"]
    )
    cancel_full_refund_hours: float = 12.0
    slot_minutes: int = 30
    # Consultations (consultations/): a late cancellation keeps this share of the booking hold;
    # an astrologer without a heartbeat for presence_ttl_seconds is offline; a waitlist offer
    # lasts waitlist_offer_seconds.
    cancel_late_fee_percent: int = 50
    presence_ttl_seconds: float = 90.0
    waitlist_offer_seconds: float = 120.0

    # Gateways.
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    razorpay_key_id: str | None = None
    razorpay_key_secret: str | None = None
    razorpay_webhook_secret: str | None = None
    razorpay_api_base: str | None = None
    test_gateway: bool | None = None
    test_gateway_delay_seconds: float = 2.0  # the test gateway "pays" this long after creation
    recharge_min_amount: int = 1_000  # ₹10.00
    recharge_max_amount: int = 10_000_000  # ₹1,00,000.00
    payout_provider: str = "local"  # local: a fake provider that pays at once

    # Files, push, real-time.
    s3_bucket: str | None = None
    aws_region: str = "ap-south-1"
    push_provider: str = "log"  # log | fcm
    fcm_endpoint: str | None = None
    fcm_project_id: str | None = None
    fcm_access_token: str | None = None
    email_provider: str = "log"  # log | ses
    email_from: str = "no-reply@astrolive.local"
    # Notification delivery (notify/, workers/notifications.py). A claim older than the lease is
    # taken over (a killed worker), so the lease must outlast one provider call's timeout.
    notify_send_timeout_seconds: float = 10.0
    notify_claim_lease_seconds: float = 30.0
    notify_retry_base_seconds: float = 2.0  # first retry after ~2 s, doubling, with jitter
    notify_retry_max_seconds: float = 300.0
    follow_online_debounce_seconds: int = 1800  # followers hear "online" once per 30 min at most
    # The worker's own Prometheus endpoint (job counts, failures, durations); 0 turns it off.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9191
    stun_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["stun:stun.l.google.com:19302"]
    )
    turn_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    turn_secret: str | None = None
    turn_ttl_seconds: int = 3600
    # Real-time layer (realtime/): see realtime/keys.py for why each default is what it is.
    chat_after_end_seconds: float = 600.0  # the astrologer may still write 10 min after the end
    realtime_heartbeat_seconds: float = 10.0  # presence / meter refresh per connection
    realtime_events_per_second: float = 20.0  # token bucket refill per connection
    realtime_event_burst: int = 60  # token bucket size per connection
    realtime_max_queued_packets: int = 2000  # slow consumer: disconnected past this many queued

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "stun_urls",
        "turn_urls",
        "jwt_previous_secrets",
        "auto_refund_rules",
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
