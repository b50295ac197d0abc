"""Sender processes: webhook requests made beside the process that owns the store.

The main process claims deliveries, decides what each answer means and writes
the results; it is the store's one writer. Making the request (the HTTP
client, signing) is most of the CPU a delivery costs, so with
``TIDINGS_SENDERS`` > 0 it runs in that many child processes instead, each
with its own event loop and :class:`~tidings.channels.webhook.WebhookChannel`:
the same SSRF guard, timeouts, signing and error classes. A request goes to
the sender with the fewest outstanding. The in-flight caps, rate limits and
leases stay in the main process, which never hands out more than they allow.

Wire format: one JSON array a line over the child's stdin and stdout. The
first line to the child is its configuration, then one line per request,
``[seq, url, [secret, ...], message_id, body, signed_at (epoch seconds)]``;
the child answers one line per request, in any order,
``[seq, status, retry_after, error, detail, duration_ms, excerpt]``.

A sender that dies fails the requests it held with :class:`SenderLost`.
Their deliveries stay claimed until their lease runs out and are then sent
again: at least once still holds, and only those requests may arrive twice.
The pool starts a new sender meanwhile. A sender exits once its stdin closes
and its requests have finished, so one whose main process was killed does
not outlive the request timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from tidings.channels.base import Sent
from tidings.channels.ssrf import SsrfGuard
from tidings.channels.webhook import WebhookChannel, WebhookRequest
from tidings.domain.outcome import ErrorClass, Outcome

log = structlog.get_logger(__name__)

RESTART_DELAY_S = 1.0
READ_CHUNK = 1 << 16


class SenderLost(Exception):
    """The sender process making a request ended before it answered."""


@dataclass(frozen=True)
class SenderConfig:
    """What a sender process needs to know: the first line it reads."""

    connect_timeout_s: float
    request_timeout_s: float
    max_connections: int
    allow_networks: tuple[str, ...]
    log_level: str
    log_format: str

    def channel(self) -> WebhookChannel:
        return WebhookChannel(
            SsrfGuard(allow=[ipaddress.ip_network(net) for net in self.allow_networks]),
            connect_timeout=timedelta(seconds=self.connect_timeout_s),
            request_timeout=timedelta(seconds=self.request_timeout_s),
            max_connections=self.max_connections,
        )


class SenderPool:
    """``count`` sender processes behind the
    :class:`~tidings.channels.webhook.WebhookTransport` interface. ``open`` starts
    them, ``run`` (a supervised task) reads their answers and restarts any that
    dies, ``close`` lets them finish and stop."""

    def __init__(self, count: int, config: SenderConfig) -> None:
        self._senders = [_Sender(number, config) for number in range(count)]

    async def open(self) -> None:
        for sender in self._senders:
            await sender.spawn()

    async def run(self) -> None:
        await asyncio.gather(*(sender.run() for sender in self._senders))

    async def close(self) -> None:
        await asyncio.gather(*(sender.stop() for sender in self._senders))

    async def send(self, request: WebhookRequest, now: datetime) -> Sent:
        sender = min(self._senders, key=_load)
        return await sender.send(request, now)

    @property
    def pids(self) -> list[int]:
        """The sender processes' ids (for tests and operators)."""
        return [s.pid for s in self._senders if s.pid is not None]


def _load(sender: _Sender) -> tuple[bool, int]:
    return (not sender.up.is_set(), len(sender.pending))


class _Sender:
    def __init__(self, number: int, config: SenderConfig) -> None:
        self.number = number
        self._config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._seq = itertools.count()
        self.pending: dict[int, asyncio.Future[Sent]] = {}
        self._out: list[bytes] = []
        self.up = asyncio.Event()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tidings.channels.senders",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._write(orjson.dumps(asdict(self._config)) + b"\n")
        self.up.set()

    async def run(self) -> None:
        """Read answers until the process ends; then fail what it held and start another."""
        while True:
            proc = self._proc
            assert proc is not None, "spawn() first"
            assert proc.stdout is not None
            async for lines in _lines(proc.stdout):
                for line in lines:
                    self._answer(orjson.loads(line))
            self.up.clear()
            lost = SenderLost(f"sender {self.number} (pid {proc.pid}) ended")
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(lost)
            self.pending.clear()
            code = await proc.wait()
            if self._stopping:
                return
            log.error("sender_died", sender=self.number, pid=proc.pid, exit_code=code)
            await asyncio.sleep(RESTART_DELAY_S)
            try:
                await self.spawn()
            except OSError:
                log.exception("sender_restart_failed", sender=self.number)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            async with asyncio.timeout(self._config.request_timeout_s + 5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def send(self, request: WebhookRequest, now: datetime) -> Sent:
        await self.up.wait()
        seq = next(self._seq)
        future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        self.pending[seq] = future
        try:
            self._write(
                orjson.dumps(
                    [
                        seq,
                        request.url,
                        request.secrets,
                        request.message_id,
                        request.body,
                        now.timestamp(),
                    ]
                )
                + b"\n"
            )
            return await future
        finally:
            self.pending.pop(seq, None)

    def _write(self, line: bytes) -> None:
        """Queue ``line``; everything queued in one turn of the loop goes in one write."""
        self._out.append(line)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return  # the sender is gone; run() fails what it held
        proc.stdin.write(data)

    def _answer(self, fields: list[Any]) -> None:
        seq, status, retry_after, error, detail, duration_ms, excerpt = fields
        future = self.pending.get(seq)
        if future is not None and not future.done():
            error_class = None if error is None else ErrorClass(error)
            future.set_result(
                Sent(Outcome(status, error_class, retry_after, detail), duration_ms, excerpt)
            )


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[list[bytes]]:
    """The complete lines of ``stream``, in batches as they arrive, until it ends."""
    rest = b""
    while chunk := await stream.read(READ_CHUNK):
        *lines, rest = (rest + chunk).split(b"\n")
        if lines:
            yield lines


# the sender process -------------------------------------------------------------------


async def _serve() -> None:
    """Read requests from stdin, make them, write the answers to stdout."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    config = SenderConfig(**orjson.loads(await stdin.readline()))

    from tidings import logs

    logs.configure(config.log_level, config.log_format)
    channel = config.channel()
    await channel.open()
    out: list[bytes] = []
    tasks: set[asyncio.Task[None]] = set()

    def flush() -> None:
        transport.write(b"".join(out))
        out.clear()

    async def one(fields: list[Any]) -> None:
        seq, url, secrets, message_id, body, signed_at = fields
        request = WebhookRequest(url, tuple(secrets), message_id, body)
        sent = await channel.send(request, datetime.fromtimestamp(signed_at, UTC))
        o = sent.outcome
        answer = [seq, o.status, o.retry_after, o.error, o.detail, sent.duration_ms, sent.excerpt]
        out.append(orjson.dumps(answer) + b"\n")
        if len(out) == 1:
            loop.call_soon(flush)

    try:
        async for lines in _lines(stdin):
            for line in lines:
                task = asyncio.create_task(one(orjson.loads(line)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        # stdin closed: the main process is stopping or gone; finish what was asked.
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)  # let the last flush run
    finally:
        await channel.close()
        transport.close()


def main() -> None:
    import uvloop

    # The main process decides when a sender stops (it closes the sender's stdin
    # once its requests are answered); a Ctrl-C or a SIGTERM sent to the whole
    # process group must not cut those requests short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    uvloop.run(_serve())


if __name__ == "__main__":
    main()
