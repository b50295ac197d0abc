"""Settings the service keeps for itself, and the keys that seal endpoints' secrets."""

from __future__ import annotations

from sqlalchemy import select

from tidings.crypto import Keyring
from tidings.store.sql import sealing
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.rows import put_setting
from tidings.store.sql.schema import settings


class SettingsRecords(SqlCore):
    """The Settings and Secrets roles."""

    @reads
    def get_setting(self, key: str) -> str | None:
        with self._read() as conn:
            value = conn.scalar(select(settings.c.value).where(settings.c.key == key))
        return None if value is None else str(value)

    @writes
    def set_setting(self, key: str, value: str) -> None:
        with self._write() as conn:
            put_setting(conn, key, value)

    @writes
    def open_secrets(self, keyring: Keyring) -> int:
        with self._write() as conn:
            self._lock_migrations(conn)
            upgraded = sealing.unlock(conn, keyring)
        self._keyring = keyring
        return upgraded

    @reads
    def stale_secrets(self) -> int:
        with self._read() as conn:
            return sealing.stale_count(conn, self._keys)

    @writes
    def reseal_secrets(self, limit: int) -> int:
        with self._write() as conn:
            self._lock_migrations(conn)
            return sealing.reseal(conn, self._keys, limit)
