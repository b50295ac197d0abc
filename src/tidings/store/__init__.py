"""Persistence behind the :class:`~tidings.store.ports.Store` contract."""

from __future__ import annotations

from tidings.store.ports import Changed, Store


def open_store(url: str) -> Store:
    """The store for a database URL: ``sqlite:///path`` or ``postgresql://…``."""
    if url.startswith("sqlite"):
        from tidings.store.sql.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql", "postgres:")):
        from tidings.store.sql.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///path or postgresql://user@host/db"
    )


__all__ = ["Changed", "Store", "open_store"]
