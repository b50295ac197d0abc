"""Persistence behind the :class:`~tidings.store.ports.Store` contract."""

from __future__ import annotations

from tidings.store.ports import Changed, Store


def open_store(url: str) -> Store:
    """The store for a database URL: ``sqlite:///path``, ``postgresql://…``, or
    ``memory://`` (kept in this process only, gone when it stops)."""
    if url.startswith("memory:"):
        from tidings.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite"):
        from tidings.store.sql.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql", "postgres:")):
        from tidings.store.sql.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///path, postgresql://user@host/db or memory://"
    )


__all__ = ["Changed", "Store", "open_store"]
