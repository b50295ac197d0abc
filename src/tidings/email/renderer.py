"""Compiling and rendering tenants' templates outside tidings' own process.

Every compile (when the API accepts a template, or needs its fields) and every
render (an email's content, its lookup URL) is a request to a child process (see
:mod:`tidings.email.render_process`), which the OS holds to
:data:`~tidings.email.bounds.RENDER_MEMORY_MB` and which is killed if it outlasts
:data:`~tidings.email.bounds.RENDER_DEADLINE_S` by :data:`KILL_GRACE_S`. So no
template can take tidings' memory, nor hold its event loop: the loop only encodes
the request and decodes the answer, and a thread waits for the child.

There are :data:`CHILDREN` children, each owned by one thread of a small pool. A
delivering process starts them with :meth:`Renderer.open`; elsewhere (an API-only
process, which compiles only when a template is saved or first used) each starts
when its thread first needs it. A child killed at the deadline is started again on the next request.
Fields are kept by the hash of the definition, so accepting an email costs no
request once its template is known.

The price is a round trip per request: 0.12 to 0.3 ms more of tidings' CPU per
render (measured with timeit), against about 7 ms for the whole attempt of an
email (docs/benchmarks.md, scenario (e)). Each delivering process also holds its
children, about 21 MB each, started with the engine: a test suite that starts
many engines pays for them each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Final

from tidings.email import templates
from tidings.email.bounds import RENDER_DEADLINE_S, Bound, BoundExceeded
from tidings.email.render_process import HEADER, READY, dumps, loads, write_frame
from tidings.exceptions import InvalidInput, InvalidTemplate, MissingField

__all__ = ["CHILDREN", "KILL_GRACE_S", "Renderer"]

CHILDREN: Final = 2
"""How many renders may run at once (a hostile template holds one for its deadline)."""

KILL_GRACE_S: Final = 0.5
"""How long past the deadline a child may take to answer before it is killed."""

START_TIMEOUT_S: Final = 30.0
"""How long a new child may take to start (importing Jinja on a loaded machine)."""

MAX_ANSWER: Final = 64 * 1024 * 1024
"""The longest answer read from a child: three parts of a million characters, escaped."""

FIELDS_KEPT: Final = 10_000


class Renderer:
    """The children that compile and render templates; see the module's docstring."""

    def __init__(self, children: int = CHILDREN) -> None:
        self._size = children
        self._executor = ThreadPoolExecutor(children, thread_name_prefix="tidings-render")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closed = False
        self._fields: dict[bytes, frozenset[str]] = {}

    async def open(self) -> None:
        """Start every child now rather than at its first request, so that no email's
        attempt waits for one to start (a delivering process calls this at start)."""
        loop = asyncio.get_running_loop()
        # Each call blocks its thread until its child is ready, so each runs on a
        # thread of its own and starts that thread's child.
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, self._child) for _ in range(self._size))
        )

    async def check(self, template: templates.Template) -> frozenset[str]:
        """Refuse ``template`` if it cannot work (see :func:`templates.check`), or
        compiling it breaks a bound; the fields it uses."""
        fields = frozenset(await self._ask("check", template))
        self._keep(_key(template), fields)
        return fields

    async def fields(self, template: templates.Template) -> frozenset[str]:
        """The fields ``template`` uses (see :func:`templates.fields_used`)."""
        known = self._fields.get(_key(template))
        return known if known is not None else await self.check(template)

    async def render(
        self, template: templates.Template, variant: str | None, values: Mapping[str, Any]
    ) -> templates.Content:
        """Like :func:`templates.render`, within the bounds."""
        content = await self._ask("render", template, variant=variant, values=values)
        return templates.Content(content["subject"], content["text"], content["html"])

    async def render_lookup_url(
        self, template: templates.Template, values: Mapping[str, Any]
    ) -> str:
        """Like :func:`templates.render_lookup_url` for ``template.lookup``, within the bounds."""
        url: str = await self._ask("url", template, values=values)
        return url

    async def close(self) -> None:
        """Stop every child and the threads; a request under way fails."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            child.kill()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _ask(self, op: str, template: templates.Template, **fields: Any) -> Any:
        request = dumps({"op": op, "template": _definition(template), **fields})
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self._executor, self._ask_blocking, request)
        if "ok" in answer:
            return answer["ok"]
        raise _error(answer)

    def _ask_blocking(self, request: bytes) -> dict[str, Any]:
        """On a thread of the pool: ``request`` answered by this thread's child.

        A child that dies while answering may have been killed from outside (the
        OOM killer, an operator): the request is asked once more of a new child, and
        only if that one dies too is the template held to blame."""
        for _ in range(2):
            child = self._child()
            try:
                return child.ask(request, RENDER_DEADLINE_S + KILL_GRACE_S)
            except TimeoutError:
                self._stop(child)
                return _answer_of(BoundExceeded.of(Bound.TIME, None))
            except (OSError, EOFError, ValueError):
                self._stop(child)
                if self._closed:
                    raise RuntimeError("the renderer was closed") from None
        return {"error": "stopped", "detail": "rendering stopped the renderer process, twice"}

    def _child(self) -> _Child:
        """This thread's child, started if it has none (or it died)."""
        child: _Child | None = getattr(self._local, "child", None)
        if child is None or not child.alive():
            child = self._local.child = self._start()
        return child

    def _start(self) -> _Child:
        with self._lock:
            if self._closed:
                raise RuntimeError("the renderer is closed")
            child = _Child()
            self._children.add(child)
        child.wait_ready(START_TIMEOUT_S)
        return child

    def _stop(self, child: _Child) -> None:
        child.kill()
        self._local.child = None
        with self._lock:
            self._children.discard(child)

    def _keep(self, key: bytes, fields: frozenset[str]) -> None:
        if len(self._fields) >= FIELDS_KEPT:
            self._fields.clear()
        self._fields[key] = fields


