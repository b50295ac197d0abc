"""The child process that compiles and renders tenants' templates, bounded by the OS.

``python -m tidings.email.render_process`` is started by
:class:`tidings.email.renderer.Renderer`, and answers one request at a time on its
stdin and stdout: each a frame, a 4-byte big-endian length then JSON. Its first
frame says it is ready. It exits when its stdin closes, so it never outlives
tidings.

Why a process: a template is the tenant's code, and the ways it can allocate
(every filter, method, operator, and the string of any value, however nested) or
spin (loops, macros, a regular expression) are too many to bound one by one and
be sure. Here the OS holds the address space to what the process had after
start-up plus :data:`~tidings.email.bounds.RENDER_MEMORY_MB` (``RLIMIT_AS``), so
an allocation past it is a :exc:`MemoryError`; an alarm raises
:exc:`~tidings.email.bounds.Overtime` at the deadline (the parent kills the process
if that does not end the request soon after). Either becomes a
:exc:`~tidings.email.bounds.BoundExceeded` naming the part, answered like any other
error of the template, and the process serves on.

Requests (``op``): ``check`` (compile a template: its fields), ``render`` (a
variant with values: its content) and ``url`` (the lookup URL with values).
Answers: ``{"ok": ...}`` or ``{"error": kind, "detail": ..., "bound": ...}``.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import signal
import struct
import sys
from collections.abc import Mapping
from types import FrameType
from typing import IO, Any, Final

import orjson

from tidings.email import templates
from tidings.email.bounds import RENDER_DEADLINE_S, RENDER_MEMORY_MB, Bound, BoundExceeded, Overtime
from tidings.email.stored import template_from
from tidings.exceptions import InvalidInput, InvalidTemplate, MissingField

HEADER: Final = struct.Struct(">I")
READY: Final = b'{"ok":"ready"}'


def dumps(document: object) -> bytes:
    """JSON, with the standard library for what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        import json  # rare: kept out of the render process's start-up

        return json.dumps(document).encode()


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        import json

        return json.loads(data)


def write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(HEADER.pack(len(data)))
    out.write(data)
    out.flush()


def main() -> None:
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the parent's pipe
    headroom = RENDER_MEMORY_MB * 1024 * 1024
    size = _status("VmSize")
    if size is not None:
        with contextlib.suppress(ValueError):  # a lower limit set already
            resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
    # Compiled templates are dropped when they hold half the headroom: a render must
    # find its memory free, whatever was compiled before it.
    keep_below = (_status("VmRSS") or 0) + headroom // 2
    signal.signal(signal.SIGALRM, _overtime)
    # Ctrl-C in a terminal, or a service manager's SIGTERM to the whole group, must not
    # end a render tidings is still draining: this process ends when tidings closes
    # the pipe (or is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(BrokenPipeError):
        write_frame(answers, READY)
        while True:
            header = requests.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            (length,) = HEADER.unpack(header)
            compiled = templates.compiled_count()
            write_frame(answers, _answer(requests.read(length)))
            if templates.compiled_count() > compiled and (_status("VmRSS") or 0) > keep_below:
                templates.forget_compiled()
                gc.collect()
        if templates.compiled_count() > compiled and (_status("VmRSS") or 0) > keep_below:
            templates.forget_compiled()
            gc.collect()


def _status(name: str) -> int | None:
    """A size from /proc/self/status (``VmSize``, ``VmRSS``) in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _overtime(signum: int, frame: FrameType | None) -> None:
    raise Overtime


def _answer(request: bytes) -> bytes:
    """The answer to one request, as JSON. The deadline covers everything but replying."""
    signal.setitimer(signal.ITIMER_REAL, RENDER_DEADLINE_S)
    try:
        try:
            answer: dict[str, Any] = {"ok": _perform(loads(request))}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Overtime:
        answer = _error(BoundExceeded.of(Bound.TIME, None))
    except MemoryError:
        answer = _error(BoundExceeded.of(Bound.MEMORY, None))
    except InvalidInput as exc:
        answer = _error(exc)
    except Exception as exc:  # a fault of tidings, not of the template
        answer = {"error": "internal", "detail": repr(exc), "bound": None}
    try:
        return dumps(answer)
    except MemoryError:
        return dumps(_error(BoundExceeded.of(Bound.MEMORY, None)))


def _perform(request: Mapping[str, Any]) -> Any:
    """What ``request`` asks; a template is compiled again after dropping the cache
    once, if it ran out of memory while compiled templates were kept."""
    try:
        return _do(request)
    except BoundExceeded as exc:
        if exc.bound is not Bound.MEMORY or not templates.compiled_count():
            raise
        templates.forget_compiled()
        gc.collect()
        return _do(request)


def _do(request: Mapping[str, Any]) -> Any:
    template = template_from(request["template"])
    op = request["op"]
    if op == "check":
        templates.check(template)
        return sorted(templates.fields_used(template))
    if op == "render":
        content = templates.render(template, request["variant"], request["values"])
        return {"subject": content.subject, "text": content.text, "html": content.html}
    if op == "url":
        assert template.lookup is not None, "a url request needs a template with a lookup"
        return templates.render_lookup_url(template.lookup, request["values"])
    raise ValueError(f"unknown request {op!r}")


def _error(exc: InvalidInput) -> dict[str, Any]:
    kind = (
        "bound"
        if isinstance(exc, BoundExceeded)
        else "missing_field"
        if isinstance(exc, MissingField)
        else "invalid_template"
        if isinstance(exc, InvalidTemplate)
        else "invalid_input"
    )
    bound = exc.bound.value if isinstance(exc, BoundExceeded) else None
    return {"error": kind, "detail": exc.detail, "bound": bound}


if __name__ == "__main__":
    main()
