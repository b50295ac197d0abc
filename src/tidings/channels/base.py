"""What the engine delivers through: one :class:`Channel` per endpoint kind.

The engine claims a delivery, asks the channel of its endpoint's kind to
deliver it, judges the :class:`Sent` it gets back with the retry policy, and
asks the same channel what else the attempt's result records. It never asks
which kind of endpoint it holds: a new kind is a new channel in the mapping the
composition root builds (``tidings.app``), nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tidings.domain.models import Claimed, EmailOutcome, Endpoint
from tidings.domain.outcome import Outcome
from tidings.domain.retry import Decision

__all__ = ["Channel", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One attempt's outcome, with what the attempt record keeps."""

    outcome: Outcome
    duration_ms: float
    excerpt: str | None


class Channel(Protocol):
    """How deliveries to one kind of endpoint are made."""

    def deliver(self, endpoint: Endpoint, job: Claimed, now: datetime) -> Awaitable[Sent]:
        """Attempt ``job`` once, to ``endpoint``, as of ``now``; never raises for
        anything the receiver or the network did (that is the outcome's to say).
        The engine bounds the attempt by the request timeout and, past it, judges
        a :class:`Sent` of its own (an :attr:`~ErrorClass.TIMEOUT`) instead."""
        ...

    def settle(
        self, endpoint: Endpoint, job: Claimed, sent: Sent, decision: Decision, now: datetime
    ) -> EmailOutcome | None:
        """What the attempt's result records besides the attempt, once the policy has
        judged ``sent`` (an email's variant and its status callback); ``sent`` may be
        the engine's own, for an attempt that outlasted its bound."""
        ...
