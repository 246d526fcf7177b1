"""Personal data encrypted at rest: AES-256-GCM with a key id stored beside every value.

    ring = crypto.current()
    stored = ring.encrypt_text("born in Pune", crypto.aad("users.birth", user_id))
    ring.decrypt_text(stored, crypto.aad("users.birth", user_id))  # "born in Pune"

An envelope is `b"v1:" + key id + b":" + nonce (12 bytes) + ciphertext and tag`, kept in a
`bytea` column. The associated data names the table, column and row the value belongs to, so a
ciphertext copied to another row or column does not decrypt (`DecryptError`), nor does a tampered
one.

Keys (API.md configuration):
- `DATA_KEYS=id:base64key,...`: 32-byte keys; the first one encrypts, every one decrypts.
- `KMS_KEY_ID` set: the DATA_KEYS values are data keys *wrapped* by that AWS KMS key (what
  `astrolive rotate-data-key --generate` prints); they are unwrapped once per process through
  boto3 (`AWS_ENDPOINT_URL_KMS` points elsewhere in tests), so the plain keys never sit in config.
- neither, in development: one key generated on first use and kept in `./.data/data_keys`
  (like the JWT secret). Production refuses to start without DATA_KEYS (core/settings.py).

Rotation without downtime: add the new key at the END of DATA_KEYS (every process can read it)
and deploy; move it first (it now encrypts) and deploy; run `astrolive rotate-data-key`, which
re-encrypts every registered column in batches (`rotate`), each row compare-and-set so that
writes racing it are never overwritten. Old keys can be dropped once it reports nothing left.

The process's keyring is built from settings by `install` (called by the composition root when
it opens the services) and read with `current()`: storage functions that predate encryption
(chat) keep their signatures.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.settings import Settings

log = logging.getLogger(__name__)

VERSION = b"v1"
NONCE_BYTES = 12  # GCM's standard nonce; random per value (2^32 values per key stay far below
# the birthday bound that NIST SP 800-38D sets for random nonces)
KEY_BYTES = 32  # AES-256
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEV_KEY_FILE = "data_keys"


class CryptoError(Exception):
    """Keys missing or malformed: a configuration problem, raised at startup."""


class DecryptError(Exception):
    """A value that does not decrypt: tampered, moved to another row, or under an unknown key."""


def aad(purpose: str, *parts: object) -> bytes:
    """Associated data binding a value to where it is stored: `table.column` and the row's
    identifying values (e.g. `aad("chat_messages.body", consultation_id, sender_id, cmid)`)."""
    return "|".join([purpose, *(str(p) for p in parts)]).encode()


@dataclass(frozen=True)
class Keyring:
    """Data keys by id; `primary` encrypts."""

    keys: dict[str, bytes]
    primary: str
    _aead: dict[str, AESGCM] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.primary not in self.keys:
            raise CryptoError("the primary data key is not in the keyring")
        for kid, key in self.keys.items():
            if not _KID.match(kid):
                raise CryptoError(f"data key id {kid!r}: letters, digits, - and _ (1 to 32)")
            if len(key) != KEY_BYTES:
                raise CryptoError(f"data key {kid!r} is {len(key)} bytes, not {KEY_BYTES}")
            self._aead[kid] = AESGCM(key)

    @property
    def prefix(self) -> bytes:
        """What every value encrypted under the primary key starts with."""
        return VERSION + b":" + self.primary.encode() + b":"

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return self.prefix + nonce + self._aead[self.primary].encrypt(nonce, plaintext, associated)

    def decrypt(self, envelope: bytes, associated: bytes) -> bytes:
        kid, body = split_envelope(envelope)
        cipher = self._aead.get(kid)
        if cipher is None:
            raise DecryptError(f"value encrypted under unknown data key {kid!r}")
        if len(body) < NONCE_BYTES + 16:
            raise DecryptError("value too short")
        try:
            return cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], associated)
        except InvalidTag as exc:
            raise DecryptError("value does not authenticate (tampered or moved)") from exc

    def encrypt_text(self, text: str, associated: bytes) -> bytes:
        return self.encrypt(text.encode(), associated)

    def decrypt_text(self, envelope: bytes, associated: bytes) -> str:
        return self.decrypt(envelope, associated).decode()

    def encrypt_json(self, value: Any, associated: bytes) -> bytes:
        raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        return self.encrypt(raw.encode(), associated)

    def decrypt_json(self, envelope: bytes, associated: bytes) -> Any:
        return json.loads(self.decrypt(envelope, associated))

    def is_current(self, envelope: bytes) -> bool:
        return bytes(envelope).startswith(self.prefix)


def split_envelope(envelope: bytes) -> tuple[str, bytes]:
    """(key id, nonce + ciphertext) of an envelope; `DecryptError` when it is not one."""
    raw = bytes(envelope)
    version, sep1, rest = raw.partition(b":")
    kid, sep2, body = rest.partition(b":")
    if version != VERSION or not sep1 or not sep2:
        raise DecryptError("not an encrypted value")
    try:
        return kid.decode("ascii"), body
    except UnicodeDecodeError as exc:
        raise DecryptError("not an encrypted value") from exc


def key_id_of(envelope: bytes) -> str:
    return split_envelope(envelope)[0]


def parse_keys(value: str) -> list[tuple[str, bytes]]:
    """`id:base64,...` in order; `CryptoError` when malformed."""
    pairs: list[tuple[str, bytes]] = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        kid, sep, encoded = item.partition(":")
        if not sep or not _KID.match(kid):
            raise CryptoError(f"DATA_KEYS entry {kid!r}... is not id:base64key")
        try:
            pairs.append((kid, base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise CryptoError(f"DATA_KEYS entry {kid!r}: the key is not base64") from exc
    if len({kid for kid, _ in pairs}) != len(pairs):
        raise CryptoError("DATA_KEYS names a key id twice")
    return pairs


def format_keys(pairs: Iterable[tuple[str, bytes]]) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in pairs)


def kms_client(settings: Settings) -> Any:
    """A boto3 KMS client (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KMS point it elsewhere)."""
    import boto3

    return boto3.client("kms", region_name=settings.aws_region)


def _dev_keys(settings: Settings) -> list[tuple[str, bytes]]:
    path = settings.data_dir / DEV_KEY_FILE
    if path.exists():
        return parse_keys(path.read_text().strip())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pairs = [("dev1", secrets.token_bytes(KEY_BYTES))]
    _write_private(path, format_keys(pairs))
    log.info("generated a development data key", extra={"path": str(path)})
    return pairs


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def from_settings(settings: Settings, *, kms: Any = None) -> Keyring:
    """The keyring the settings describe (see the module docstring)."""
    if settings.data_keys:
        pairs = parse_keys(settings.data_keys)
        if not pairs:
            raise CryptoError("DATA_KEYS is empty")
        if settings.kms_key_id:
            client = kms if kms is not None else kms_client(settings)
            pairs = [(kid, _unwrap(client, settings.kms_key_id, kid, blob)) for kid, blob in pairs]
    elif settings.kms_key_id:
        raise CryptoError("KMS_KEY_ID needs DATA_KEYS (wrapped keys: rotate-data-key --generate)")
    elif settings.is_production:
        raise CryptoError("production needs DATA_KEYS (or KMS_KEY_ID with wrapped DATA_KEYS)")
    else:
        pairs = _dev_keys(settings)
    return Keyring(dict(pairs), pairs[0][0])


def _unwrap(client: Any, key_id: str, kid: str, blob: bytes) -> bytes:
    try:
        answer = client.decrypt(
            CiphertextBlob=blob, KeyId=key_id, EncryptionContext={"astrolive-data-key": kid}
        )
    except Exception as exc:
        raise CryptoError(f"KMS could not unwrap data key {kid!r}: {exc}") from exc
    return bytes(answer["Plaintext"])


def generate_key_entry(settings: Settings, kid: str | None = None, *, kms: Any = None) -> str:
    """A new `id:base64` DATA_KEYS entry: a random key, or with KMS_KEY_ID a data key made and
    wrapped by KMS (only the wrapped form is printed)."""
    kid = kid or "k" + secrets.token_hex(4)
    if not _KID.match(kid):
        raise CryptoError(f"data key id {kid!r}: letters, digits, - and _ (1 to 32)")
    if settings.kms_key_id:
        client = kms if kms is not None else kms_client(settings)
        answer = client.generate_data_key(
            KeyId=settings.kms_key_id,
            KeySpec="AES_256",
            EncryptionContext={"astrolive-data-key": kid},
        )
        return format_keys([(kid, bytes(answer["CiphertextBlob"]))])
    return format_keys([(kid, secrets.token_bytes(KEY_BYTES))])


# The process's keyring -----------------------------------------------------------------------

_current: list[Keyring] = []  # set by `install` when a process opens its services


def install(settings: Settings) -> Keyring:
    """Build the keyring from settings and make it the process's (`current()`)."""
    ring = from_settings(settings)
    _current[:] = [ring]
    return ring


