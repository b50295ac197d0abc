"""The lookup that picks an email's template variant, falling back to the default on any failure.

Before sending, the email worker may fetch a URL (a CRM, say) and pick the
template variant named by one field of the JSON answer. :meth:`Lookups.fetch`
never raises for anything the network or the answer did: every failure is an
:attr:`LookupOutcome.ERROR` result with a :class:`LookupReason`,
the caller sends the default variant, and one ``lookup_fallback`` warning is
logged.

The rules, in the order :meth:`Lookups.fetch` applies them:

* One :class:`~tidings.domain.circuit.Breaker` per key (tenant + template):
  while it refuses, no request is made (``breaker_open``). Found and not-found
  answers count as successes, every other error as a failure.
* ``select`` must be a JSON Pointer (RFC 6901), else ``missing_field``.
* The host goes through the SSRF guard: IP literals here, names in the
  session's :class:`~tidings.channels.ssrf.GuardedResolver` (``blocked``).
* One ``GET`` with ``accept: application/json``; redirects are not followed
  (a ``3xx`` is a ``status`` error like any answer but ``200``). Connecting,
  the headers and the body together take at most ``timeout_ms`` (``timeout``);
  a connection failure is ``connect_error``.
* The body is asked for uncompressed and read up to ``max_bytes`` (``too_large``
  beyond; a larger ``Content-Length`` is refused before reading), then parsed
  as JSON (``not_json``).
* The pointer must lead somewhere (``missing_field``) and to a string, number
  or boolean (``wrong_type``); booleans and numbers are taken in their JSON
  spelling (``true``, ``1.5``). A value naming one of ``variants`` is ``FOUND``,
  any other ``NOT_FOUND``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection

import aiohttp
import orjson
import structlog
from yarl import URL

from tidings import __version__
from tidings.channels.ssrf import GuardedResolver, SsrfGuard
from tidings.clock import Clock
from tidings.domain.circuit import Breaker, BreakerPolicy
from tidings.domain.lookup import LookupOutcome, LookupReason, LookupResult
from tidings.exceptions import AddressBlocked

__all__ = [
    "BREAKERS_KEPT",
    "LookupOutcome",
    "LookupReason",
    "LookupResult",
    "Lookups",
    "parse_pointer",
    "resolve_pointer",
]

log = structlog.get_logger(__name__)

BREAKERS_KEPT = 10_000
"""The most keys whose breaker is remembered; the least recently used go first."""

_HEADERS = {
    "accept": "application/json",
    # Uncompressed: a small gzip body cannot then inflate past max_bytes in memory.
    "accept-encoding": "identity",
    "user-agent": f"tidings/{__version__}",
}
_DEFAULT_POLICY = BreakerPolicy()
_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")
_INDEX_MAX_DIGITS = 18  # longer ones are beyond any list orjson can build
_DETAIL_VALUE_CHARS = 100


class _Fallback(Exception):
    """Ends an attempt with an error result; never leaves this module."""

    def __init__(self, reason: LookupReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Lookups:
    """Runs lookups for the email worker, with one circuit breaker per key (tenant id + template
    name). Open it before the first :meth:`fetch` and close it when done."""

    def __init__(
        self,
        guard: SsrfGuard,
        clock: Clock,
        *,
        policy: BreakerPolicy = _DEFAULT_POLICY,
        max_bytes: int = 64 * 1024,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._guard = guard
        self._clock = clock
        self._policy = policy
        self._max_bytes = max_bytes
        self._breakers: dict[str, Breaker] = {}  # least recently used first
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # No cap on connections here: each tenant's lane already bounds its lookups
        # (10 at once), and a shared cap would let one tenant's hung CRM hold them all.
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._guard), ttl_dns_cache=10, limit=0
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No aiohttp timeouts: fetch bounds each lookup as a whole itself.
            timeout=aiohttp.ClientTimeout(),
            auto_decompress=False,
            # Tenants share the session (and may share a CRM): no cookies between them.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self, key: str, url: str, select: str, timeout_ms: int, variants: Collection[str]
    ) -> LookupResult:
        """Look ``select`` up in the JSON at ``url``; never raises for anything the
        network or the answer did (see the module docstring)."""
        if self._session is None:
            raise RuntimeError("Lookups.open() was not awaited")
        allowed, breaker = self._breaker(key).allows(self._policy, self._clock.now())
        self._keep(key, breaker)
        if allowed:
            result = await self._attempt(self._session, url, select, timeout_ms, variants)
            succeeded = result.outcome is not LookupOutcome.ERROR
            self._keep(key, self._breaker(key).record(self._policy, succeeded, self._clock.now()))
        else:
            result = _error(
                LookupReason.BREAKER_OPEN,
                "lookup skipped: its circuit breaker is open after repeated failures",
            )
        if result.outcome is LookupOutcome.ERROR:
            log.warning("lookup_fallback", key=key, reason=result.reason, detail=result.detail)
        return result

    def _breaker(self, key: str) -> Breaker:
        # Re-read on every use: other fetches for the key may have moved it meanwhile.
        return self._breakers.pop(key, None) or Breaker()

    def _keep(self, key: str, breaker: Breaker) -> None:
        self._breakers[key] = breaker
        while len(self._breakers) > BREAKERS_KEPT:
            del self._breakers[next(iter(self._breakers))]

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        url: str,
        select: str,
        timeout_ms: int,
        variants: Collection[str],
    ) -> LookupResult:
        try:
            tokens = parse_pointer(select)
        except ValueError as exc:
            return _error(LookupReason.MISSING_FIELD, str(exc))
        try:
            body = await self._download(session, url, timeout_ms)
            return _select(body, select, tokens, variants)
        except _Fallback as exc:
            return _error(exc.reason, exc.detail)

    async def _download(self, session: aiohttp.ClientSession, url: str, timeout_ms: int) -> bytes:
        try:
            target = URL(url)
            self._guard.check_destination(target.host or "")
            async with asyncio.timeout(timeout_ms / 1000):
                return await self._get(session, target)
        except AddressBlocked as exc:
            raise _Fallback(LookupReason.BLOCKED, exc.detail) from exc
        except TimeoutError as exc:
            raise _Fallback(
                LookupReason.TIMEOUT, f"lookup timed out after {timeout_ms} ms"
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: a URL yarl or the IDNA codec cannot make sense of.
            detail = f"lookup could not connect: {type(exc).__name__}: {exc}"
            raise _Fallback(LookupReason.CONNECT_ERROR, detail) from exc

    async def _get(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        async with session.get(url, headers=_HEADERS, allow_redirects=False) as response:
            if response.status != 200:
                raise _Fallback(
                    LookupReason.STATUS, f"lookup answered HTTP {response.status}, not 200"
                )
            length = response.content_length
            if length is not None and length > self._max_bytes:
                raise _Fallback(LookupReason.TOO_LARGE, self._too_large(f"Content-Length {length}"))
            body = await _read_at_most(response.content, self._max_bytes + 1)
            if len(body) > self._max_bytes:
                raise _Fallback(LookupReason.TOO_LARGE, self._too_large("the body"))
            return body

    def _too_large(self, what: str) -> str:
        return f"lookup answer too large: {what} is over {self._max_bytes} bytes"


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream``: fewer only if it ends first."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _select(
    body: bytes, select: str, tokens: tuple[str, ...], variants: Collection[str]
) -> LookupResult:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Fallback(LookupReason.NOT_JSON, f"lookup answer is not JSON: {exc}") from exc
    try:
        found = resolve_pointer(document, tokens)
    except LookupError as exc:
        raise _Fallback(
            LookupReason.MISSING_FIELD, f"lookup answer has nothing at {select!r}"
        ) from exc
    value = _as_text(found)
    if value is None:
        kind = _json_kind(found)
        detail = f"lookup answer at {select!r} is {kind}, not a string, number or boolean"
        raise _Fallback(LookupReason.WRONG_TYPE, detail)
    shown = _shown(value)
    if value in variants:
        return LookupResult(
            LookupOutcome.FOUND, LookupReason.NONE, value, f"lookup answered {shown} at {select!r}"
        )
    return LookupResult(
        LookupOutcome.NOT_FOUND,
        LookupReason.NONE,
        value,
        f"lookup answered {shown} at {select!r}, which names no variant",
    )


def _error(reason: LookupReason, detail: str) -> LookupResult:
    return LookupResult(LookupOutcome.ERROR, reason, None, detail)


def _as_text(value: object) -> str | None:
    """A JSON scalar in its JSON spelling (strings as they are); None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    return "an object" if isinstance(value, dict) else "an array"


