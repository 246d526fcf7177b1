"""The official Node `socket.io-client` completes a chat (tests/node/chat.js)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core.settings import Settings
from tests.realtime.support import make_pair

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """`node` with tests/node's pinned socket.io-client installed from npm when missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed: the Node client test needs them")
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return NODE_DIR


async def run_node(script: Path, *args: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_node_client_chat(
    node_client: Path, rt_url: str, db: asyncpg.Pool[Any], rt_settings: Settings
) -> None:
    cid, user, utoken, astro, atoken = await make_pair(db, rt_settings)
    count = 8
    result = await run_node(node_client / "chat.js", rt_url, utoken, atoken, str(cid), str(count))
    assert all(j["ok"] and j["consultation"]["id"] == str(cid) for j in result["joins"])
    seqs = sorted(a["seq"] for side in ("user", "astrologer") for a in result["acks"][side])
    assert seqs == list(range(1, 2 * count + 1))  # no seq shared, none skipped
    # Each side got every message of the other, in seq order, and none of its own.
    for side, other_id in (("user", astro.id), ("astrologer", user.id)):
        got = result["received"][side]
        assert len(got) == count
        assert all(m["sender_id"] == str(other_id) for m in got)
        assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
    assert result["badAck"]["ok"] is False
    assert result["badAck"]["error"]["code"] == "validation_error"
    assert result["refused"]["data"]["code"] == "invalid_token"
    assert await db.fetchval("SELECT count(*) FROM chat_messages") == 2 * count
