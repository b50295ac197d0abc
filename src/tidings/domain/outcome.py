"""What one attempt produced, as the retry policy, the breaker and the metrics read it.

An :class:`Outcome` is written by a channel (an HTTP answer, an SMTP reply, or the
error that stood in for one) and judged by :func:`tidings.domain.retry.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = ["ErrorClass", "Outcome", "Wire"]

Wire = Literal["HTTP", "SMTP"]
"""What an answer's status is a code of."""


class ErrorClass(StrEnum):
    """Why an attempt has no answer to judge, as channels report it and attempt records,
    logs and the sender processes' wire keep it (by value)."""

    TIMEOUT = "timeout"
    """No answer in time: the receiver's, the SMTP server's, or the attempt's own bound."""
    CONNECT_ERROR = "connect_error"
    """No connection (or no SMTP session) could be made."""
    CONNECTION_CLOSED = "connection_closed"
    """The other side closed the connection before answering in full."""
    CLIENT_ERROR = "client_error"
    """Any other failure of the client: its exception's type and text are the detail."""
    PROTOCOL_ERROR = "protocol_error"
    """The SMTP server's answer broke the protocol."""
    BLOCKED = "blocked"
    """The address guard refused the destination: dead at once, never retried."""
    INVALID_MESSAGE = "invalid_message"
    """The email could not be written as a valid message: a permanent refusal."""
    UNSENDABLE = "unsendable"
    """The email cannot be built as it stands (its template deleted or broken)."""

    @property
    def says_nothing_of_the_receiver(self) -> bool:
        """True for a refusal made before anything reached the receiver (the guard's,
        or an email that could not be built): it must not move the receiver's breaker."""
        return self in _NOT_THE_RECEIVERS


_NOT_THE_RECEIVERS = frozenset(
    {ErrorClass.BLOCKED, ErrorClass.UNSENDABLE, ErrorClass.INVALID_MESSAGE}
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced."""

    status: int | None
    """The HTTP status, or ``None`` when there was no response."""
    error: ErrorClass | None = None
    """The error class when there was no response."""
    retry_after: str | None = None
    """The raw ``Retry-After`` header value, if the response had one."""
    detail: str | None = None
    """Human detail, e.g. why the address guard refused the destination."""
    permanent: bool = False
    """The receiver refused for good (an SMTP 5xx reply): the delivery dies, unretried."""
    protocol: Wire = "HTTP"
    """What ``status`` is a code of: ``"HTTP"`` or ``"SMTP"``."""

    @property
    def succeeded(self) -> bool:
        """True for a ``2xx`` answer only (``3xx`` is not success: redirects are not followed)."""
        return self.status is not None and 200 <= self.status <= 299

    @property
    def status_class(self) -> str:
        """A low-cardinality metrics label: ``"1xx"`` .. ``"5xx"``, ``"none"`` or ``"other"``.

        ``"none"`` means no response; ``"other"`` a status outside 100..599.
        """
        if self.status is None:
            return "none"
        if 100 <= self.status <= 599:
            return f"{self.status // 100}xx"
        return "other"

    @property
    def summary(self) -> str:
        """A short description for reasons and logs: ``"HTTP 503"``, ``"timeout"``, ..."""
        if self.status is not None:
            return f"{self.protocol} {self.status}"
        return self.error or "no response"