def _shown(value: str) -> str:
    """``value`` quoted for a detail, cut short if long."""
    if len(value) > _DETAIL_VALUE_CHARS:
        value = value[:_DETAIL_VALUE_CHARS] + "..."
    return orjson.dumps(value).decode()


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of an RFC 6901 JSON Pointer, unescaped.

    ``""`` is the whole document (no tokens); otherwise the pointer starts with
    ``/``, and ``~1`` stands for ``/`` and ``~0`` for ``~`` in each token.
    Raises ``ValueError`` for anything else.
    """
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON Pointer: it must be empty or start with /")
    if _BAD_ESCAPE.search(pointer):
        raise ValueError(f"{pointer!r} is not a JSON Pointer: ~ must be followed by 0 or 1")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/"))


def resolve_pointer(document: object, pointer: str | tuple[str, ...]) -> object:
    """What ``pointer`` (a JSON Pointer, or its :func:`parse_pointer` tokens) refers to
    in ``document``, a parsed JSON value.

    Objects are entered by key, arrays by a decimal index without leading zeros.
    Raises ``LookupError`` when there is nothing there (``-``, the position after
    an array's end, included) and ``ValueError`` if ``pointer`` is malformed.
    """
    tokens = parse_pointer(pointer) if isinstance(pointer, str) else pointer
    current = document
    for token in tokens:
        if isinstance(current, dict):
            current = current[token]  # KeyError when absent
        elif isinstance(current, list):
            current = current[_index(token, len(current))]
        else:
            raise LookupError(f"cannot look up {token!r} inside a {type(current).__name__}")
    return current


def _index(token: str, length: int) -> int:
    if len(token) > _INDEX_MAX_DIGITS or not _INDEX.fullmatch(token):
        raise LookupError(f"{token!r} is not an array index")
    index = int(token)
    if index >= length:
        raise IndexError(f"index {index} is past the end of an array of {length}")
    return index