def use(ring: Keyring) -> None:
    """Make `ring` the process's keyring (rotation tests, the rotate command)."""
    _current[:] = [ring]


def current() -> Keyring:
    if not _current:
        raise CryptoError("no data keyring: the process did not open its services")
    return _current[0]


# Columns to rotate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedColumn:
    """A bytea column of envelopes. `aad_of` gives a row's associated data from the columns named
    in `aad_columns` (the same function its storage code uses); `key` is the table's unique key,
    walked in order so a rotation pass visits every row once.

    `legacy` (optional): a SQL expression of the row's plaintext from before encryption, and
    `legacy_clear` the SET clause that erases it; rotation encrypts such rows too."""

    table: str
    column: str
    key: str
    aad_columns: tuple[str, ...]
    aad_of: Callable[[Sequence[Any]], bytes]
    legacy: str | None = None
    legacy_clear: str | None = None


COLUMNS: list[EncryptedColumn] = []


def register(column: EncryptedColumn) -> EncryptedColumn:
    """Add a column to what `rotate` re-encrypts (at import of its storage module)."""
    if not any((c.table, c.column) == (column.table, column.column) for c in COLUMNS):
        COLUMNS.append(column)
    return column


@dataclass
class RotationReport:
    rotated: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    @property
    def total(self) -> int:
        return sum(self.rotated.values())


