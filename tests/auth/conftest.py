"""Fixtures of the sign-in tests: moto on loopback, and the SMS outbox read from the log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.aws_server import moto_server


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url
