"""Memory and SQLite side by side: the same random run of the engine's calls leaves the
same deliveries in both.

The contract's other tests each check one rule; this one looks for what they did not
think of. Hypothesis draws a run (messages, claims, every kind of result, releases,
lapsed leases, suspensions, replays, deletions), both stores play it, and after every
step each delivery (named by its message's place in the run and its endpoint) must be
the same in both. Every time in a run is distinct and each claim takes all that is
due, so no step depends on how a store breaks a tie between ids.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import strategies as st

from given import NOW
from support.factories import an_endpoint
from support.stores import KEYRING
from tidings import ids
from tidings.domain.models import (
    Accepted,
    Attempt,
    AttemptResult,
    Claimed,
    DeliveryFilter,
    DeliveryState,
    NewMessage,
    ReplaySelector,
    Tenant,
)
from tidings.store import Store, open_store

TENANT = "tnt_twin"
ENDPOINTS = {"ep_a": ("a",), "ep_b": ("a", "b")}  # an "a" goes to both, a "b" to one

_send = st.tuples(st.just("send"), st.sampled_from(["a", "b"]))
_claim = st.tuples(st.just("claim"), st.sampled_from(sorted(ENDPOINTS)))
_settle = st.tuples(
    st.just("settle"),
    st.lists(st.sampled_from(["ok", "retry", "dead", "gone"]), min_size=1, max_size=6),
)
_other = st.tuples(
    st.sampled_from(["release", "lapse", "suspend", "resume", "replay", "delete", "expire"]),
    st.sampled_from(sorted(ENDPOINTS)),
)
RUNS = st.lists(st.one_of(_send, _send, _claim, _claim, _settle, _other), max_size=25)


@dataclass
class Twin:
    """One store playing the run, and what it was given back that later steps use."""

    store: Store
    messages: dict[str, int] = field(default_factory=dict)  # message id: its place in the run
    claimed: list[Claimed] = field(default_factory=list)

    async def deliveries(self) -> list[tuple[Any, ...]]:
        page = await self.store.list_deliveries(TENANT, DeliveryFilter(), cursor=None, limit=10_000)
        return sorted(
            (
                self.messages[d.message_id],
                d.endpoint_id,
                d.state,
                d.attempts,
                d.next_attempt_at,
                d.last_status,
                d.dead_reason,
                d.succeeded_at,
            )
            for d in page.items
        )


async def _open(url: str) -> Twin:
    store = open_store(url)
    await store.migrate()
    await store.open_secrets(KEYRING)
    await store.create_tenant(Tenant(TENANT, "twin", "ops@twin.example", NOW))
    for endpoint_id, events in ENDPOINTS.items():
        await store.create_endpoint(
            an_endpoint(id=endpoint_id, tenant_id=TENANT, event_types=events, now=NOW)
        )
    return Twin(store)


def _result(job: Claimed, outcome: str, at: Any) -> AttemptResult:
    status = {"ok": 204, "retry": 503, "dead": 500, "gone": 410}[outcome]
    state = {
        "ok": DeliveryState.SUCCEEDED,
        "retry": DeliveryState.PENDING,
        "dead": DeliveryState.DEAD,
        "gone": DeliveryState.DEAD,
    }[outcome]
    attempt = Attempt(
        ids.new_id(ids.ATTEMPT), job.delivery_id, job.attempts + 1, at, 1.0, status, None, ""
    )
    return AttemptResult(
        job.delivery_id,
        job.endpoint_id,
        attempt,
        state,
        at + timedelta(seconds=7) if state is DeliveryState.PENDING else None,
        None if state is not DeliveryState.DEAD else f"{outcome}: {status}",
        job.lease_until,
        disable_endpoint=outcome == "gone",
    )


async def _step(twin: Twin, place: int, step: tuple[Any, ...], at: Any) -> Any:
    """Play one step at time ``at``; what it answered (compared across the stores)."""
    store, kind = twin.store, step[0]
    if kind == "send":
        message = NewMessage(TENANT, step[1], b"{}", None, "h")
        [accepted] = await store.ingest([message], at, 60.0)
        assert isinstance(accepted, Accepted)
        twin.messages[accepted.message_id] = place
        return sorted(e for _, e in accepted.deliveries)
    if kind == "claim":
        got = await store.claim({step[1]: 100}, at, at + timedelta(seconds=30))
        twin.claimed += got
        return sorted(twin.messages[c.message_id] for c in got)
    if kind == "settle":
        ordered = sorted(twin.claimed, key=lambda c: (twin.messages[c.message_id], c.endpoint_id))
        jobs = list(zip(ordered, step[1], strict=False))
        twin.claimed = [c for c in twin.claimed if c not in {j for j, _ in jobs}]
        return await store.record_results([_result(j, o, at) for j, o in jobs], at)
    endpoint_id = step[1]
    if kind == "release":
        mine = [c for c in twin.claimed if c.endpoint_id == endpoint_id]
        twin.claimed = [c for c in twin.claimed if c not in mine]
        return await store.release(mine, at)
    if kind == "lapse":
        return await store.reclaim_expired_leases(at + timedelta(minutes=1))
    if kind in ("suspend", "resume"):
        change = store.suspend_endpoint if kind == "suspend" else store.resume_endpoint
        args = ("twin", "test", at) if kind == "suspend" else ("test", at)
        try:
            found = await change(TENANT, endpoint_id, *args)
        except Exception as exc:  # a Conflict: compared by its words
            return str(exc)
        return None if found is None else found[1]
    if kind == "replay":
        return await store.replay(TENANT, ReplaySelector(endpoint_id=endpoint_id), at)
    if kind == "delete":
        return await store.delete_endpoint(TENANT, endpoint_id, at)
    return await store.expire_held(at, "expired: x", at)


async def _play(run: list[tuple[Any, ...]], directory: Path) -> None:
    twins = [await _open("memory://"), await _open(f"sqlite:///{directory / 'twin.db'}")]
    clock = itertools.count(1)
    try:
        for place, step in enumerate(run):
            at = NOW + timedelta(seconds=next(clock) * 10, microseconds=place)
            answers = [await _step(twin, place, step, at) for twin in twins]
            assert answers[0] == answers[1], (place, step)
            assert await twins[0].deliveries() == await twins[1].deliveries(), (place, step)
            seen = [await _summary(twin.store, at) for twin in twins]
            assert seen[0] == seen[1], (place, step)
    finally:
        for twin in twins:
            await twin.store.close()


async def _summary(store: Store, at: Any) -> tuple[Any, ...]:
    """What else the engine and the API read of the store, as of ``at``."""
    endpoints = await store.list_endpoints(TENANT, cursor=None, limit=10)
    return (
        await store.queue_depth(),
        await store.held_counts(),
        await store.next_wakeup(at),
        await store.oldest_due(at),
        await store.endpoint_minutes(NOW),
        sorted((e.id, e.state, e.disabled_reason) for e in endpoints.items),
        {
            endpoint_id: (h.breaker, h.held, [replace(s, id="") for s in h.suspensions])
            for endpoint_id, h in (await store.endpoint_health(sorted(ENDPOINTS))).items()
        },
    )


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(RUNS)
def test_memory_and_sqlite_play_any_run_alike(run: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_play(run, Path(directory)))
