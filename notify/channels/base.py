"""One interface for every channel: a `Message` in, a `SendResult` out, two kinds of failure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

ChannelKind = Literal["push", "sms", "email"]


@dataclass(frozen=True)
class Message:
    """One notification for one target, already in the recipient's language."""

    notification_id: uuid.UUID
    event: str
    locale: str
    title: str
    body: str
    target: str  # push token, E.164 phone or e-mail address
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    provider_id: str | None = None


class SendError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientSendError(SendError):
    """Worth trying again later: provider 5xx, throttling, timeouts, connection errors."""

    transient = True

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """Trying again cannot help. `drop_target`: the target itself is dead (an unregistered or
    invalid push token) and must be forgotten."""

    transient = False

    def __init__(self, reason: str, *, drop_target: bool = False) -> None:
        super().__init__(reason)
        self.drop_target = drop_target


@runtime_checkable
class Channel(Protocol):
    kind: ChannelKind
    name: str  # the provider: fcm, ses, sns, log

    async def send(self, message: Message) -> SendResult:
        """Send, or raise `TransientSendError` / `PermanentSendError`."""
        ...
