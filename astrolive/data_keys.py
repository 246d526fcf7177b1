"""`astrolive rotate-data-key`: re-encrypt personal data under the first key of DATA_KEYS
(issue 16; core/crypto.py explains the keys and the rotation steps).

Importing the storage modules registers their encrypted columns; the rotation then walks every
one in batches of short transactions, compare-and-set per row, while the service keeps running.
It also encrypts what was stored in the clear before encryption existed: chat texts in
`chat_messages.body` and birth details in `users.birth_*` (moved into the self profile).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from core import crypto
from core.settings import Settings

log = logging.getLogger(__name__)

# Modules whose import registers encrypted columns (crypto.register). A module that does not
# exist in this build (another capability not installed) is skipped.
STORAGE_MODULES = (
    "consultations.chat",
    "auth.birth_profiles",
    "questions.service",
    "support.tickets",
    "consultations.attachments",
)


def load_columns() -> list[crypto.EncryptedColumn]:
    for name in STORAGE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return list(crypto.COLUMNS)


async def rotate_all(conn: Any, ring: crypto.Keyring, *, batch_size: int = 500) -> dict[str, int]:
    """Legacy plaintext birth details moved and encrypted, then every registered column
    re-encrypted under `ring.primary`. Returns the rows changed per column."""
    from auth import birth_profiles

    moved = await birth_profiles.migrate_all_legacy(conn, batch_size)
    columns = load_columns()
    report = await crypto.rotate(conn, ring, batch_size=batch_size, columns=columns)
    return {"users.birth (moved to birth_profiles)": moved, **report.rotated}


async def run(settings: Settings, *, batch_size: int) -> dict[str, int]:
    from db.pool import connect

    ring = crypto.install(settings)
    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        return await rotate_all(conn, ring, batch_size=batch_size)
    finally:
        await conn.close()
