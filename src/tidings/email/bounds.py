"""What bounds the rendering of a tenant's template, and the error that names the bound.

A template is the tenant's code, run by tidings: it must not be able to take the
process's memory or its time. :mod:`tidings.email.renderer` runs every compile and
render in a child process that the OS holds to :data:`RENDER_MEMORY_MB` of address
space beyond its start, and that is stopped at :data:`RENDER_DEADLINE_S`; the
sandbox (:mod:`tidings.email.templates`) refuses a part longer than
:data:`MAX_RENDERED` characters. Breaking any of them is :exc:`BoundExceeded`, an
:exc:`~tidings.exceptions.InvalidTemplate`: the API refuses such a template with a
422 and an email of it fails at once, never retried, with the detail as its reason.
"""

from __future__ import annotations

import enum
from typing import Final

from tidings.exceptions import InvalidTemplate

__all__ = [
    "MAX_RENDERED",
    "RENDER_DEADLINE_S",
    "RENDER_MEMORY_MB",
    "Bound",
    "BoundExceeded",
    "Overtime",
]

MAX_RENDERED: Final = 1_000_000
"""Characters a part may render to."""

RENDER_DEADLINE_S: Final = 1.0
"""How long one compile or render (every part of an email) may take."""

RENDER_MEMORY_MB: Final = 48
"""Memory a render may take beyond the renderer's own, in MiB."""


class Bound(enum.StrEnum):
    """Which bound a template broke."""

    SIZE = "size"
    TIME = "time"
    MEMORY = "memory"


class BoundExceeded(InvalidTemplate):
    """A template broke ``bound``; the detail names the part where it is known."""

    def __init__(self, bound: Bound, detail: str) -> None:
        super().__init__(detail)
        self.bound = bound

    @classmethod
    def of(cls, bound: Bound, part: str | None, doing: str = "render") -> BoundExceeded:
        """The error for ``part`` (``"text"``, ``"variants.vip.html"``; None: unknown)."""
        what = {
            Bound.SIZE: f"renders to more than {MAX_RENDERED} characters",
            Bound.TIME: f"takes longer than {RENDER_DEADLINE_S:g} s to {doing}",
            Bound.MEMORY: f"needs more than {RENDER_MEMORY_MB} MB of memory to {doing}",
        }[bound]
        where = "" if part is None else f"{part}: "
        return cls(bound, f"{where}{what} (the {bound} bound)")


class Overtime(BaseException):
    """Raised in the renderer process by its alarm at the deadline.

    A ``BaseException``, like ``KeyboardInterrupt``, so that neither Jinja nor a
    template's own error handling can swallow it on the way out."""