def _batch_sql(col: EncryptedColumn) -> str:
    aad_cols = ", ".join(col.aad_columns)
    legacy = col.legacy or "NULL::text"
    return f"""
SELECT {col.key} AS k, {aad_cols}, {col.column} AS v, {legacy} AS plain
  FROM {col.table}
 WHERE {col.key} > $1
   AND ({col.column} IS NOT NULL OR {legacy} IS NOT NULL)
 ORDER BY {col.key}
 LIMIT $2
"""


def _update_sql(col: EncryptedColumn) -> str:
    # Compare-and-set: a row changed since it was read (a concurrent write) is left alone; the
    # writer used the current key anyway.
    clear = f", {col.legacy_clear}" if col.legacy_clear else ""
    return f"""
UPDATE {col.table} t SET {col.column} = u.v{clear}
  FROM unnest($1::{_key_type(col)}[], $2::bytea[], $3::bytea[]) AS u(k, v, old)
 WHERE t.{col.key} = u.k AND t.{col.column} IS NOT DISTINCT FROM u.old
"""


def _key_type(col: EncryptedColumn) -> str:
    return "uuid" if col.key == "id" else "text"


async def rotate(
    conn: Any,
    ring: Keyring,
    *,
    batch_size: int = 500,
    columns: Sequence[EncryptedColumn] | None = None,
    after_batch: Callable[[], Any] | None = None,
) -> RotationReport:
    """Re-encrypt every value of the registered columns that is not under `ring.primary` (and
    encrypt legacy plaintext), `batch_size` rows per transaction, walking each table by its key.
    Online: each batch is short, rows are compare-and-set. `after_batch` (tests) runs between
    batches. Returns how many values changed per column."""
    report = RotationReport()
    for col in columns if columns is not None else COLUMNS:
        name = f"{col.table}.{col.column}"
        report.rotated[name] = 0
        last: Any = _start_key(col)
        select, update = _batch_sql(col), _update_sql(col)
        while True:
            rows = await conn.fetch(select, last, batch_size)
            if not rows:
                break
            last = rows[-1]["k"]
            keys, news, olds = [], [], []
            for row in rows:
                value, plain = row["v"], row["plain"]
                associated = col.aad_of([row[c] for c in col.aad_columns])
                if value is not None and ring.is_current(value):
                    continue
                if value is not None:
                    new = ring.encrypt(ring.decrypt(value, associated), associated)
                else:
                    new = ring.encrypt(str(plain).encode(), associated)
                keys.append(row["k"])
                news.append(new)
                olds.append(value)
            if keys:
                async with conn.transaction():
                    status = await conn.execute(update, keys, news, olds)
                report.rotated[name] += int(status.split()[-1])
            report.batches += 1
            if after_batch is not None:
                await after_batch()
            if len(rows) < batch_size:
                break
    return report


def _start_key(col: EncryptedColumn) -> Any:
    return uuid.UUID(int=0) if _key_type(col) == "uuid" else ""


__all__ = [
    "COLUMNS",
    "CryptoError",
    "DecryptError",
    "EncryptedColumn",
    "Keyring",
    "RotationReport",
    "aad",
    "current",
    "from_settings",
    "generate_key_entry",
    "install",
    "key_id_of",
    "register",
    "rotate",
    "use",
]
