"""E-mail through Amazon SES (v2 API) with boto3, and how AWS errors are classified.

SMS goes through `notify.sms` (the sign-in flow's SNS provider), adapted in `notify.channels.sms`.

boto3 is synchronous: each call runs in a thread. boto3's standard `AWS_ENDPOINT_URL`,
`AWS_ENDPOINT_URL_SES` and `AWS_ENDPOINT_URL_SNS` point the calls elsewhere (tests: moto on
loopback). botocore retries a little itself; our job retries with backoff after that.
"""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from notify.channels.base import (
    ChannelKind,
    Message,
    PermanentSendError,
    SendResult,
    TransientSendError,
)

# Error codes AWS documents as worth retrying (throttling, capacity, internal errors).
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "Throttled",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "LimitExceededException",
    }
)


def classify_client_error(service: str, exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    reason = f"{service} {status} {code}: {error.get('Message', '')}"[:300]
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return TransientSendError(reason)
    return PermanentSendError(reason)


async def _call(service: str, fn: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await asyncio.to_thread(fn, **kwargs)
    except ClientError as exc:
        raise classify_client_error(service, exc) from exc
    except BotoCoreError as exc:  # connection refused, timeouts, endpoint errors
        raise TransientSendError(f"{service} unreachable: {exc!r}"[:300]) from exc
    return result


class SesEmail:
    kind: ChannelKind = "email"
    name = "ses"

    def __init__(self, client: Any, sender: str) -> None:
        self._client = client  # a boto3 "sesv2" client
        self._sender = sender

    async def send(self, message: Message) -> SendResult:
        answer = await _call(
            "ses",
            self._client.send_email,
            FromEmailAddress=self._sender,
            Destination={"ToAddresses": [message.target]},
            Content={
                "Simple": {
                    "Subject": {"Data": message.title, "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": message.body, "Charset": "UTF-8"}},
                }
            },
        )
        return SendResult(provider_id=answer.get("MessageId"))
