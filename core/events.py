"""Every server → client Socket.IO event, as a pydantic model: the one catalogue of what clients
receive, from which `realtime.asyncapi` generates the AsyncAPI document (docs/asyncapi.json).

Emit with `send(emitter, event, room)`: the model is validated where it is made, so a payload
that drifts from the contract fails in the code that built it, not in a mobile app.

Conventions (API.md "Real time"):
- ids are UUID strings; money is an integer in minor units of the wallet's currency;
- timestamps are RFC 3339 strings in UTC with a `Z` (`Timestamp`); chat and the meter's
  `started_at` carry milliseconds, the consultation object is to the second;
- rooms (`Room` below): `user:{id}` is every socket of a person; `consultation:{id}` both
  participants' sockets that joined it; `consultation:{id}:user:{id}` one participant's sockets
  in it (WebRTC signalling); `presence:{astrologer_id}` the sockets watching that astrologer
  (`presence:watch`).
- an optional field that does not apply is absent, not null (`payload` drops unset fields).

This module is a leaf (pydantic only), so that billing/ and consultations/, which emit most of
these, may import it without depending on realtime/ (DESIGN.md: db ← billing ← realtime).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

# RFC 3339, UTC, `Z`; fractional seconds optional.
Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$",
        json_schema_extra={"format": "date-time"},
    ),
]
Id = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
Money = Annotated[int, Field(description="minor units of the wallet's currency")]


class Room:
    """The rooms events go to (see the module docstring)."""

    @staticmethod
    def user(user_id: uuid.UUID | str) -> str:
        return f"user:{user_id}"

    @staticmethod
    def consultation(consultation_id: uuid.UUID | str) -> str:
        return f"consultation:{consultation_id}"

    @staticmethod
    def participant(consultation_id: uuid.UUID | str, user_id: uuid.UUID | str) -> str:
        return f"consultation:{consultation_id}:user:{user_id}"

    @staticmethod
    def presence(astrologer_id: uuid.UUID | str) -> str:
        return f"presence:{astrologer_id}"


class ServerEvent(BaseModel):
    """One server → client event. `name` is the Socket.IO event name, `rooms` where it goes (for
    the AsyncAPI document), `summary` what it means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    rooms: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        """The JSON-ready payload: unset optional fields are absent."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


class Emitter(Protocol):
    async def emit(self, event: str, data: Any, room: str) -> None: ...


async def send(emitter: Emitter, event: ServerEvent, room: str) -> None:
    """Emit `event` to `room` through a `core.services.Emitter`."""
    await emitter.emit(event.name, event.payload(), room)


# --- consultations --------------------------------------------------------------------------


class Party(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id
    name: str | None = None
    display_name: str | None = None


class Consultation(BaseModel):
    """The consultation object, as REST answers carry it (`GET /v1/consultations/{id}`). Fields
    added by later versions pass through (v1.1 `profiles` for its astrologer)."""

    model_config = ConfigDict(extra="allow")

    id: Id
    user_id: Id
    astrologer_id: Id
    type: Literal["chat", "voice", "video"]
    status: str
    end_reason: str | None = None
    rate: Money
    currency: str
    requested_at: Timestamp | None = None
    accepted_at: Timestamp | None = None
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    billed_minutes: int | None = None
    total_charged: Money | None = None


class ConsultationRequested(ServerEvent):
    name = "consultation:requested"
    rooms = ("user:{astrologer_id}",)
    summary = "A user asked this astrologer for a consultation; accept within the timeout."
    consultation: Consultation


class ConsultationUpdated(ServerEvent):
    name = "consultation:updated"
    rooms = ("user:{user_id}", "user:{astrologer_id}")
    summary = "A consultation's status changed (both participants)."
    consultation: Consultation


# --- chat -----------------------------------------------------------------------------------


class Attachment(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id
    content_type: str
    size: int
    url: str


class ChatMessage(ServerEvent):
    name = "chat:message"
    rooms = ("consultation:{consultation_id}",)
    summary = (
        "A stored message, to every socket of the consultation but the sender's, in seq order "
        "with no gap from the join on (older ones: chat:history after_seq)."
    )
    id: Id
    consultation_id: Id
    seq: int = Field(ge=1)
    sender_id: Id
    client_msg_id: str | None = None
    text: str
    sent_at: Timestamp
    attachment: Attachment | None = None


class ChatTyping(ServerEvent):
    name = "chat:typing"
    rooms = ("consultation:{consultation_id}",)
    summary = "The other participant is typing."
    consultation_id: Id
    user_id: Id


class ChatRead(ServerEvent):
    name = "chat:read"
    rooms = ("consultation:{consultation_id}",)
    summary = "The other participant has read up to `up_to_seq`."
    consultation_id: Id
    user_id: Id
    up_to_seq: int = Field(ge=0)


# --- WebRTC signalling ----------------------------------------------------------------------


class IceCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: str
    sdpMid: str | None = None  # the WebRTC field name
    sdpMLineIndex: int | None = None  # the WebRTC field name
    usernameFragment: str | None = None  # the WebRTC field name


class RtcOffer(ServerEvent):
    name = "rtc:offer"
    rooms = ("consultation:{consultation_id}:user:{other_participant_id}",)
    summary = "The other participant's SDP offer."
    consultation_id: Id
    sdp: str
    type: Literal["offer"]
    from_: Id = Field(alias="from")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RtcAnswer(ServerEvent):
    name = "rtc:answer"
    rooms = ("consultation:{consultation_id}:user:{other_participant_id}",)
    summary = "The other participant's SDP answer."
    consultation_id: Id
    sdp: str
    type: Literal["answer", "pranswer"]
    from_: Id = Field(alias="from")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RtcIce(ServerEvent):
    name = "rtc:ice"
    rooms = ("consultation:{consultation_id}:user:{other_participant_id}",)
    summary = "An ICE candidate of the other participant (null: end of candidates)."
    consultation_id: Id
    candidate: IceCandidate | None
    from_: Id = Field(alias="from")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RtcEchoStats(ServerEvent):
    name = "rtc:echo:stats"
    rooms = ("the socket running the pre-call echo test",)
    summary = "Round-trip time measured by the pre-call echo test."
    kind: Literal["audio", "video"]
    rtt_ms: float = Field(ge=0)


# --- the minute meter -----------------------------------------------------------------------


# Issue 12 (helper A): every `session:*` event goes to each participant's own room in the
# consultation, in two copies: the user's carries their money (`balance`, `minutes_left`, what
# was charged), the astrologer's the minute and what they `earned` -- never the user's money.
_SESSION_ROOMS = ("consultation:{consultation_id}:user:{user_id}",)
_USER_ONLY = "the user's copy only"
_ASTROLOGER_ONLY = "the astrologer's copy only"


class SessionStarted(ServerEvent):
    name = "session:started"
    rooms = _SESSION_ROOMS
    summary = "Both participants joined: the meter runs; minute 1 is charged now."
    consultation_id: Id
    started_at: Timestamp
    max_minutes: int | None
    rate: Money | None = Field(default=None, description=_USER_ONLY)
    balance: Money | None = Field(default=None, description=_USER_ONLY)
    minute: int | None = Field(
        default=None, description=_ASTROLOGER_ONLY + " (0: nothing charged yet)"
    )
    earned: Money | None = Field(default=None, description=_ASTROLOGER_ONLY)


class SessionTick(ServerEvent):
    name = "session:tick"
    rooms = _SESSION_ROOMS
    summary = "A minute was charged (at its start)."
    consultation_id: Id
    minute: int = Field(ge=1)
    charged: Money | None = Field(
        default=None, description=_USER_ONLY + ": total charged so far in this consultation"
    )
    amount: Money | None = Field(default=None, description=_USER_ONLY + ": this minute's charge")
    free: bool | None = Field(default=None, description=_USER_ONLY)
    balance: Money | None = Field(default=None, description=_USER_ONLY)
    minutes_left: int | None = Field(default=None, description=_USER_ONLY)
    earned: Money | None = Field(
        default=None, description=_ASTROLOGER_ONLY + ": this minute's share"
    )


class SessionLowBalance(ServerEvent):
    name = "session:low_balance"
    rooms = _SESSION_ROOMS
    summary = "Two or fewer affordable minutes remain: recharge to continue."
    consultation_id: Id
    minutes_left: int | None = Field(default=None, description=_USER_ONLY)
    minute: int | None = Field(
        default=None, description=_ASTROLOGER_ONLY + ": the last charged minute"
    )


class SessionEnded(ServerEvent):
    name = "session:ended"
    rooms = _SESSION_ROOMS
    summary = "The session ended; no further minute is charged."
    consultation_id: Id
    reason: str
    billed_minutes: int
    total_charged: Money | None = Field(default=None, description=_USER_ONLY)
    earned: Money | None = Field(
        default=None, description=_ASTROLOGER_ONLY + ": for the billed minutes"
    )


class AuthExpired(ServerEvent):
    name = "auth:expired"
    rooms = ("the socket",)
    summary = (
        "The socket's login ended (logout, block, or its access token expired; checked every "
        "SOCKET_AUTH_CHECK_SECONDS, at once on a logout or block): the server disconnects it "
        "next. Refresh the token and reconnect; `auth:refresh {token}` extends a live socket."
    )
    code: Literal["token_expired", "session_revoked", "account_blocked", "unauthorized"]


class SessionTip(ServerEvent):
    name = "session:tip"
    rooms = ("user:{astrologer_id}",)
    summary = "The user tipped the astrologer."
    consultation_id: Id
    amount: Money
    earned: Money
    currency: str


# --- presence and waitlist ------------------------------------------------------------------


class Presence(ServerEvent):
    name = "presence"
    rooms = ("presence:{astrologer_id}",)
    summary = (
        "An astrologer's status changed; sent to the sockets watching them (presence:watch), and "
        "as the current status right after presence:watch."
    )
    astrologer_id: Id
    status: Literal["online", "busy", "offline"]


class WaitlistOffer(ServerEvent):
    name = "waitlist:offer"
    rooms = ("user:{user_id}",)
    summary = "The astrologer is free and it is your turn: request before `expires_at`."
    entry_id: Id
    astrologer_id: Id
    type: Literal["chat", "voice", "video"]
    expires_at: Timestamp


class WaitlistSkipped(ServerEvent):
    name = "waitlist:skipped"
    rooms = ("user:{user_id}",)
    summary = "Your turn was skipped (e.g. the wallet could not cover the start)."
    astrologer_id: Id
    reason: str


# --- questions (issue 16, helper E) -----------------------------------------------------------


class Question(BaseModel):
    """A written question as GET /v1/questions/{id} shows it to the receiver: with `text` and, once
    given, `answer`; `profiles` only in its astrologer's copy (extra fields pass through)."""

    model_config = ConfigDict(extra="allow")

    id: Id
    user_id: Id
    astrologer_id: Id
    status: Literal["open", "answered", "expired", "cancelled"]
    price: Money
    currency: str
    answer_due_at: Timestamp
    created_at: Timestamp


class QuestionCreated(ServerEvent):
    name = "question:created"
    rooms = ("user:{astrologer_id}",)
    summary = "A user asked this astrologer a written question (its price is held)."
    question: Question


class QuestionUpdated(ServerEvent):
    name = "question:updated"
    rooms = ("user:{user_id}", "user:{astrologer_id}")
    summary = "A question was answered, cancelled or expired (each side gets its own view)."
    question: Question


CATALOGUE: tuple[type[ServerEvent], ...] = (
    ConsultationRequested,
    ConsultationUpdated,
    ChatMessage,
    ChatTyping,
    ChatRead,
    RtcOffer,
    RtcAnswer,
    RtcIce,
    RtcEchoStats,
    SessionStarted,
    SessionTick,
    SessionLowBalance,
    SessionEnded,
    AuthExpired,
    SessionTip,
    Presence,
    WaitlistOffer,
    WaitlistSkipped,
    QuestionCreated,  # issue 16
    QuestionUpdated,  # issue 16
)
BY_NAME: dict[str, type[ServerEvent]] = {e.name: e for e in CATALOGUE}
