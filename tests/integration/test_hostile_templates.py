"""Hostile templates through the whole pipeline: they fail, tidings stays up.

A tenant's templates allocate (filters, methods, the string of a nested value),
spin (nested loops) or take long to compile. Each email of one fails at once,
naming the bound it broke, after one attempt; meanwhile another tenant's email
goes out through a real aiosmtpd server, ``/healthz`` keeps answering, and the
memory of tidings (this process and the render processes it started) stays within
128 MB of what it was before.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable

import httpx

from support.api import bearer, new_tenant
from support.emails import create_template, email_of, send_email
from support.problems import assert_problem
from support.processes import children
from support.smtp import SmtpController
from support.stores import BOTH_BACKENDS
from support.waiting import wait_for
from tidings.app import Tidings
from tidings.email.bounds import RENDER_DEADLINE_S, RENDER_MEMORY_MB

pytestmark = BOTH_BACKENDS

MEMORY_BOUND = 128 * 1024 * 1024
"""How far the memory of tidings may grow while hostile templates render."""

HEALTHZ_WITHIN_S = 1.0

MEMORY = f"needs more than {RENDER_MEMORY_MB} MB of memory to render (the memory bound)"
TIME = f"takes longer than {RENDER_DEADLINE_S:g} s to render (the time bound)"

_ALIASED = "{% set a = 'x' * 100000 %}{{ ([a] * 1000)|join }}"  # 100k chars, joined: 100M
HOSTILE = {
    "center": ("{{ ''|center(200000000) }}", f"text: {MEMORY}"),
    "replace": ("{{ ('x' * 100000)|replace('x', 'x' * 100000) }}", f"text: {MEMORY}"),
    "format": ("{{ '%0200000000d'|format(1) }}", f"text: {MEMORY}"),
    "method": ("{{ 'x'.ljust(200000000) }}", f"text: {MEMORY}"),
    "aliased": (_ALIASED, f"text: {MEMORY}"),
    "loops": (  # 10^8 turns: on a fast, idle machine 25 * 10^6 ended inside the time bound
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        f"text: {TIME}",
    ),
}


# Watching memory and /healthz -------------------------------------------------------------


def _status_kb(pid: int | str, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _tree_rss() -> int:
    """The resident memory of this process and every process it started, in bytes."""
    total = _status_kb("self", "VmRSS")
    for child in children():
        with contextlib.suppress(OSError):
            total += _status_kb(child, "VmRSS")
    return total * 1024


class MemoryWatch:
    """The highest memory of the process tree while watching: samples every 5 ms, and
    this process's own high-water mark (reset at the start), which no sample can miss."""

    def __init__(self) -> None:
        self.baseline = _tree_rss()
        self.peak = self.baseline
        self._own_baseline = _status_kb("self", "VmRSS") * 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-watch")

    def __enter__(self) -> MemoryWatch:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        own_peak = _status_kb("self", "VmHWM") * 1024
        self.peak = max(self.peak, self.baseline + own_peak - self._own_baseline)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, _tree_rss())


