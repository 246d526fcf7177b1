"""One `Settings` for the web and worker processes, read from the environment and `.env`.

Every variable of API.md's configuration table is here; `.env.example` documents each one.
Secrets have no public default: in development a random one is generated once and kept under
`./.data`, and production refuses to start without real ones.
"""

from __future__ import annotations

import ipaddress
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Shortest secret production accepts (issue 14): 256 bits, what HS256 needs to be worth its name.
MIN_SECRET_BYTES = 32


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

    # Production unless told otherwise (issue 14): a deploy that forgets ASTROLIVE_ENV must not get
    # the test gateway, OTP codes in the log or a generated secret. ./dev and .env.example say
    # development.
    astrolive_env: Env = Env.PRODUCTION
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
    # Issue 17 (bookings, tickets, tips; helper C). A booking short of money keeps its slot this
    # long while the shortfall is paid; a refund ticket may be opened this many days after the
    # consultation ended; the astrologer's percent of a tip; the largest tip; what one user may tip
    # in a day (0: no daily limit); reminders this many seconds before a booking.
    booking_payment_seconds: float = 600.0
    refund_request_days: float = 7.0
    tip_share_percent: int = Field(default=90, ge=0, le=100)
    max_tip: int = Field(default=500_000, ge=100)  # ₹5,000.00
    max_tips_per_day: int = Field(default=2_000_000, ge=0)  # ₹20,000.00 a day per user
    tip_window_hours: float = 24.0  # tips are taken until this long after a session completed
    booking_reminder_offsets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["24h:86400", "15m:900"]
    )
    attachment_max_bytes: int = 10 * 1024 * 1024
    attachment_url_seconds: int = 300  # a signed download URL lives five minutes

    # Issue 18 (the newcomer's demo; helper F). `astrolive run` (./dev up) starts the demo
    # astrologer (astrolive/demo_astrologer.py) unless this is false; unset means on outside
    # production, and production refuses true. It ends each chat after this many seconds.
    demo_astrologer: bool | None = None
    demo_astrologer_session_seconds: float = Field(default=180.0, gt=0)

    # Issue 13 (money rules, payment sweeps; helper B). A session whose minutes cost the user
    # nothing (a 100 % promo) ends after this many minutes even when MAX_SESSION_MINUTES is 0.
    # The payment sweeps (workers/payments.py) ask the gateway about a recharge still pending
    # after recharge_stale_seconds (its settle job's retries are long over by then), and resubmit
    # a card refund still `requested` / a payout still `approved` after their stale seconds.
    free_session_max_minutes: int = Field(default=30, ge=1)
    recharge_stale_seconds: float = Field(default=180.0, gt=0)
    # A never-paid order is failed after this many hours.
    recharge_give_up_hours: float = Field(default=24.0, gt=0)
    refund_stale_seconds: float = Field(default=300.0, gt=0)
    payout_stale_seconds: float = Field(default=300.0, gt=0)
    payment_sweep_batch: int = Field(default=100, ge=1)

    # Issue 14 (hardening; helper D). Test phones in production only when this says so (a store
    # review account), and then with every wrong-code limit. Wrong OTP codes are counted per phone
    # per hour across codes and per client IP per hour on /v1/auth/verify.
    auth_test_phones_in_production: bool = False
    otp_max_wrong_per_phone_hour: int = Field(default=10, ge=1)
    otp_max_wrong_per_ip_hour: int = Field(default=30, ge=1)
    # Per-user and per-IP limits of costly REST routes (core/ratelimit.py); 0 turns them all off.
    rate_limits_enabled: bool = True
    rate_limit_exempt_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`; unset: /metrics answers 404.
    metrics_token: str | None = None
    # rtc:echo (the server's own WebRTC peer for the pre-call test): at most this many at once per
    # user and per process.
    rtc_echo_max_per_user: int = Field(default=1, ge=0)
    rtc_echo_max_per_process: int = Field(default=20, ge=0)
    # A verified astrologer raising a rate by more than this percent goes back to review.
    rate_review_step_percent: int = Field(default=20, ge=0)

    # Issue 16 (birth profiles, questions, encryption at rest; helper E). Personal data keys
    # (core/crypto.py): `id:base64key,...`, the first encrypts; with KMS_KEY_ID the values are
    # data keys wrapped by that KMS key. Unset in development: a key kept in ./.data/data_keys.
    data_keys: str | None = None
    kms_key_id: str | None = None
    # A consultation's frozen birth profiles stay visible to its astrologer this long after its end.
    profile_visible_days: float = Field(default=7.0, ge=0)
    # An open question not answered within this many hours expires (fractional: tests use seconds).
    question_answer_hours: float = Field(default=48.0, gt=0)
    question_min_price: int = Field(default=500, ge=1)  # rates.question is at least ₹5.00 (API.md)
    # The e-mail verification link lives this long; it is signed with the JWT secret.
    email_verify_ttl_seconds: int = Field(default=48 * 3600, ge=60)

    # Issue 12 (live sessions; helper A). An accepted consultation that nobody starts within
    # JOIN_TIMEOUT_SECONDS is `missed` (hold released, astrologer free); an open socket re-checks
    # its login every SOCKET_AUTH_CHECK_SECONDS (logout, block and token expiry end it; a
    # revocation also kicks it at once). Fractional values are allowed (tests run them in ms).
    join_timeout_seconds: float = Field(default=120.0, gt=0)
    socket_auth_check_seconds: float = Field(default=30.0, gt=0)

    @field_validator(
        "rate_limit_exempt_ips",
        "cors_origins",
        "trusted_proxies",
        "stun_urls",
        "turn_urls",
        "jwt_previous_secrets",
        "auto_refund_rules",
        "booking_reminder_offsets",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("rate_limit_exempt_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        # Checked at start (issue 14): a typo here would otherwise fail every request it is read by.
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR range") from exc
        return value

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
    def _live_session_rules(self) -> Settings:
        """Settings the live session cannot work with are refused at start (issue 12)."""
        problems = []
        if self.realtime_heartbeat_seconds <= 0:
            problems.append(
                "REALTIME_HEARTBEAT_SECONDS must be > 0 (presence of a participant whose process"
                " died is known only from missed heartbeats)"
            )
        if self.disconnect_grace_seconds < 0:
            problems.append("DISCONNECT_GRACE_SECONDS must be >= 0")
        if self.billing_minute_seconds <= 0:
            problems.append("BILLING_MINUTE_SECONDS must be > 0")
        if self.meter_lease_seconds <= 0:
            problems.append("METER_LEASE_SECONDS must be > 0 (a claimed meter must come back)")
        if self.socket_auth_check_seconds > self.access_token_ttl_seconds:
            problems.append(
                "SOCKET_AUTH_CHECK_SECONDS must not exceed ACCESS_TOKEN_TTL_SECONDS (a socket"
                " would outlive the token it connected with by more than one check)"
            )
        if problems:
            raise ValueError("live session settings that cannot work: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.test_gateway is None:
            self.test_gateway = self.astrolive_env is not Env.PRODUCTION
        if self.astrolive_env is Env.PRODUCTION:
            problems = self.production_problems()
            if problems:
                raise ValueError(
                    "ASTROLIVE_ENV=production (the default) refuses these settings: "
                    + "; ".join(problems)
                    + ". Fix them, or set ASTROLIVE_ENV=development on a development machine."
                )
        return self

    def production_problems(self) -> list[str]:
        """What production refuses: generated or short secrets, development-only services."""
        problems = []
        if not self.jwt_secret:
            problems.append("JWT_SECRET must be set (a generated secret is for development)")
        elif len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            problems.append(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        for item in self.jwt_previous_secrets:
            if len(item.partition("=")[2].encode()) < MIN_SECRET_BYTES:
                problems.append(f"JWT_PREVIOUS_SECRETS entries need {MIN_SECRET_BYTES}+ bytes")
                break
        for name in ("turn_secret", "metrics_token"):
            value = getattr(self, name)
            if value is not None and len(value.encode()) < MIN_SECRET_BYTES:
                problems.append(f"{name.upper()} must be at least {MIN_SECRET_BYTES} bytes")
        if self.sms_provider == "console":
            problems.append("SMS_PROVIDER=console is for development (it logs OTP codes)")
        if self.test_gateway:
            problems.append("TEST_GATEWAY is refused in production (it credits wallets for free)")
        if self.demo_astrologer:  # issue 18: a bot that accepts every request
            problems.append("DEMO_ASTROLOGER is for development")
        if not self.data_keys:  # issue 16: personal data needs real keys (core/crypto.py)
            problems.append("DATA_KEYS must be set (a generated data key is for development)")
        if self.auth_test_phones and not self.auth_test_phones_in_production:
            problems.append(
                "AUTH_TEST_PHONES is refused in production unless "
                "AUTH_TEST_PHONES_IN_PRODUCTION=true"
            )
        return problems

    @property
    def is_production(self) -> bool:
        return self.astrolive_env is Env.PRODUCTION

    @property
    def demo_astrologer_on(self) -> bool:
        """Whether `astrolive run` starts the demo astrologer (issue 18)."""
        if self.demo_astrologer is None:
            return not self.is_production
        return self.demo_astrologer and not self.is_production

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
