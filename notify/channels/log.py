"""The development channel: each message is written to the log instead of being sent."""

from __future__ import annotations

import logging

from notify.channels.base import ChannelKind, Message, SendResult

log = logging.getLogger("astrolive.notify.outbox")


class LogChannel:
    name = "log"

    def __init__(self, kind: ChannelKind) -> None:
        self.kind: ChannelKind = kind

    async def send(self, message: Message) -> SendResult:
        log.info(
            "%s to %s: %s — %s",
            self.kind,
            _mask(message.target),
            message.title,
            message.body,
            extra={"notification_id": str(message.notification_id), "event": message.event},
        )
        return SendResult(provider_id=f"log:{message.notification_id}")


def _mask(target: str) -> str:
    """Enough of a token, phone or address to recognise it in a log, not to reuse it."""
    return target if len(target) <= 8 else target[:4] + "…" + target[-4:]
