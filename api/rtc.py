"""STUN and TURN servers for WebRTC calls, with TURN credentials in coturn's REST scheme
(`use-auth-secret`): username `expiry:user_id`, credential base64(HMAC-SHA1(secret, username)).
coturn checks the HMAC with the same shared secret and refuses the username after `expiry`.

TURN relays media through our servers, which costs bandwidth: its credentials go only to a
participant of an `accepted` or `active` voice or video consultation (issue 14). Anyone else
signed in gets the STUN servers only (enough for the pre-call echo test on most networks), never a
403, so a client can always ask."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

from pydantic import Field

from api.framework import Call, Router
from api.models import Output
from core.settings import Settings

router = Router("rtc")


class IceServer(Output):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServers(Output):
    ice_servers: list[IceServer]
    ttl: int = Field(description="seconds the TURN credentials stay valid")


def turn_credentials(
    secret: str, user_id: uuid.UUID, ttl_seconds: int, now: float | None = None
) -> tuple[str, str]:
    """(username, credential) valid for `ttl_seconds` from `now`."""
    expiry = int(now if now is not None else time.time()) + ttl_seconds
    username = f"{expiry}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


# Is the caller in a call that may need a relay? One indexed probe per request.
_IN_CALL = """
SELECT EXISTS (
    SELECT 1 FROM consultations
     WHERE (user_id = $1 OR astrologer_id = $1)
       AND status IN ('accepted', 'active') AND type IN ('voice', 'video')
)
"""


def ice_servers_for(
    settings: Settings, user_id: uuid.UUID, now: float | None = None, *, turn: bool = True
) -> IceServers:
    """STUN, and TURN with fresh credentials when `turn` (the caller is in a voice/video call)."""
    servers: list[IceServer] = []
    if settings.stun_urls:
        servers.append(IceServer(urls=list(settings.stun_urls)))
    if turn and settings.turn_urls and settings.turn_secret:
        username, credential = turn_credentials(
            settings.turn_secret, user_id, settings.turn_ttl_seconds, now
        )
        servers.append(
            IceServer(urls=list(settings.turn_urls), username=username, credential=credential)
        )
    return IceServers(ice_servers=servers, ttl=settings.turn_ttl_seconds)


@router.get("/v1/rtc/ice-servers", access="authenticated", response=IceServers)
async def get_ice_servers(call: Call) -> IceServers:
    """GET /v1/rtc/ice-servers

    STUN servers, and TURN servers with credentials that expire after TURN_TTL_SECONDS. TURN is
    listed only when TURN_URLS and TURN_SECRET are set, and only to a participant of an accepted
    or active voice or video consultation; anyone else gets STUN only."""
    user_id = call.principal.user_id
    in_call = bool(await call.services.db.fetchval(_IN_CALL, user_id))
    return ice_servers_for(call.services.settings, user_id, turn=in_call)
