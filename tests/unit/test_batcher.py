from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tidings.engine.batcher import Batcher


async def test_callers_waiting_together_share_one_flush() -> None:
    flushes: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        flushes.append(list(items))
        await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher("t", flush)
    runner = asyncio.create_task(batcher.run())
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
    runner.cancel()

    assert answers == [i * 2 for i in range(50)]
    assert len(flushes) < 5  # not one flush per caller


async def test_a_failing_item_fails_only_its_own_caller() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return list(items)

    batcher: Batcher[int, int] = Batcher("t", flush)
    runner = asyncio.create_task(batcher.run())
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
    runner.cancel()

    assert isinstance(results[13], ValueError)
    assert [r for i, r in enumerate(results) if i != 13] == [i for i in range(20) if i != 13]


async def test_drain_flushes_what_is_queued() -> None:
    seen: list[int] = []

    async def flush(items: Sequence[int]) -> list[None]:
        seen.extend(items)
        return [None] * len(items)

    batcher: Batcher[int, None] = Batcher("t", flush)
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await batcher.drain()

    assert seen == [0, 1, 2]
    assert await asyncio.gather(*waiting) == [None, None, None]
