"""The store's secrets at rest: sealed on the way in, opened on the way out.

Endpoint signing secrets (current and previous) are kept sealed by a
:class:`~tidings.crypto.Keyring`, each bound to its row and column
(``endpoint:<id>:secret``), so a sealed value moved to another row does not open.
The empty secret of a tenant's email lane means "none" and is kept as is.

Rows are mapped to records with their secrets still sealed; the store opens them
at its boundary (:func:`opened`), only for the records it hands out. Ingest reads
endpoints for fan-out and never pays for a decryption.

A *canary* (a known value, sealed, in the settings table) tells at start whether
the keys given open this store, before anything else runs, even while it keeps no
endpoint yet. :func:`unlock` checks it, seals what an older tidings left in
plaintext, and checks that every key a stored secret is sealed under was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, union, update
from sqlalchemy.engine import Connection

from tidings.crypto import KEY_ID_CHARS, PREFIX, Keyring
from tidings.domain.models import Endpoint
from tidings.exceptions import EncryptionKeyError
from tidings.store.sql.schema import endpoints, settings

CANARY = "encryption_canary"
CANARY_CONTEXT = f"setting:{CANARY}"
CANARY_TEXT = "tidings opens this store's secrets"
COLUMNS = ("secret", "previous_secret")


def context(endpoint_id: str, column: str) -> str:
    """What a sealed secret is bound to: its row and column."""
    return f"endpoint:{endpoint_id}:{column}"


def sealed_row(row: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
    """``row`` (an endpoint's columns, or some of them) with its secrets sealed."""
    found = dict(row)
    for column in COLUMNS:
        if found.get(column):
            found[column] = keyring.seal(found[column], context(found["id"], column))
    return found


def opened(endpoint: Endpoint, keyring: Keyring) -> Endpoint:
    """``endpoint`` as read from its row, with its secrets opened."""
    secret = endpoint.secret
    if secret:
        secret = keyring.open(secret, context(endpoint.id, "secret"))
    previous = endpoint.previous_secret
    if previous:
        previous = keyring.open(previous, context(endpoint.id, "previous_secret"))
    return replace(endpoint, secret=secret, previous_secret=previous)


def unlock(conn: Connection, keyring: Keyring) -> int:
    """Check that ``keyring`` opens this store, seal any secret still in plaintext and
    return how many endpoints that was. Run in a write transaction that excludes other
    processes' (see ``SqlStore._lock_migrations``)."""
    canary = conn.scalar(select(settings.c.value).where(settings.c.key == CANARY))
    if canary is not None:
        keyring.open(canary, CANARY_CONTEXT)
    missing = sorted(_key_ids_in_use(conn) - set(keyring.ids))
    if missing:
        raise EncryptionKeyError(
            f"endpoint secrets are encrypted with key {', '.join(missing)}, which is not "
            f"among the keys given ({', '.join(keyring.ids)})"
        )
    upgraded = _seal_plaintext(conn, keyring)
    if canary is None:
        conn.execute(insert(settings).values(key=CANARY, value=_canary(keyring)))
    return upgraded


def stale_count(conn: Connection, keyring: Keyring) -> int:
    """How many endpoints keep a secret sealed under a key other than the sealing one."""
    query = select(func.count()).select_from(endpoints).where(_stale(keyring))
    return int(conn.scalar(query) or 0)


def reseal(conn: Connection, keyring: Keyring, limit: int) -> int:
    """Seal again, under the sealing key, the secrets of up to ``limit`` endpoints that
    were sealed under another; how many endpoints that was. When none is left, the
    canary is sealed again too (last: until then it still needs the old key, so a
    rotation cut short never lets the old key go while a secret needs it)."""
    rows = conn.execute(
        select(endpoints.c.id, *_columns())
        .where(_stale(keyring))
        .order_by(endpoints.c.id)
        .limit(limit)
        .with_for_update()  # a secret rotated meanwhile is read anew, never written back old
    ).all()
    for row in rows:
        plain = {c: keyring.open(v, context(row.id, c)) if v else v for c, v in _secrets(row)}
        _write(conn, row.id, sealed_row({"id": row.id, **plain}, keyring))
    if not rows:
        canary = conn.scalar(select(settings.c.value).where(settings.c.key == CANARY))
        if canary is None or not canary.startswith(f"{PREFIX}{keyring.sealing_id}:"):
            conn.execute(delete(settings).where(settings.c.key == CANARY))
            conn.execute(insert(settings).values(key=CANARY, value=_canary(keyring)))
    return len(rows)


def _canary(keyring: Keyring) -> str:
    return keyring.seal(CANARY_TEXT, CANARY_CONTEXT)


def _columns() -> list[Any]:
    return [endpoints.c[column] for column in COLUMNS]


def _secrets(row: Any) -> list[tuple[str, str | None]]:
    return [(column, getattr(row, column)) for column in COLUMNS]


def _write(conn: Connection, endpoint_id: str, values: Mapping[str, Any]) -> None:
    changes = {column: values[column] for column in COLUMNS}
    conn.execute(update(endpoints).where(endpoints.c.id == endpoint_id).values(**changes))


def _key_ids_in_use(conn: Connection) -> set[str]:
    start, length = len(PREFIX) + 1, KEY_ID_CHARS
    ids = union(
        *(
            select(func.substr(col, start, length)).where(col.like(f"{PREFIX}%")).distinct()
            for col in _columns()
        )
    )
    return {str(key_id) for key_id in conn.scalars(ids)}


def _seal_plaintext(conn: Connection, keyring: Keyring) -> int:
    plain = or_(
        *(and_(col.is_not(None), col != "", col.not_like(f"{PREFIX}%")) for col in _columns())
    )
    rows = conn.execute(select(endpoints.c.id, *_columns()).where(plain).with_for_update()).all()
    for row in rows:
        sealed = {
            c: keyring.seal(v, context(row.id, c)) if v and not v.startswith(PREFIX) else v
            for c, v in _secrets(row)
        }
        _write(conn, row.id, sealed)
    return len(rows)


def _stale(keyring: Keyring) -> Any:
    current = f"{PREFIX}{keyring.sealing_id}:%"
    return or_(*(and_(col.like(f"{PREFIX}%"), col.not_like(current)) for col in _columns()))
