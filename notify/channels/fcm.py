"""Push through Firebase Cloud Messaging's HTTP v1 API.

`POST {FCM_ENDPOINT}/v1/projects/{FCM_PROJECT_ID}/messages:send` with a bearer token and
`{"message": {"token", "notification": {title, body}, "data", "android", "apns"}}`. The endpoint
is configurable so tests (and staging) talk to a server on loopback.

Errors, as FCM documents them: UNREGISTERED (404) and an INVALID_ARGUMENT about the token (400)
or SENDER_ID_MISMATCH (403) mean the token is dead: permanent, drop the device. QUOTA_EXCEEDED
(429), UNAVAILABLE (503) and INTERNAL (500) are transient, honouring Retry-After. A 401 (expired
or wrong credentials) is treated as transient so that fixing the credentials loses nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from notify.channels.base import (
    ChannelKind,
    Message,
    PermanentSendError,
    SendResult,
    TransientSendError,
)

DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
TokenSource = Callable[[], Awaitable[str]]
_DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})


def static_token(token: str) -> TokenSource:
    async def get() -> str:
        return token

    return get


class FcmPush:
    kind: ChannelKind = "push"
    name = "fcm"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        project_id: str,
        token: TokenSource,
        endpoint: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._http = http
        self._token = token
        base = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        # FCM_ENDPOINT is the API's base URL, or the whole send URL when it ends in messages:send.
        is_full = base.endswith("/messages:send")
        self.url = base if is_full else f"{base}/v1/projects/{project_id}/messages:send"
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    @staticmethod
    def payload(message: Message) -> dict[str, Any]:
        """The FCM v1 message. The notification id is the collapse key / tag, so a message that
        is sent twice (a worker killed between send and mark) replaces itself on the phone."""
        tag = str(message.notification_id)
        data = {"notification_id": tag, "event": message.event, **message.data}
        return {
            "message": {
                "token": message.target,
                "notification": {"title": message.title, "body": message.body},
                "data": {k: str(v) for k, v in data.items()},
                "android": {"collapse_key": tag, "notification": {"tag": tag}},
                "apns": {"headers": {"apns-collapse-id": tag[:64]}},
                "webpush": {"headers": {"Topic": tag.replace("-", "")[:32]}},
            }
        }

    async def send(self, message: Message) -> SendResult:
        headers = {"Authorization": f"Bearer {await self._token()}"}
        try:
            async with self._http.post(
                self.url, json=self.payload(message), headers=headers, timeout=self._timeout
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                try:
                    body: Any = await resp.json(content_type=None)
                except ValueError:
                    body = None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransientSendError(f"fcm unreachable: {exc!r}") from exc
        if status == 200:
            name = body.get("name") if isinstance(body, dict) else None
            return SendResult(provider_id=str(name) if name else None)
        raise classify(status, body, retry_after)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error_code(body: Any) -> tuple[str, str, bool]:
    """(FCM error code, message, whether a field violation names the token) of an error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", "", False
    code = str(error.get("status") or "")
    about_token = False
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("errorCode"):
            code = str(detail["errorCode"])
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and "token" in str(violation.get("field", "")):
                about_token = True
    message = str(error.get("message") or "")
    if "registration token" in message.lower():
        about_token = True
    return code, message, about_token


def classify(status: int, body: Any, retry_after: float | None = None) -> Exception:
    code, message, about_token = _error_code(body)
    reason = f"fcm {status} {code or 'error'}: {message}".strip()[:300]
    if status == 429 or status >= 500 or status == 401 or code in ("UNAVAILABLE", "INTERNAL"):
        return TransientSendError(reason, retry_after)
    if code in _DEAD_TOKEN_CODES or status == 404:
        return PermanentSendError(reason, drop_target=True)
    if code == "INVALID_ARGUMENT" and about_token:
        return PermanentSendError(reason, drop_target=True)
    return PermanentSendError(reason)
