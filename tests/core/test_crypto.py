"""Encryption at rest (core/crypto.py): envelopes, refusal of tampered or moved values, key
sources (DATA_KEYS, the development key file, AWS KMS through moto), production's refusal."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from core import crypto
from core.settings import Env, Settings
from tests.aws_server import moto_server

K1 = "k1:" + base64.b64encode(b"1" * 32).decode()
K2 = "k2:" + base64.b64encode(b"2" * 32).decode()


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]  # pydantic-settings init option


def test_round_trip_with_a_key_id_and_fresh_nonces(tmp_path: Path) -> None:
    ring = crypto.from_settings(_settings(tmp_path, data_keys=f"{K2},{K1}"))
    aad = crypto.aad("t.c", "row-1")
    a = ring.encrypt_text("born in Pune", aad)
    b = ring.encrypt_text("born in Pune", aad)
    assert a != b  # a random nonce per value
    assert a.startswith(b"v1:k2:")
    assert crypto.key_id_of(a) == "k2"
    assert b"Pune" not in a
    assert ring.decrypt_text(a, aad) == "born in Pune"


def test_tampered_moved_or_foreign_values_are_refused(tmp_path: Path) -> None:
    ring = crypto.from_settings(_settings(tmp_path, data_keys=K1))
    aad = crypto.aad("t.c", "row-1")
    sealed = ring.encrypt_text("secret", aad)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(crypto.DecryptError):
        ring.decrypt_text(bytes(flipped), aad)
    with pytest.raises(crypto.DecryptError):  # the same value moved to another row
        ring.decrypt_text(sealed, crypto.aad("t.c", "row-2"))
    with pytest.raises(crypto.DecryptError):  # or to another column
        ring.decrypt_text(sealed, crypto.aad("t.other", "row-1"))
    other = crypto.from_settings(_settings(tmp_path, data_keys=K2))
    with pytest.raises(crypto.DecryptError, match="unknown data key"):
        other.decrypt_text(sealed, aad)
    with pytest.raises(crypto.DecryptError):
        ring.decrypt_text(b"plain text", aad)
    with pytest.raises(crypto.DecryptError):
        ring.decrypt_text(b"v1:k1:short", aad)


def test_malformed_keys_are_refused(tmp_path: Path) -> None:
    for bad in ("k1", "k1:not-base64!", "k1:" + base64.b64encode(b"x" * 16).decode(), f"{K1},{K1}"):
        with pytest.raises(crypto.CryptoError):
            crypto.from_settings(_settings(tmp_path, data_keys=bad))


def test_development_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = crypto.from_settings(_settings(tmp_path))
    second = crypto.from_settings(_settings(tmp_path))
    assert first.keys == second.keys
    assert (tmp_path / "data_keys").stat().st_mode & 0o777 == 0o600


def test_production_refuses_a_missing_data_key(tmp_path: Path) -> None:
    base = {"astrolive_env": Env.PRODUCTION, "jwt_secret": "s" * 40, "sms_provider": "sns"}
    with pytest.raises(ValidationError, match="DATA_KEYS must be set"):
        _settings(tmp_path, **base)
    assert _settings(tmp_path, **base, data_keys=K1).data_keys == K1


def test_kms_wrapped_data_keys(tmp_path: Path) -> None:
    """With KMS_KEY_ID, DATA_KEYS holds data keys wrapped by KMS (moto's server on loopback):
    --generate makes one, and the keyring unwraps it; a key wrapped for another id fails."""
    with moto_server() as url:
        kms = boto3.client("kms", region_name="ap-south-1", endpoint_url=url)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        settings = _settings(tmp_path, kms_key_id=key_id)
        entry = crypto.generate_key_entry(settings, "w1", kms=kms)
        assert entry.startswith("w1:")
        settings = _settings(tmp_path, kms_key_id=key_id, data_keys=entry)
        ring = crypto.from_settings(settings, kms=kms)
        assert ring.primary == "w1"
        assert len(ring.keys["w1"]) == 32
        # The wrapped blob is not the key.
        assert base64.b64decode(entry.partition(":")[2]) != ring.keys["w1"]
        aad = crypto.aad("t.c", 1)
        assert ring.decrypt_text(ring.encrypt_text("x", aad), aad) == "x"
        # A wrapped key presented under another id does not unwrap (encryption context).
        renamed = "w2:" + entry.partition(":")[2]
        with pytest.raises(crypto.CryptoError, match="could not unwrap"):
            crypto.from_settings(_settings(tmp_path, kms_key_id=key_id, data_keys=renamed), kms=kms)
    with pytest.raises(crypto.CryptoError, match="KMS_KEY_ID needs DATA_KEYS"):
        crypto.from_settings(_settings(tmp_path, kms_key_id="some-key"))
