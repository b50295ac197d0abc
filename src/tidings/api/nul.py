"""NUL characters are refused at the edge, in every part of every request.

PostgreSQL text cannot hold U+0000 (SQLite can), many receivers and mail
servers cut a string there, and no field of the API has a use for it. So one
check, ahead of all routing, refuses a NUL in the path, a query parameter, a
header or anywhere in a JSON body (a key or a string value, payloads too)
with a 422 problem naming where it is: both backends answer alike, and no
route has to remember it.

It costs ingest one substring search of the raw body: a JSON string can hold
NUL only as the escape ``\\u0000`` (a raw 0x00 byte is not JSON), so a body
without those six bytes is passed on untouched, and only one with them is
parsed to find the field (or to find it was a ``\\\\u0000``, a backslash
before ``u0000``, which is no NUL).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.api import problems

_ESCAPED = b"\\u0000"
_MESSAGE = "NUL characters (U+0000) are not accepted"


NO_NUL = "^[^\\u0000]*$"


def declare(document: dict[str, Any]) -> None:
    """Say in the OpenAPI document that no string holds a NUL: every string schema, and
    the names of every object's properties, get the pattern ``NO_NUL`` (beside their own,
    if they have one)."""
    if document.get("type") == "object":
        _no_nul(document.setdefault("propertyNames", {}))
    if document.get("type") == "string":
        _no_nul(document)
    for value in document.values():
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, dict):
                declare(item)


def _no_nul(schema: dict[str, Any]) -> None:
    if "pattern" not in schema:
        schema["pattern"] = NO_NUL
    elif NO_NUL not in (rule.get("pattern") for rule in schema.get("allOf", ())):
        schema.setdefault("allOf", []).append({"pattern": NO_NUL})


class NulGuard:
    """Refuse a request holding a NUL with a 422 problem that names the field."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _in_target(scope)
        if where is None and scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                body = await _read(receive)
            except HTTPException as exc:  # the body limit, met while reading
                await problems.problem_for(exc, scope["path"])(scope, receive, send)
                return
            where = _in_body(body)
            receive = _replaying(body, receive)
        if where is None:
            await self.app(scope, receive, send)
            return
        error = {"loc": where, "msg": _MESSAGE, "type": "string_nul"}
        refusal = problems.problem(422, "Invalid input", f"{where}: {_MESSAGE}", errors=[error])
        await refusal(scope, receive, send)


def _in_target(scope: Scope) -> str | None:
    """Where a NUL is in the path, the query or the headers, if anywhere."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope["query_string"]
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return f"query.{name.replace(chr(0), '')}"
    for name, value in scope["headers"]:
        if b"\x00" in value:
            return f"header.{name.decode('latin-1')}"
    return None


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the body read already to the app, then the rest as it comes."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _in_body(body: bytes) -> str | None:
    """Where a NUL is in a JSON body, if anywhere (a body that is not JSON is left to the
    route, which says so)."""
    if _ESCAPED not in body:
        return None
    try:  # json, not orjson: it reads integers of any size
        return _find(json.loads(body), ())
    except (ValueError, RecursionError):
        return None


def _find(value: Any, path: tuple[str, ...]) -> str | None:
    if isinstance(value, str):
        return _located(path) if "\x00" in value else None
    items: list[tuple[str, Any]]
    if isinstance(value, dict):
        for key in value:
            if "\x00" in key:
                return _located((*path, key.replace("\x00", "\\u0000")))
        items = list(value.items())
    elif isinstance(value, list):
        items = [(str(i), item) for i, item in enumerate(value)]
    else:
        return None
    for key, item in items:
        found = _find(item, (*path, key))
        if found is not None:
            return found
    return None


def _located(path: tuple[str, ...]) -> str:
    return ".".join(path) or "body"
