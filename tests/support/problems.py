"""RFC 9457 problem documents, and requests that must be refused with one while changing
nothing that was accepted before them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from support.api import admin, bearer

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, fragment: str) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem document of ``status`` whose detail says ``fragment``."""
    context = (
        f"{response.request.method} {response.request.url} -> "
        f"{response.status_code} {response.text[:600]}"
    )
    assert response.status_code == status, context
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == PROBLEM, context
    body = response.json()
    assert isinstance(body, dict), context
    assert {"type", "title", "status", "detail"} <= body.keys(), context
    assert body["status"] == status, context
    for name in ("type", "title"):
        assert isinstance(body[name], str), context
        assert body[name], context
    assert isinstance(body["detail"], str), context
    assert fragment.lower() in body["detail"].lower(), context
    return body


UNSET: Any = object()


@dataclass(frozen=True)
class Bad:
    """One request that must be refused with ``status`` and a detail containing ``fragment``.

    ``path`` may name placeholders the test's world fills in (``{endpoint_id}``,
    ``{name}``, ...). ``auth`` is ``"tenant"`` (the world's key), ``"admin"``,
    ``"none"``, or a literal ``Authorization`` header value.
    """

    method: str
    path: str
    status: int
    fragment: str
    json: Any = UNSET
    content: bytes | None = None
    params: dict[str, Any] | None = None
    auth: str = "tenant"
    headers: dict[str, str] = field(default_factory=dict)
    title: str | None = None


def credentials(auth: str, key: str) -> dict[str, str]:
    """The ``Authorization`` header ``Bad.auth`` names, with the tenant's ``key``."""
    if auth == "tenant":
        return bearer(key)
    if auth == "admin":
        return admin()
    if auth == "none":
        return {}
    return {"authorization": auth}


async def send_bad(
    client: httpx.AsyncClient, bad: Bad, key: str, **placeholders: str
) -> httpx.Response:
    """Send ``bad``, its path filled in with ``placeholders``."""
    headers = {**credentials(bad.auth, key), **bad.headers}
    kwargs: dict[str, Any] = {}
    if bad.json is not UNSET:
        kwargs["json"] = bad.json
    if bad.content is not None:
        kwargs["content"] = bad.content
        headers.setdefault("content-type", "application/json")
    path = bad.path.format(**placeholders)
    return await client.request(bad.method, path, headers=headers, params=bad.params, **kwargs)


def assert_refused(response: httpx.Response, bad: Bad) -> dict[str, Any]:
    """``response`` refuses ``bad`` as it should: its status, detail and title."""
    body = assert_problem(response, bad.status, bad.fragment)
    if bad.title is not None:
        assert body["title"] == bad.title, response.text
    return body


async def refuse_each(
    cases: Sequence[Bad],
    request: Callable[[Bad], Awaitable[httpx.Response]],
    snapshot: Callable[[], Awaitable[Any]],
    before: Any,
) -> None:
    """Send every bad request with ``request``: each is refused as it should be, and
    leaves ``snapshot()`` (what was accepted, as the API shows it) as it was ``before``."""
    for bad in cases:
        assert_refused(await request(bad), bad)
        assert await snapshot() == before, f"{bad} changed what was already accepted"
