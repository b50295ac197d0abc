"""Group commit: many callers, one store write.

Callers ``submit`` an item and await its answer. One task takes every item
waiting, hands them to ``flush`` as a batch (one transaction, one fsync), and
answers each caller. While a flush runs, new items queue up for the next one,
so the batch grows with the load and durability does not cost throughput.

If a batch fails as a whole, its items are flushed one at a time so a bad item
fails only its own caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

I = TypeVar("I")  # noqa: E741 - the conventional name of an input type
O = TypeVar("O")  # noqa: E741

log = structlog.get_logger(__name__)


class Batcher(Generic[I, O]):
    def __init__(
        self,
        name: str,
        flush: Callable[[Sequence[I]], Awaitable[Sequence[O]]],
        max_batch: int = 1000,
    ) -> None:
        self.name = name
        self._flush = flush
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[O]]] = asyncio.Queue()

    async def submit(self, item: I) -> O:
        """Queue ``item`` and wait until it is flushed; its answer, or the error."""
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def run(self) -> None:
        """Flush forever; meant to run as a supervised task."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._flush_batch(batch)

    async def drain(self) -> None:
        """Flush what is queued now (at shutdown)."""
        while not self._queue.empty():
            batch = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            await self._flush_batch(batch)

    async def _flush_batch(self, batch: list[tuple[I, asyncio.Future[O]]]) -> None:
        # A future already done is a caller that went away (cancelled); the work
        # is done all the same.
        try:
            answers = await self._flush([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.warning("batch_failed_retrying_singly", batcher=self.name, size=len(batch))
            for one in batch:
                await self._flush_batch([one])
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
