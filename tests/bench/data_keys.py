"""What encryption at rest costs one chat message, measured alone (issue 16).

    .venv/bin/python -m tests.bench.data_keys [--n 20000]

Prints microseconds per AES-256-GCM seal (encrypt with its associated data, as chat.py stores a
message) and per open (decrypt, as history reads it), for a short and a maximal (4000-character,
Hindi) message, and the envelope's size overhead. The chat benchmark (tests/bench/chat.py) is the
end-to-end figure; on a shared machine its run-to-run noise is larger than this cost, which is
why this one exists.
"""

from __future__ import annotations

import argparse
import base64
import time
import uuid

from core import crypto
from core.settings import Env, Settings

KEYS = "b1:" + base64.b64encode(b"\x07" * 32).decode()


def measure(n: int) -> None:
    settings = Settings(_env_file=None, astrolive_env=Env.DEVELOPMENT, data_keys=KEYS)  # type: ignore[call-arg]  # pydantic-settings init option
    ring = crypto.from_settings(settings)
    cid, sender = uuid.uuid4(), uuid.uuid4()
    print(f"data key cost, {n} messages each (one core, shared machine)")
    for label, text in (("short (40 chars)", "namaste, when will my exam results come?"),
                        ("max (4000 chars, Hindi)", "नमस्ते " * 571 + "नम")):  # fmt: skip
        aads = [crypto.aad("chat_messages.body_enc", cid, sender, f"m{i}") for i in range(n)]
        started = time.perf_counter()
        sealed = [ring.encrypt_text(text, a) for a in aads]
        seal_us = (time.perf_counter() - started) / n * 1e6
        started = time.perf_counter()
        for value, a in zip(sealed, aads, strict=True):
            ring.decrypt_text(value, a)
        open_us = (time.perf_counter() - started) / n * 1e6
        overhead = len(sealed[0]) - len(text.encode())
        print(f"  {label:26s} seal {seal_us:6.2f} µs   open {open_us:6.2f} µs   +{overhead} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    measure(parser.parse_args().n)


if __name__ == "__main__":
    main()
