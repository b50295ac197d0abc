"""Persistence behind the :class:`~tidings.store.base.Store` contract."""

from __future__ import annotations

from tidings.store.base import Store


def open_store(url: str) -> Store:
    """The store for a database URL (``sqlite:///path``; PostgreSQL follows)."""
    if url.startswith("sqlite"):
        from tidings.store.sqlite import SqliteStore

        return SqliteStore(url)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path")


__all__ = ["Store", "open_store"]
