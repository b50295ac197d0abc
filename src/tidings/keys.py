"""Which tenant an API key belongs to, asked of the store at most every few seconds.

Ingest at thousands of requests a second must not read the store to
authenticate each one, so a key's answer is remembered for `CACHE_TTL`.
A revocation must not wait for that: every process forgets when the store tells
it (``"keys"``, heard through :meth:`~tidings.store.ports.Lifecycle.listen`), the
one that revoked before its request is answered, the others within the time a
notification takes to arrive.

A key's ``last_used_at`` is written when its cached answer is renewed and the
stored time is older than :data:`LAST_USED_PRECISION`: a write per key per
minute or so, never one per request.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from tidings.clock import Clock
from tidings.exceptions import StoreError
from tidings.store.ports import ApiKeys

log = structlog.get_logger(__name__)

CACHE_TTL = timedelta(seconds=30)
LAST_USED_PRECISION = timedelta(minutes=1)
MAX_ENTRIES = 10_000


class KeyCache:
    """API key hash to tenant id, remembered for `CACHE_TTL` or until a
    revocation anywhere."""

    def __init__(self, store: ApiKeys, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._entries: dict[str, tuple[str | None, datetime]] = {}
        # Bumped by every forget(): an answer read from the store before a revocation
        # committed must not be remembered after the revocation was heard.
        self._generation = 0

    async def tenant(self, key_hash: str) -> str | None:
        """The id of the tenant whose live API key has this SHA-256 hash, if any."""
        now = self._clock.now()
        hit = self._entries.get(key_hash)
        if hit and hit[1] > now:
            return hit[0]
        generation = self._generation
        key = await self._store.api_key_for_hash(key_hash)
        tenant_id = None if key is None else key.tenant_id
        if generation == self._generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (tenant_id, now + CACHE_TTL)
        if key is not None and (
            key.last_used_at is None or now - key.last_used_at >= LAST_USED_PRECISION
        ):
            await self._touch(key.id, now)
        return tenant_id

    def forget(self) -> None:
        """Drop every remembered answer: a key was revoked (here or elsewhere)."""
        self._entries.clear()
        self._generation += 1

    async def _touch(self, key_id: str, now: datetime) -> None:
        """Record the use; a store that cannot take it must not refuse the request."""
        try:
            await self._store.touch_api_key(key_id, now)
        except StoreError as exc:
            log.warning("api_key_last_used_not_recorded", key_id=key_id, error=str(exc))
