"""SMS as a notification channel, over the sign-in flow's SMS provider (`notify.sms`: console in
development, Amazon SNS in production), so there is one SMS configuration and one sender.

Only the `otp` event uses SMS, and the sign-in flow sends it itself; this adapter exists so that
SMS stands behind the same `Channel` interface as push and e-mail (and is tested as one).
"""

from __future__ import annotations

from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError

from notify.channels.aws import classify_client_error
from notify.channels.base import ChannelKind, Message, SendResult, TransientSendError


class TextSender(Protocol):
    """The part of `notify.sms.SmsProvider` a channel needs."""

    name: str

    async def send_text(self, phone: str, text: str) -> str: ...


class SmsChannel:
    kind: ChannelKind = "sms"

    def __init__(self, sender: TextSender) -> None:
        self._sender = sender
        self.name = sender.name

    async def send(self, message: Message) -> SendResult:
        try:
            message_id = await self._sender.send_text(message.target, message.body)
        except Exception as exc:  # the provider wraps AWS errors in its own SmsError
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                raise classify_client_error("sns", cause) from exc
            if isinstance(cause, BotoCoreError):
                raise TransientSendError(f"sns unreachable: {cause!r}"[:300]) from exc
            raise TransientSendError(f"sms failed: {exc!r}"[:300]) from exc
        return SendResult(provider_id=message_id)
