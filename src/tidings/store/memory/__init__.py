"""The in-memory store: the Store contract kept in plain data, for tests and trials.

Split by the kind of record each module keeps: :mod:`.tables` (the records and
their indexes), :mod:`.ingest` (messages and their fan-out), :mod:`.work` (claims,
leases, results, replay), :mod:`.health` (suspensions, breakers, minutes, notices),
and :mod:`.store`, the :class:`MemoryStore` that holds them together.
"""

from __future__ import annotations

from tidings.store.memory.store import MemoryStore

__all__ = ["MemoryStore"]
