"""The SMTP server setting (``TIDINGS_SMTP_URL``), parsed: where and how to submit mail.

It lives beside the settings, not in the email channel, because :mod:`tidings.config`
checks the URL when the settings are read, and the channel only uses the result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["DEFAULT_TIMEOUT_S", "SmtpSettings", "parse_smtp_url"]

DEFAULT_TIMEOUT_S = 15.0
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_QUERY_KEYS = ("from", "starttls", "timeout")
_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")
_IDENTIFIER = re.compile(r"[A-Za-z_]{1,32}")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how to submit mail; see :func:`parse_smtp_url`."""

    host: str
    port: int
    tls: Literal["none", "starttls", "tls"]
    """``"none"``: plain SMTP (no opportunistic STARTTLS either); ``"starttls"``: upgrade
    after connecting, required; ``"tls"``: implicit TLS from the first byte (smtps)."""
    username: str | None
    password: str | None = field(repr=False)
    sender: str | None
    """The envelope sender (``MAIL FROM``, where bounces go), the URL's ``from=``;
    ``None``: each email's own From address."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """The limit on connecting and on each command's reply."""


def parse_smtp_url(url: str) -> SmtpSettings:
    """Parse ``smtp://[user[:pass]@]host[:port][?starttls=true|false&from=addr&timeout=15]``
    or ``smtps://[user[:pass]@]host[:port][?from=addr&timeout=15]`` (implicit TLS).

    The port defaults to 25 for smtp (STARTTLS only when asked) and 465 for smtps; the
    user name and password are percent-decoded. Anything else raises ``ValueError``
    naming the problem; the message never contains the password.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise ValueError("SMTP URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        shown = f"{scheme!r}" if _IDENTIFIER.fullmatch(scheme) else "that scheme"
        raise ValueError(f"SMTP URL must start with smtp:// or smtps://, not {shown}")
    if not parts.hostname:
        raise ValueError("SMTP URL has no host")
    port = _port(parts.netloc, _DEFAULT_PORTS[scheme])
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("SMTP URL must not have a path or a #fragment")
    if parts.password is not None and not parts.username:
        raise ValueError("SMTP URL has a password but no user name")
    query = _query(parts.query)
    starttls = _flag(query.get("starttls"), scheme)
    return SmtpSettings(
        host=parts.hostname,
        port=port,
        tls="tls" if scheme == "smtps" else "starttls" if starttls else "none",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        sender=_sender(query.get("from")),
        timeout_s=_timeout(query.get("timeout")),
    )


def _port(netloc: str, default: int) -> int:
    # Not SplitResult.port: its errors quote the text, which may be part of a password
    # with an unencoded "/", "?" or "#" in it. For the same reason this never echoes it.
    hostport = netloc.rpartition("@")[2]
    text = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    if ":" not in text:
        return default
    digits = text.rpartition(":")[2]
    if not (digits.isascii() and digits.isdigit() and 1 <= int(digits) <= 65535):
        raise ValueError(
            "SMTP URL port must be a number from 1 to 65535 (percent-encode any '/', '?', "
            "'#' or '@' in the user name or password)"
        )
    return int(digits)


def _query(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key not in _QUERY_KEYS:
            shown = f" {key!r}" if _IDENTIFIER.fullmatch(key) else ""
            raise ValueError(
                f"SMTP URL has an unknown query parameter{shown}; known: {', '.join(_QUERY_KEYS)}"
            )
        if key in found:
            raise ValueError(f"SMTP URL gives {key}= more than once")
        found[key] = value
    return found


def _flag(value: str | None, scheme: str) -> bool:
    if value is None:
        return False
    if scheme == "smtps":
        raise ValueError(
            "SMTP URL starttls= does not apply to smtps://, which is TLS from the start"
        )
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError("SMTP URL starttls= must be true or false (or 1 or 0)")
    return value.lower() in ("true", "1")


def _sender(value: str | None) -> str | None:
    if value is None:
        return None
    if not _ADDRESS.fullmatch(value):
        raise ValueError("SMTP URL from= must be a bare address like name@example.com")
    return value


def _timeout(value: str | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("SMTP URL timeout= must be a positive number of seconds")
    return seconds
