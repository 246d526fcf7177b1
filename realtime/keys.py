"""Every Redis key and every number of the real-time layer, each with the reason for its value."""

from __future__ import annotations

import uuid

from core.events import Room

# Fan-out between web processes (and from workers): python-socketio's Redis pub/sub channel.
SIO_CHANNEL = "astrolive-sio"

# Rooms (named in core.events.Room). A connection is in `user:{id}` (every device of a person) from
# connect on, an astrologer's also in `presence:{own id}`; `presence:watch` adds `presence:{id}`
# per watched astrologer; `consultation:join` adds `consultation:{id}` (chat fan-out) and
# `consultation:{id}:user:{id}` (WebRTC signalling goes only to the other participant's sockets).


user_room = Room.user
consultation_room = Room.consultation
participant_room = Room.participant


# A live socket of a user, refreshed by the connection's heartbeat loop. The disconnect handler is
# not reliable under aiohttp (and never runs when a process dies), so liveness is a TTL, not an
# event: three missed heartbeats (REALTIME_HEARTBEAT_SECONDS each) and the key is gone.
LIVE_SOCKET_MISSES = 3


def live_socket_key(user_id: uuid.UUID | str, sid: str) -> str:
    """`rt:live:{user}:{sid}` = "1" (only its existence counts); TTL REALTIME_HEARTBEAT_SECONDS *
    LIVE_SOCKET_MISSES."""
    return f"rt:live:{user_id}:{sid}"


def live_socket_pattern(user_id: uuid.UUID | str) -> str:
    return f"rt:live:{user_id}:*"


# Payload caps, below engine.io's max_http_buffer_size (64 KiB) so that a validation error, not a
# dropped connection, answers a merely large event.
MAX_SDP_CHARS = 32_000  # a full SDP with many candidates and simulcast is ~10 KB; 3x headroom
MAX_CANDIDATE_CHARS = 1_024  # an ICE candidate line is ~100-200 chars
MAX_ID_CHARS = 64  # client_msg_id, sdpMid

# Pre-call echo test (aiortc): one per connection, and never longer than this, so a forgotten test
# does not hold server CPU and a UDP port.
ECHO_MAX_SECONDS = 60.0
# How often the echo peer polls its RTCP stats for a round-trip time to report.
ECHO_STATS_INTERVAL_SECONDS = 0.5

# Chat delivery between processes (realtime/relay.py): its own pub/sub channel, one Redis message
# per stored batch of a process, JSON {"host": sender process id, "messages": [[payload, skip]]}.
CHAT_CHANNEL = "astrolive-chat"
# How long a receiving process holds later messages while an earlier seq has not arrived before it
# reads the missing ones from PostgreSQL. Normal reordering between two processes' publishes lasts
# well under a millisecond; a gap this long means a lost publish (a process died after its commit,
# or a subscription dropped), and waiting longer only delays the messages held behind it.
CHAT_GAP_SECONDS = 0.25
# Messages held for one consultation at most while a gap is being filled: far more than two people
# type in a few seconds of a database hiccup; past it the relay skips ahead (clients fetch a jump).
CHAT_MAX_HELD = 1000
# Waiting for the chat subscription on a process's first join; Redis answers in milliseconds.
CHAT_SUBSCRIBE_TIMEOUT_SECONDS = 5.0
# Pause before subscribing again after the subscription broke (Redis restarting).
CHAT_RESUBSCRIBE_SECONDS = 0.5