class _Child:
    """One render process and its pipes; used by one thread at a time."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tidings.email.render_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._in: IO[bytes] = self._process.stdin
        self._out = self._process.stdout.fileno()

    def alive(self) -> bool:
        return self._process.poll() is None

    def wait_ready(self, timeout_s: float) -> None:
        try:
            if self._read(time.monotonic() + timeout_s) != READY:
                raise EOFError("the renderer did not say it was ready")
        except BaseException:
            self.kill()
            raise

    def ask(self, request: bytes, timeout_s: float) -> dict[str, Any]:
        """The child's answer to ``request``; :exc:`TimeoutError` past ``timeout_s``,
        :exc:`EOFError` or :exc:`OSError` if the child is gone."""
        write_frame(self._in, request)
        answer: dict[str, Any] = loads(self._read(time.monotonic() + timeout_s))
        return answer

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _read(self, deadline: float) -> bytes:
        (length,) = HEADER.unpack(self._read_exactly(HEADER.size, deadline))
        if length > MAX_ANSWER:
            raise ValueError(f"an answer of {length} bytes")
        return self._read_exactly(length, deadline)

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        while size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self._out, min(size, 1 << 20))
            if not chunk:
                raise EOFError("the renderer is gone")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def _definition(template: templates.Template) -> dict[str, Any]:
    """``template`` as the API shows it (see :func:`tidings.email.stored.template_from`)."""
    content = template.content
    definition: dict[str, Any] = {
        "name": template.name,
        "subject": content.subject,
        "text": content.text,
        "html": content.html,
        "variants": {key: dataclasses.asdict(v) for key, v in template.variants.items()},
    }
    if template.lookup is not None:
        definition["lookup"] = dataclasses.asdict(template.lookup)
    return definition


def _key(template: templates.Template) -> bytes:
    return hashlib.sha256(dumps(_definition(template))).digest()


def _answer_of(exc: BoundExceeded) -> dict[str, Any]:
    return {"error": "bound", "detail": exc.detail, "bound": exc.bound.value}


def _error(answer: Mapping[str, Any]) -> Exception:
    kind, detail = answer["error"], answer["detail"]
    if kind == "bound":
        return BoundExceeded(Bound(answer["bound"]), detail)
    if kind == "missing_field":
        return MissingField(detail)
    if kind in ("invalid_template", "stopped"):
        return InvalidTemplate(detail)
    if kind == "invalid_input":
        return InvalidInput(detail)
    return RuntimeError(f"the renderer failed: {detail}")
