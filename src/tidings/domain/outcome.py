"""What one attempt produced, as the retry policy, the breaker and the metrics read it.

An :class:`Outcome` is written by a channel (an HTTP answer, an SMTP reply, or the
error that stood in for one) and judged by :func:`tidings.domain.retry.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced."""

    status: int | None
    """The HTTP status, or ``None`` when there was no response."""
    error: str | None = None
    """The error class when there was no response: ``"timeout"``, ``"connect_error"``,
    ``"connection_closed"``, ``"blocked"``, ..."""
    retry_after: str | None = None
    """The raw ``Retry-After`` header value, if the response had one."""
    detail: str | None = None
    """Human detail, e.g. why the address guard refused the destination."""
    permanent: bool = False
    """The receiver refused for good (an SMTP 5xx reply): the delivery dies, unretried."""
    protocol: str = "HTTP"
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
