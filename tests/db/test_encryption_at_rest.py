"""Personal data at rest: a dump of the database after a session with birth profiles, chat and a
question shows none of their texts; `rotate-data-key` re-encrypts everything while chat traffic
runs, losing nothing; legacy plaintext is encrypted by the rotation.

Slow-ish (a pg_dump subprocess and a CLI run): about 5 s."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from astrolive.data_keys import rotate_all
from consultations import chat
from core import crypto
from core.settings import Settings
from tests.conftest import make_settings
from tests.factories import auth, make_user
from tests.questions.support import question_pair
from tests.realtime.support import make_consultation

Client = TestClient[Any, Any]

K1 = "k1:" + base64.b64encode(b"\x01" * 32).decode()
K2 = "k2:" + base64.b64encode(b"\x02" * 32).decode()


def _dump(database_url: str) -> str:
    done = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", database_url],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout.decode("utf-8", errors="replace")


async def test_a_database_dump_shows_none_of_the_personal_texts(
    client: Client, db: Any, settings: Settings, database_url: str
) -> None:
    marker = uuid.uuid4().hex[:8]
    texts = {
        "self_place": f"Pune-{marker}",
        "profile_name": f"Meera-{marker}",
        "profile_place": f"Nashik-{marker}",
        "chat": f"my-secret-{marker}",
        "question": f"Will-I-marry-{marker}",
        "answer": f"Yes-in-spring-{marker}",
    }
    user, astrologer = await question_pair(db)
    headers = await auth(db, settings, user)
    resp = await client.patch(
        "/v1/me",
        json={
            "birth_date": "1991-02-03",
            "birth_time": "07:15",
            "birth_place": texts["self_place"],
        },
        headers=headers,
    )
    assert resp.status == 200
    resp = await client.post(
        "/v1/me/profiles",
        json={
            "name": texts["profile_name"],
            "relation": "spouse",
            "birth_date": "1992-05-06",
            "birth_place": texts["profile_place"],
        },
        headers=headers,
    )
    assert resp.status == 201
    spouse = (await resp.json())["id"]
    cid = await make_consultation(db, user, astrologer)
    await chat.send_message(db, cid, user.id, "m1", texts["chat"], after_end_seconds=0)
    resp = await client.post(
        "/v1/questions",
        json={
            "astrologer_id": str(astrologer.id),
            "text": texts["question"],
            "profile_ids": [spouse],
        },
        headers=headers,
    )
    assert resp.status == 201
    qid = (await resp.json())["id"]
    resp = await client.post(
        f"/v1/questions/{qid}/answer",
        json={"text": texts["answer"]},
        headers=await auth(db, settings, astrologer),
    )
    assert resp.status == 200
    # Everything reads back in the clear through the API...
    got = await (await client.get(f"/v1/questions/{qid}", headers=headers)).json()
    assert (got["text"], got["answer"]) == (texts["question"], texts["answer"])
    [message] = await chat.history(db, cid, 0)
    assert message.text == texts["chat"]
    me = await (await client.get("/v1/me", headers=headers)).json()
    assert me["birth_place"] == texts["self_place"]
    # ...and none of it is in the dump (the marker is; it proves the dump has the rows).
    dump = await asyncio.to_thread(_dump, database_url)
    assert str(user.id) in dump
    assert [name for name, text in texts.items() if text in dump] == []
    assert marker not in dump
    assert "1991-02-03" not in dump  # birth dates too


async def test_rotation_while_chat_traffic_runs_loses_nothing(
    database_url: str, redis_url: str, tmp_path: Any, db: Any
) -> None:
    """Old processes (k1 first, k2 known) keep writing while the rotation (k2 first) runs in
    batches; every message stays readable at every step, none is lost, and a second pass after
    the processes switched to k2 leaves nothing under k1."""
    old = crypto.from_settings(
        make_settings(database_url, redis_url, tmp_path, data_keys=f"{K1},{K2}")
    )
    new = crypto.from_settings(
        make_settings(database_url, redis_url, tmp_path, data_keys=f"{K2},{K1}")
    )
    crypto.use(old)
    user = await make_user(db)
    _, astrologer = await question_pair(db)
    cid = await make_consultation(db, user, astrologer)
    writer = chat.ChatWriter(db, after_end_seconds=0, on_stored=lambda _: None)
    sent: list[str] = []

    async def send(n: int) -> None:
        text = f"message {n}"
        await writer.send(cid, user.id if n % 2 else astrologer.id, f"c{n}", text)
        sent.append(text)

    # Written before the rotation: under k1, plus two legacy plaintext rows (before encryption).
    await asyncio.gather(*(send(n) for n in range(40)))
    await db.execute(
        """
        INSERT INTO chat_counters (consultation_id, last_seq) VALUES ($1, 42)
        ON CONFLICT (consultation_id) DO UPDATE SET last_seq = 42
        """,
        cid,
    )
    for seq in (41, 42):
        await db.execute(
            "INSERT INTO chat_messages (consultation_id, seq, sender_id, client_msg_id, body) "
            "VALUES ($1, $2, $3, $4, $5)",
            cid, seq, user.id, f"legacy{seq}", f"legacy text {seq}",
        )  # fmt: skip
    sent += ["legacy text 41", "legacy text 42"]
    counter = iter(range(100, 1000))
    racing: list[asyncio.Task[None]] = []
    readable_checks = 0

    async def traffic_between_batches() -> None:
        # The forced interleaving: sends and a full read between every two rotation batches, with
        # more sends racing the next batch.
        nonlocal readable_checks
        await asyncio.gather(*(send(next(counter)) for _ in range(3)))
        history = await chat.history(db, cid, 0)
        assert len(history) == len(sent)
        readable_checks += 1
        racing.append(asyncio.create_task(send(next(counter))))

    async with db.acquire() as conn:
        report = await crypto.rotate(conn, new, batch_size=7, after_batch=traffic_between_batches)
    await asyncio.gather(*racing)
    await writer.close()
    assert readable_checks >= 6
    assert report.rotated["chat_messages.body_enc"] >= 42
    history = await chat.history(db, cid, 0)
    assert sorted(m.text for m in history) == sorted(sent)
    assert [m.seq for m in history] == list(range(1, len(sent) + 1))
    # The processes switch to k2 (the deploy); a second pass leaves nothing under k1.
    crypto.use(new)
    async with db.acquire() as conn:
        await rotate_all(conn, new, batch_size=50)
    rows = await db.fetch("SELECT body, body_enc FROM chat_messages")
    assert all(r["body"] is None for r in rows)
    assert all(bytes(r["body_enc"]).startswith(b"v1:k2:") for r in rows)
    assert sorted(m.text for m in await chat.history(db, cid, 0)) == sorted(sent)
    # Only k2 is needed now.
    crypto.use(crypto.from_settings(make_settings(database_url, redis_url, tmp_path, data_keys=K2)))
    assert len(await chat.history(db, cid, 0)) == len(sent)


async def test_rotate_data_key_command_moves_legacy_birth_details(
    database_url: str, redis_url: str, db: asyncpg.Pool[Any]
) -> None:
    user = await make_user(db, birth_place="Legacy Town")  # plaintext, as before encryption
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DATA_KEYS": f"{K2},{K1}",
        "LOG_FORMAT": "text",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "astrolive", "rotate-data-key", "--batch-size", "10"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"data key k2" in done.stdout
    assert await db.fetchval("SELECT birth_place FROM users WHERE id = $1", user.id) is None
    sealed = await db.fetchval(
        "SELECT data FROM birth_profiles WHERE user_id = $1 AND relation = 'self'", user.id
    )
    assert bytes(sealed).startswith(b"v1:k2:")
    assert b"Legacy Town" not in bytes(sealed)