class HealthWatch:
    """Asks ``/healthz`` every 50 ms; the longest it took, from asking (or from when
    the next ask was due) to the answer."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.longest = 0.0
        self.answers = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HealthWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while True:
            due = time.monotonic() + 0.05
            await asyncio.sleep(0.05)
            response = await self.client.get("/healthz")
            assert response.status_code == 200, response.text
            self.answers += 1
            self.longest = max(self.longest, time.monotonic() - due)


async def _warm(app: Tidings) -> None:
    """Start every render process, so the baseline holds them (as a running tidings does)."""
    from tidings.email.templates import Content, Template

    template = Template("warm", Content("Hi", "{{ name }}"))
    await asyncio.gather(*(app.emails.renderer.check(template) for _ in range(4)))


async def _until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    await wait_for(check, within=within, every=0.05)


# The tests -------------------------------------------------------------------------------


async def _template(client: httpx.AsyncClient, key: str, name: str, text: str) -> None:
    await create_template(client, key, {"name": name, "subject": "Hello {{ name }}", "text": text})


async def test_hostile_emails_fail_naming_the_bound_while_another_tenants_goes_out(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient, smtp: SmtpController
) -> None:
    _, evil = await new_tenant(smtp_client, "evil")
    _, good = await new_tenant(smtp_client, "good")
    for name, (source, _) in HOSTILE.items():
        await _template(smtp_client, evil, name, source)
    await _template(smtp_client, good, "welcome", "Welcome, {{ name }}!")
    await _warm(smtp_app)

    with MemoryWatch() as memory:
        async with HealthWatch(smtp_client) as health:
            hostile = {name: await send_email(smtp_client, evil, template=name) for name in HOSTILE}
            welcome = await send_email(smtp_client, good, template="welcome")

            async def settled() -> bool:
                emails = [await email_of(smtp_client, evil, i) for i in hostile.values()]
                good_email = await email_of(smtp_client, good, welcome)
                return good_email["status"] == "delivered" and all(
                    e["status"] == "failed" for e in emails
                )

            await _until(settled, within=30)
            await asyncio.sleep(0.3)  # time for a retry, which must not come

    for name, email_id in hostile.items():
        found = await email_of(smtp_client, evil, email_id)
        reason = f"rejected: unsendable: {HOSTILE[name][1]}"
        assert (found["status"], found["failure"]) == ("failed", reason), name
        assert len(found["attempts"]) == 1, name
    [sent] = smtp.mailbox.received
    assert sent["Subject"] == "Hello Ada"
    assert sent.get_content().strip() == "Welcome, Ada!"
    assert health.answers >= 3
    assert health.longest < HEALTHZ_WITHIN_S, f"/healthz took {health.longest:.2f} s"
    print(f"/healthz at most {health.longest:.3f} s; memory grew {memory.growth_mb:.0f} MB")
    assert memory.peak - memory.baseline < MEMORY_BOUND, f"grew {memory.growth_mb:.0f} MB"


async def test_a_template_too_costly_to_compile_is_refused_and_the_api_stays_up(
    smtp_app: Tidings, smtp_client: httpx.AsyncClient
) -> None:
    _, key = await new_tenant(smtp_client)
    await _template(smtp_client, key, "costly", "Hi {{ name }}")
    # Which bound a compile breaks first depends on the machine's speed: on a fast one
    # it can outgrow the memory bound before the time bound, so either is the refusal.
    # A part of 96,600 characters: about three times the time bound to compile on an
    # idle machine of this kind, and within the 100,000-character limit of a part.
    costly = {"subject": "Hi", "text": "{{a+a+a+a+a+a+a+a+a}}" * 4_600}
    costly["html"] = costly["text"].replace("a", "b")
    await _warm(smtp_app)

    with MemoryWatch() as memory:
        async with HealthWatch(smtp_client) as health:
            replaced = await smtp_client.put(
                "/v1/templates/costly", json=costly, headers=bearer(key)
            )
            created = await smtp_client.post(
                "/v1/templates", json={"name": "other", **costly}, headers=bearer(key)
            )

    for response in (replaced, created):
        assert_problem(response, 422, "to compile (the")
        detail = response.json()["detail"]
        assert detail.endswith(
            (
                f"takes longer than {RENDER_DEADLINE_S:g} s to compile (the time bound)",
                f"needs more than {RENDER_MEMORY_MB} MB of memory to compile (the memory bound)",
            )
        ), detail
    kept = await smtp_client.get("/v1/templates/costly", headers=bearer(key))
    assert kept.json()["text"] == "Hi {{ name }}"
    assert (await smtp_client.get("/v1/templates/other", headers=bearer(key))).status_code == 404
    assert health.answers >= 3
    assert health.longest < HEALTHZ_WITHIN_S, f"/healthz took {health.longest:.2f} s"
    print(f"/healthz at most {health.longest:.3f} s; memory grew {memory.growth_mb:.0f} MB")
    assert memory.peak - memory.baseline < MEMORY_BOUND, f"grew {memory.growth_mb:.0f} MB"
