"""Bad email input gets a clear error and loses nothing.

The email routes (``/v1/templates``, ``/v1/emails``, ``/v1/sink/emails``) follow
the rule of ``test_api_input.py``: every request that can be wrong is refused with
an RFC 9457 problem document (``application/problem+json`` with ``type``,
``title``, ``status`` and a ``detail`` that says why), and nothing accepted before
it is harmed: the tenant's templates read back exactly as they were, the email
accepted before the refusals still reads as delivered, the mail sink lists exactly
the emails accepted, and an email sent after the refusals is delivered too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.api import bearer, chunked, new_tenant
from support.emails import create_template
from support.problems import UNSET, Bad, assert_problem, refuse_each, send_bad
from support.waiting import wait_for
from tidings import ids

LIMIT = 256 * 1024  # the default max_body_bytes

TEMPLATES = "/v1/templates"
TEMPLATE = "/v1/templates/{name}"
EMAILS = "/v1/emails"
EMAIL = "/v1/emails/{email_id}"
SINK = "/v1/sink/emails"

CONFIRM: dict[str, Any] = {
    "name": "confirm",
    "subject": "Please confirm, {{ name }}",
    "text": "Hello {{ name }},\nplease confirm.\n",
    "html": "<p>Hello {{ name }}</p>",
}
BODY = {key: value for key, value in CONFIRM.items() if key != "name"}  # a PUT body
SEND: dict[str, Any] = {
    "to": "ada@example.com",
    "template": "confirm",
    "personalisation": {"name": "Ada"},
}
LOOKUP: dict[str, Any] = {"url": "http://127.0.0.1:9/people?email={{ to }}", "select": "/tier"}

MISSING_EML = ids.new_id(ids.EMAIL)


@dataclass
class World:
    """What was accepted before the bad requests: a tenant with the template ``confirm``
    and one email of it, delivered to the mail sink (sent with Idempotency-Key ``kept-1``)."""

    client: httpx.AsyncClient
    tenant_id: str
    key: str
    email_id: str
    accepted: list[str]  # every email accepted, in order

    async def request(self, bad: Bad) -> httpx.Response:
        return await send_bad(
            self.client, bad, self.key, name=CONFIRM["name"], email_id=self.email_id
        )

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, headers=bearer(self.key), params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def sink(self) -> list[dict[str, Any]]:
        page = await self.get(SINK, limit=1000)
        assert page["next_cursor"] is None
        found: list[dict[str, Any]] = page["data"]
        return found

    async def snapshot(self) -> dict[str, Any]:
        """Everything accepted so far, as the API shows it."""
        templates = await self.get(TEMPLATES, limit=1000)
        return {
            "templates": templates["data"],
            "template": await self.get(f"{TEMPLATES}/{CONFIRM['name']}"),
            "email": await self.get(f"{EMAILS}/{self.email_id}"),
            "sink": await self.sink(),
        }

    async def send(self, headers: dict[str, str] | None = None, **fields: Any) -> str:
        """Send a good email of ``confirm``; return its id once it is delivered."""
        response = await self.client.post(
            EMAILS, json={**SEND, **fields}, headers={**bearer(self.key), **(headers or {})}
        )
        assert response.status_code == 202, response.text
        email_id: str = response.json()["id"]
        self.accepted.append(email_id)
        await delivered(self.client, self.key, email_id)
        return email_id

    async def assert_sink_holds_exactly_the_accepted(self) -> None:
        # The sink lists newest first, and ids sort by time.
        assert [s["id"] for s in await self.sink()] == sorted(self.accepted, reverse=True)


async def delivered(client: httpx.AsyncClient, key: str, email_id: str) -> dict[str, Any]:
    """Wait until ``GET /v1/emails/{email_id}`` shows ``delivered``; return it."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        response = await client.get(EMAIL.format(email_id=email_id), headers=bearer(key))
        assert response.status_code == 200, response.text
        found.update(response.json())
        assert found["status"] not in ("failed", "held"), found
        return bool(found["status"] == "delivered")

    await wait_for(check)
    return found


async def make_world(client: httpx.AsyncClient, name: str = "acme") -> World:
    tenant_id, key = await new_tenant(client, name)
    await create_template(client, key, CONFIRM)
    response = await client.post(
        EMAILS,
        json={**SEND, "reference": "kept"},
        headers={**bearer(key), "idempotency-key": "kept-1"},
    )
    assert response.status_code == 202, response.text
    email_id = response.json()["id"]
    email = await delivered(client, key, email_id)
    assert email["subject"] == "Please confirm, Ada"
    return World(client, tenant_id, key, email_id, [email_id])


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await make_world(client)


async def refuse_all(world: World, cases: Sequence[Bad]) -> None:
    """Send every bad request; each is a problem document and changes nothing, and the
    tenant can still send an email afterwards."""
    before = await world.snapshot()
    assert before["email"]["status"] == "delivered"
    assert before["template"]["text"] == CONFIRM["text"]
    await world.assert_sink_holds_exactly_the_accepted()
    await refuse_each(cases, world.request, world.snapshot, before)
    # Nothing refused slipped into the sink, and the template still sends as it was.
    after = await world.send(reference="after the refusals")
    await world.assert_sink_holds_exactly_the_accepted()
    [newest, *_] = await world.sink()
    assert (newest["id"], newest["subject"], newest["text"]) == (
        after,
        "Please confirm, Ada",
        "Hello Ada,\nplease confirm.\n",
    )


# --- POST /v1/templates: the body -------------------------------------------------------


async def test_malformed_json_is_a_400(world: World) -> None:
    cases = [
        Bad("POST", TEMPLATES, 400, "not valid JSON", content=b'{"name": "x", "subject": '),
        Bad("POST", TEMPLATES, 400, "not valid JSON", content=b"{'name': 'x'}"),
        Bad("PUT", TEMPLATE, 400, "not valid JSON", content=b'{"subject": "a", "text": "b",}'),
        Bad("POST", EMAILS, 400, "not valid JSON", content=b'{"to": "ada@example.com", "te'),
        Bad("POST", EMAILS, 400, "not valid JSON", content=b'{to: "ada@example.com"}'),
    ]
    await refuse_all(world, cases)
    response = await world.request(cases[0])
    assert response.json()["title"] == "Malformed JSON"
    assert response.json()["errors"], "the problem lists what is wrong"


async def test_a_template_missing_a_field_is_a_422(world: World) -> None:
    def without(name: str) -> dict[str, Any]:
        return {key: value for key, value in CONFIRM.items() if key != name}

    await refuse_all(
        world,
        [
            Bad("POST", TEMPLATES, 422, "name: Field required", json=without("name")),
            Bad("POST", TEMPLATES, 422, "subject: Field required", json=without("subject")),
            Bad("POST", TEMPLATES, 422, "text: Field required", json=without("text")),
            Bad("PUT", TEMPLATE, 422, "text: Field required", json={"subject": "s"}),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.select: Field required",
                json={**CONFIRM, "name": "n", "lookup": {"url": LOOKUP["url"]}},
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.url: Field required",
                json={**CONFIRM, "name": "n", "lookup": {"select": "/tier"}},
            ),
            Bad("POST", TEMPLATES, 422, "Input should be a valid dictionary", json=[CONFIRM]),
            Bad("POST", TEMPLATES, 422, "Input should be a valid dictionary", json="confirm"),
        ],
    )


async def test_a_template_field_of_the_wrong_type_is_a_422(world: World) -> None:
    def new(**fields: Any) -> dict[str, Any]:
        return {**CONFIRM, "name": "new", **fields}

    string = "Input should be a valid string"
    await refuse_all(
        world,
        [
            Bad("POST", TEMPLATES, 422, f"name: {string}", json={**CONFIRM, "name": 5}),
            Bad("POST", TEMPLATES, 422, f"subject: {string}", json=new(subject=["a"])),
            Bad("POST", TEMPLATES, 422, f"text: {string}", json=new(text=None)),
            Bad("POST", TEMPLATES, 422, f"html: {string}", json=new(html=1)),
            Bad("PUT", TEMPLATE, 422, f"text: {string}", json={**BODY, "text": {"a": 1}}),
            Bad("POST", TEMPLATES, 422, "variants: Input should be", json=new(variants=["g"])),
            Bad("POST", TEMPLATES, 422, "variants.gold: Input", json=new(variants={"gold": "x"})),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"variants.gold.text: {string}",
                json=new(variants={"gold": {"text": 1}}),
            ),
            Bad("POST", TEMPLATES, 422, "lookup: Input should be", json=new(lookup=LOOKUP["url"])),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.timeout_ms: Input should be a valid integer",
                json=new(lookup={**LOOKUP, "timeout_ms": "soon"}),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.timeout_ms: Input should be a valid integer",
                json=new(lookup={**LOOKUP, "timeout_ms": 1.5}),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"lookup.select: {string}",
                json=new(lookup={**LOOKUP, "select": ["tier"]}),
            ),
        ],
    )


async def test_an_unknown_template_field_is_a_422(world: World) -> None:
    extra = "Extra inputs are not permitted"
    await refuse_all(
        world,
        [
            Bad("POST", TEMPLATES, 422, f"id: {extra}", json={**CONFIRM, "id": "x"}),
            Bad("POST", TEMPLATES, 422, f"from: {extra}", json={**CONFIRM, "from": "a@b.example"}),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"lookup.method: {extra}",
                json={**CONFIRM, "name": "n", "lookup": {**LOOKUP, "method": "POST"}},
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"variants.gold.cc: {extra}",
                json={**CONFIRM, "name": "n", "variants": {"gold": {"cc": "x@b.example"}}},
            ),
            # A PUT names the template in its path, not its body.
            Bad("PUT", TEMPLATE, 422, f"name: {extra}", json={**BODY, "name": "confirm"}),
        ],
    )


async def test_a_bad_template_name_is_a_422(world: World) -> None:
    pattern = "name: String should match pattern"
    names = ["a b", "a/b", "../confirm", "a" * 101, "", "ünïcode", "confirm\n", "x;y"]
    cases = [Bad("POST", TEMPLATES, 422, pattern, json={**CONFIRM, "name": n}) for n in names]
    cases += [
        Bad("GET", f"{TEMPLATES}/{'a' * 101}", 422, f"path.{pattern}"),
        Bad("GET", f"{TEMPLATES}/a%20b", 422, f"path.{pattern}"),
        Bad("PUT", f"{TEMPLATES}/a%20b", 422, f"path.{pattern}", json=BODY),
        Bad("DELETE", f"{TEMPLATES}/x%3By", 422, f"path.{pattern}"),
    ]
    await refuse_all(world, cases)
    # The longest name and every allowed character work.
    for name in ("a" * 100, "Welcome_v2.1-b"):
        assert (await create_template(world.client, world.key, {**CONFIRM, "name": name}))[
            "name"
        ] == name
        assert (await world.get(f"{TEMPLATES}/{name}"))["name"] == name


async def test_an_empty_or_too_long_part_is_a_422(world: World) -> None:
    def new(**fields: Any) -> dict[str, Any]:
        return {**CONFIRM, "name": "new", **fields}

    empty = "must not be empty"
    short = "String should have at least 1 character"
    await refuse_all(
        world,
        [
            Bad("POST", TEMPLATES, 422, f"subject: {short}", json=new(subject="")),
            Bad("POST", TEMPLATES, 422, f"subject: {empty}", json=new(subject="   ")),
            Bad("PUT", TEMPLATE, 422, f"subject: {empty}", json={**BODY, "subject": "\n"}),
            Bad("POST", TEMPLATES, 422, f"text: {short}", json=new(text="")),
            Bad("POST", TEMPLATES, 422, f"text: {empty}", json=new(text=" \n\t ")),
            Bad("POST", TEMPLATES, 422, f"html: {short}", json=new(html="")),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"variants.gold.subject: {empty}",
                json=new(variants={"gold": {"subject": " "}}),
                title="Invalid template",
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"variants.gold.text: {short}",
                json=new(variants={"gold": {"text": ""}}),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"lookup.url: {empty}",
                json=new(lookup={**LOOKUP, "url": "  "}),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "subject: String should have at most 1000 characters",
                json=new(subject="s" * 1001),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "text: String should have at most 100000 characters",
                json=new(text="t" * 100_001),
            ),
        ],
    )


# Each part with a syntax error on a known line, and the detail it gets.
SYNTAX_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"subject": "Hello {{ name"}, "subject: line 1: "),
    ({"text": "Hello {{ name }},\n\nyour code: {{ code | }}"}, "text: line 3: "),
    ({"html": "<p>\n{{ name }}\n<b>{{ }}</b>"}, "html: line 3: "),
    ({"variants": {"gold": {"subject": "{% if %}"}}}, "variants.gold.subject: line 1: "),
    ({"variants": {"gold": {"text": "Gold!\n{{ name | }}"}}}, "variants.gold.text: line 2: "),
    ({"variants": {"true": {"html": "<p>\n\n{{ name ) }}</p>"}}}, "variants.true.html: line 3: "),
    (
        {"lookup": {**LOOKUP, "url": "http://127.0.0.1:9/p?email={{ to "}},
        "lookup.url: line 1: ",
    ),
    ({"text": "{% include 'footer' %}"}, "text: line 1: a template cannot extend, include"),
    ({"text": "Hi\n{% extends 'base' %}"}, "text: line 2: a template cannot extend, include"),
    ({"html": "{% import 'macros' as m %}"}, "html: line 1: a template cannot extend, include"),
]


async def test_a_jinja_syntax_error_is_a_422_naming_the_part_and_the_line(world: World) -> None:
    cases = []
    for fields, fragment in SYNTAX_ERRORS:
        new = {**CONFIRM, "name": "new", **fields}
        cases.append(Bad("POST", TEMPLATES, 422, fragment, json=new, title="Invalid template"))
        cases.append(Bad("PUT", TEMPLATE, 422, fragment, json={**BODY, **fields}))
    await refuse_all(world, cases)
    # None of them was created.
    assert [t["name"] for t in (await world.get(TEMPLATES))["data"]] == ["confirm"]


# --- the lookup ------------------------------------------------------------------------------


def with_lookup(**lookup: Any) -> dict[str, Any]:
    return {**CONFIRM, "name": "looked-up", "lookup": {**LOOKUP, **lookup}}


async def test_a_bad_lookup_select_or_timeout_is_a_422(world: World) -> None:
    pointer = "is not a JSON Pointer"
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                TEMPLATES,
                422,
                f"lookup.select: 'subscribed' {pointer}",
                json=with_lookup(select="subscribed"),
                title="Invalid template",
            ),
            Bad("POST", TEMPLATES, 422, f"'/a~2' {pointer}", json=with_lookup(select="/a~2")),
            Bad("POST", TEMPLATES, 422, f"'tier/' {pointer}", json=with_lookup(select="tier/")),
            Bad(
                "PUT",
                TEMPLATE,
                422,
                f"lookup.select: 'subscribed' {pointer}",
                json={**BODY, "lookup": {**LOOKUP, "select": "subscribed"}},
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.select: String should have at most 500 characters",
                json=with_lookup(select="/" + "a" * 500),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.timeout_ms: Input should be greater than or equal to 1",
                json=with_lookup(timeout_ms=0),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.timeout_ms: Input should be greater than or equal to 1",
                json=with_lookup(timeout_ms=-5),
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "lookup.timeout_ms: Input should be less than or equal to 10000",
                json=with_lookup(timeout_ms=10_001),
            ),
            Bad(
                "PUT",
                TEMPLATE,
                422,
                "lookup.timeout_ms: Input should be less than or equal to 10000",
                json={**BODY, "lookup": {**LOOKUP, "timeout_ms": 10_001}},
            ),
        ],
    )
    # The bounds themselves are fine.
    for timeout_ms in (1, 10_000):
        created = await create_template(
            world.client,
            world.key,
            {**with_lookup(timeout_ms=timeout_ms), "name": f"t{timeout_ms}"},
        )
        assert created["lookup"]["timeout_ms"] == timeout_ms


BAD_LOOKUP_URLS = [
    ("ftp://example.com/people", "scheme 'ftp' is not allowed; use http or https"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
    ("example.com/people?email={{ to }}", "scheme '' is not allowed"),
    ("{% if vip %}http://example.com/people{% endif %}", "scheme '' is not allowed"),
    ("http:///people", "the URL has no host"),
    ("https://user:secret@example.com/people", "credentials in the URL are not allowed"),
    ("http://example.com/" + "a" * 2048, "lookup.url: String should have at most 2048"),
    ("https://example.com/people?email={{ to }}\r\nX-Injected: 1", "control character '\\r'"),
    ("https://example.com/people\t?email={{ to }}", "lookup.url: the URL holds the control"),
    ("https://example.com:0/people?email={{ to }}", "lookup.url: port 0 is not a port"),
]


async def test_a_lookup_url_must_be_http_or_https(world: World) -> None:
    cases = []
    for url, fragment in BAD_LOOKUP_URLS:
        cases.append(Bad("POST", TEMPLATES, 422, fragment, json=with_lookup(url=url)))
        cases.append(
            Bad("PUT", TEMPLATE, 422, fragment, json={**BODY, "lookup": {**LOOKUP, "url": url}})
        )
    await refuse_all(world, cases)


REFUSED_HOSTS = [
    ("http://10.0.0.1/people?email={{ to }}", "private address 10.0.0.1"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
    ("http://192.168.1.10:8080/crm", "private address 192.168.1.10"),
    ("http://100.64.0.1/crm", "shared address space 100.64.0.1"),
    ("http://[::1]:9/crm", "loopback address ::1"),
    ("http://[::ffff:10.0.0.1]/crm", "inside IPv4-mapped address"),
    ("http://10.1/crm", "not a canonical IP address"),
    ("http://0xa9fea9fe/crm", "not a canonical IP address"),
]


async def test_a_lookup_url_on_a_refused_address_is_a_422(world: World) -> None:
    # The test tidings allows only 127.0.0.0/8; everything else private is refused
    # from the URL alone.
    cases = []
    for url, fragment in REFUSED_HOSTS:
        cases.append(Bad("POST", TEMPLATES, 422, fragment, json=with_lookup(url=url)))
        cases.append(
            Bad("PUT", TEMPLATE, 422, fragment, json={**BODY, "lookup": {**LOOKUP, "url": url}})
        )
    await refuse_all(world, cases)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP listener on 127.0.0.1 that counts the connections it gets."""
    connections: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], connections


async def test_the_guard_refuses_a_lookup_url_without_connecting(
    make_client: Callable[..., Awaitable[httpx.AsyncClient]],
    listener: tuple[int, list[int]],
) -> None:
    # A tidings with the production allow-list (none): loopback is refused too.
    strict = await make_client(allow_networks=())
    world = await make_world(strict)
    port, connections = listener
    cases = []
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        url = f"http://{host}:{port}/people?email={{{{ to }}}}"
        cases.append(Bad("POST", TEMPLATES, 422, "loopback address", json=with_lookup(url=url)))
        cases.append(
            Bad(
                "PUT",
                TEMPLATE,
                422,
                "loopback address",
                json={**BODY, "lookup": {**LOOKUP, "url": url}},
            )
        )
    await refuse_all(world, cases)
    assert connections == [], "the guard decided from the URL, without connecting"
    # A name is not resolved when the template is made: it is judged at every lookup.
    created = await create_template(
        strict, world.key, with_lookup(url="https://crm.example/people?email={{ to }}")
    )
    assert created["lookup"]["url"] == "https://crm.example/people?email={{ to }}"


async def test_a_placeholder_in_the_lookup_origin_is_a_422(world: World) -> None:
    written_out = "lookup.url: the scheme and host must be written out"
    origins = [
        "http://{{ to }}/x",
        "https://{{ region }}.crm.example/people",
        "http://crm.example{{ suffix }}/people",
        "http://127.0.0.1:{{ port }}/people",
        "http://{% if vip %}10.0.0.1{% else %}127.0.0.1{% endif %}/people",
        "http://{# the CRM #}crm.example/people",
    ]
    cases = []
    for url in origins:
        cases.append(
            Bad(
                "POST",
                TEMPLATES,
                422,
                written_out,
                json=with_lookup(url=url),
                title="Invalid template",
            )
        )
        cases.append(
            Bad("PUT", TEMPLATE, 422, written_out, json={**BODY, "lookup": {**LOOKUP, "url": url}})
        )
    await refuse_all(world, cases)
    # Placeholders in the path and the query are what a lookup URL is for.
    url = "http://127.0.0.1:9/people/{{ name }}?email={{ to }}"
    assert (await create_template(world.client, world.key, with_lookup(url=url)))["lookup"][
        "url"
    ] == url


# --- variants, duplicates ------------------------------------------------------------------


async def test_too_many_variants_or_a_bad_variant_key_is_a_422(world: World) -> None:
    variants = {str(n): {"text": f"Variant {n}"} for n in range(51)}
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                TEMPLATES,
                422,
                "variants: Dictionary should have at most 50 items",
                json={**CONFIRM, "name": "many", "variants": variants},
            ),
            Bad(
                "PUT",
                TEMPLATE,
                422,
                "variants: Dictionary should have at most 50 items",
                json={**BODY, "variants": variants},
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "String should have at least 1 character",
                json={**CONFIRM, "name": "empty-key", "variants": {"": {"text": "x"}}},
            ),
            Bad(
                "POST",
                TEMPLATES,
                422,
                "String should have at most 200 characters",
                json={**CONFIRM, "name": "long-key", "variants": {"k" * 201: {"text": "x"}}},
            ),
        ],
    )
    fifty = {key: value for key, value in variants.items() if key != "50"}
    created = await create_template(
        world.client, world.key, {**CONFIRM, "name": "fifty", "variants": fifty}
    )
    assert len(created["variants"]) == 50


async def test_a_duplicate_template_name_is_a_409_and_keeps_the_first(world: World) -> None:
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                TEMPLATES,
                409,
                "a template 'confirm' exists already; replace it with PUT /v1/templates/confirm",
                json={**CONFIRM, "text": "Replaced {{ name }}"},
                title="Conflict",
            ),
            Bad("POST", TEMPLATES, 409, "'confirm' exists already", json=CONFIRM),
        ],
    )


# --- credentials --------------------------------------------------------------------------


EVERY_ROUTE = [
    ("GET", TEMPLATES, UNSET),
    ("POST", TEMPLATES, {**CONFIRM, "name": "other"}),
    ("GET", TEMPLATE, UNSET),
    ("PUT", TEMPLATE, {**BODY, "text": "hijacked"}),
    ("DELETE", TEMPLATE, UNSET),
    ("POST", EMAILS, SEND),
    ("GET", EMAIL, UNSET),
    ("GET", SINK, UNSET),
]


async def test_a_missing_or_wrong_credential_is_a_401(world: World) -> None:
    cases = []
    for method, path, body in EVERY_ROUTE:
        cases += [
            Bad(method, path, 401, "Authorization: Bearer", json=body, auth="none"),
            Bad(method, path, 401, "Authorization: Bearer", json=body, auth="Basic dXNlcjpwYXNz"),
            Bad(method, path, 401, "API key is not valid", json=body, auth="Bearer tdk_nope"),
        ]
    await refuse_all(world, cases)
    for bad in cases:
        response = await world.request(bad)
        assert response.headers.get("www-authenticate") == "Bearer", bad


async def test_the_admin_token_on_an_email_route_is_a_403(world: World) -> None:
    fragment = "needs a tenant API key"
    await refuse_all(
        world,
        [
            Bad(method, path, 403, fragment, json=body, auth="admin", title="Forbidden")
            for method, path, body in EVERY_ROUTE
        ],
    )


# --- GET, PUT, DELETE /v1/templates/{name} ------------------------------------------------


async def test_an_unknown_template_is_a_404(world: World) -> None:
    fragment = "no template 'nope'"
    await refuse_all(
        world,
        [
            Bad("GET", f"{TEMPLATES}/nope", 404, fragment, title="Not found"),
            Bad("PUT", f"{TEMPLATES}/nope", 404, fragment, json=BODY),
            Bad("DELETE", f"{TEMPLATES}/nope", 404, fragment),
            Bad("GET", f"{TEMPLATES}/Confirm", 404, "no template 'Confirm'"),
        ],
    )


async def test_another_tenants_template_is_a_404_and_stays_unchanged(world: World) -> None:
    _, other_key = await new_tenant(world.client, "other")
    other = f"Bearer {other_key}"
    fragment = "no template 'confirm'"
    await refuse_all(
        world,
        [
            Bad("GET", TEMPLATE, 404, fragment, auth=other),
            Bad("PUT", TEMPLATE, 404, fragment, json={**BODY, "text": "hijacked"}, auth=other),
            Bad("DELETE", TEMPLATE, 404, fragment, auth=other),
            # Sending with it is the same as naming no template at all.
            Bad("POST", EMAILS, 422, "template: no template 'confirm'", json=SEND, auth=other),
            Bad("GET", EMAIL, 404, f"no email '{world.email_id}'", auth=other),
        ],
    )
    listing = await world.client.get(TEMPLATES, headers=bearer(other_key))
    assert listing.json() == {"data": [], "next_cursor": None}
    # The other tenant has a namespace of its own: its "confirm" leaves ours alone.
    theirs = await create_template(
        world.client, other_key, {**CONFIRM, "text": "Theirs, {{ name }}"}
    )
    assert theirs["text"] == "Theirs, {{ name }}"
    await refuse_all(world, [Bad("GET", f"{TEMPLATES}/nope", 404, "no template 'nope'")])


async def test_a_refused_put_leaves_the_template_as_it_was(world: World) -> None:
    old = await world.get(TEMPLATE.format(name="confirm"))
    await refuse_all(
        world,
        [
            Bad("PUT", TEMPLATE, 422, "text: line 1: ", json={**BODY, "text": "New {{ name"}),
            Bad("PUT", TEMPLATE, 422, "subject: must not be empty", json={**BODY, "subject": " "}),
            Bad(
                "PUT",
                TEMPLATE,
                422,
                "private address 10.0.0.1",
                json={**BODY, "lookup": {**LOOKUP, "url": "http://10.0.0.1/x"}},
            ),
            Bad(
                "PUT",
                TEMPLATE,
                422,
                "html: Input should be a valid string",
                json={**BODY, "html": 1},
            ),
            Bad("PUT", TEMPLATE, 400, "not valid JSON", content=b'{"subject": "New", "text": '),
            Bad("PUT", TEMPLATE, 413, "over the limit", json={**BODY, "text": "t" * LIMIT}),
        ],
    )
    assert await world.get(TEMPLATE.format(name="confirm")) == old
    # A good PUT does replace it, so the refusals above were about their bodies.
    response = await world.client.put(
        TEMPLATE.format(name="confirm"),
        json={**BODY, "text": "Replaced, {{ name }}"},
        headers=bearer(world.key),
    )
    assert response.status_code == 200, response.text
    assert (await world.get(TEMPLATE.format(name="confirm")))["text"] == "Replaced, {{ name }}"


async def test_a_deleted_template_is_a_404(world: World) -> None:
    await create_template(world.client, world.key, {**CONFIRM, "name": "goodbye"})
    response = await world.client.delete(f"{TEMPLATES}/goodbye", headers=bearer(world.key))
    assert response.status_code == 204, response.text
    fragment = "no template 'goodbye'"
    await refuse_all(
        world,
        [
            Bad("GET", f"{TEMPLATES}/goodbye", 404, fragment),
            Bad("DELETE", f"{TEMPLATES}/goodbye", 404, fragment),
            Bad("PUT", f"{TEMPLATES}/goodbye", 404, fragment, json=BODY),
            Bad(
                "POST",
                EMAILS,
                422,
                "template: no template 'goodbye'",
                json={**SEND, "template": "goodbye"},
            ),
        ],
    )
    assert [t["name"] for t in (await world.get(TEMPLATES))["data"]] == ["confirm"]


async def test_templates_are_listed_in_pages(world: World) -> None:
    for name in ("b-second", "a-first"):
        await create_template(world.client, world.key, {**CONFIRM, "name": name})
    first = await world.get(TEMPLATES, limit=2)
    assert [t["name"] for t in first["data"]] == ["a-first", "b-second"]
    assert first["next_cursor"]
    second = await world.get(TEMPLATES, limit=2, cursor=first["next_cursor"])
    assert [t["name"] for t in second["data"]] == ["confirm"]
    assert second["next_cursor"] is None
    names = []
    cursor = None
    while True:
        page = await world.get(TEMPLATES, limit=1, **({"cursor": cursor} if cursor else {}))
        names += [t["name"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == ["a-first", "b-second", "confirm"]


async def test_a_bad_list_limit_is_a_422(world: World) -> None:
    at_least = "query.limit: Input should be greater than or equal to 1"
    at_most = "query.limit: Input should be less than or equal to 1000"
    integer = "query.limit: Input should be a valid integer"
    await refuse_all(
        world,
        [
            Bad("GET", TEMPLATES, 422, at_least, params={"limit": 0}),
            Bad("GET", TEMPLATES, 422, at_most, params={"limit": 1001}),
            Bad("GET", TEMPLATES, 422, integer, params={"limit": "ten"}),
            Bad("GET", SINK, 422, at_least, params={"limit": 0}),
            Bad("GET", SINK, 422, at_least, params={"limit": -1}),
            Bad("GET", SINK, 422, at_most, params={"limit": 1001}),
            Bad("GET", SINK, 422, integer, params={"limit": "2.5"}),
        ],
    )


# --- POST /v1/emails -----------------------------------------------------------------------


async def test_an_email_missing_a_field_is_a_422(world: World) -> None:
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 422, "to: Field required", json={"template": "confirm"}),
            Bad("POST", EMAILS, 422, "template: Field required", json={"to": SEND["to"]}),
            Bad("POST", EMAILS, 422, "to: Field required", json={}),
            Bad("POST", EMAILS, 422, "Field required", content=b""),
            Bad("POST", EMAILS, 422, "Input should be a valid dictionary", json=[SEND]),
        ],
    )


async def test_an_email_field_of_the_wrong_type_is_a_422(world: World) -> None:
    string = "Input should be a valid string"
    dictionary = "personalisation: Input should be a valid dictionary"
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 422, f"to: {string}", json={**SEND, "to": 5}),
            Bad("POST", EMAILS, 422, f"to: {string}", json={**SEND, "to": [SEND["to"]]}),
            Bad("POST", EMAILS, 422, f"template: {string}", json={**SEND, "template": 5}),
            Bad("POST", EMAILS, 422, dictionary, json={**SEND, "personalisation": ["Ada"]}),
            Bad("POST", EMAILS, 422, dictionary, json={**SEND, "personalisation": "name=Ada"}),
            Bad("POST", EMAILS, 422, dictionary, json={**SEND, "personalisation": None}),
            Bad("POST", EMAILS, 422, f"reference: {string}", json={**SEND, "reference": 5}),
            Bad(
                "POST",
                EMAILS,
                422,
                "template: String should have at least 1 character",
                json={**SEND, "template": ""},
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                "template: String should have at most 100 characters",
                json={**SEND, "template": "t" * 101},
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                "reference: String should have at most 200 characters",
                json={**SEND, "reference": "r" * 201},
            ),
        ],
    )
    # 200 characters is a reference.
    email_id = await world.send(reference="r" * 200)
    assert (await world.get(EMAIL.format(email_id=email_id)))["reference"] == "r" * 200


async def test_an_unknown_email_field_is_a_422(world: World) -> None:
    extra = "Extra inputs are not permitted"
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 422, f"from: {extra}", json={**SEND, "from": "x@evil.example"}),
            Bad("POST", EMAILS, 422, f"subject: {extra}", json={**SEND, "subject": "Hi"}),
            Bad("POST", EMAILS, 422, f"cc: {extra}", json={**SEND, "cc": ["b@example.com"]}),
            # The other spelling is refused, not silently ignored.
            Bad(
                "POST",
                EMAILS,
                422,
                f"personalization: {extra}",
                json={**SEND, "personalization": {"name": "Ada"}},
            ),
        ],
    )


NOT_AN_ADDRESS = "to: Value error, not an email address of the form name@example.com"
BAD_ADDRESSES = [
    ("not-an-address", NOT_AN_ADDRESS),
    ("a@b", NOT_AN_ADDRESS),
    ("a b@example.com", NOT_AN_ADDRESS),
    ("@example.com", NOT_AN_ADDRESS),
    ("ada@", NOT_AN_ADDRESS),
    ("ada@example.com.", NOT_AN_ADDRESS),
    ("Ada <ada@example.com>", NOT_AN_ADDRESS),
    ("ada@example.com, bob@example.com", NOT_AN_ADDRESS),
    ("ada@exa mple.com", NOT_AN_ADDRESS),
    ("", NOT_AN_ADDRESS),
    ("a" * 65 + "@example.com", NOT_AN_ADDRESS),
    ("ada@example.com\r\nBcc: eve@evil.example", NOT_AN_ADDRESS),
    ("ada@example.com\r\n", NOT_AN_ADDRESS),
    ("ada\n@example.com", NOT_AN_ADDRESS),
    ("ada@exa\rmple.com", NOT_AN_ADDRESS),
    ("a" * 64 + "@" + "b" * 252 + ".com", "to: String should have at most 320 characters"),
]


async def test_a_bad_address_is_a_422(world: World) -> None:
    assert len(BAD_ADDRESSES[-1][0]) == 321
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 422, fragment, json={**SEND, "to": to})
            for to, fragment in BAD_ADDRESSES
        ],
    )
    # The longest address there is (64 + 1 + 255 characters) is fine.
    longest = "a" * 64 + "@" + "b" * 251 + ".com"
    assert len(longest) == 320
    email_id = await world.send(to=longest)
    assert (await world.get(EMAIL.format(email_id=email_id)))["to"] == longest


async def test_an_address_ending_in_a_newline_is_a_422(world: World) -> None:
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 422, NOT_AN_ADDRESS, json={**SEND, "to": to})
            for to in ("ada@example.com\n", "ada@example.com\r")
        ],
    )


async def test_an_unknown_template_is_a_422_naming_it(world: World) -> None:
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                EMAILS,
                422,
                "template: no template 'nope'",
                json={**SEND, "template": "nope"},
                title="Invalid input",
            ),
            Bad("POST", EMAILS, 422, "no template 'Confirm'", json={**SEND, "template": "Confirm"}),
            Bad("POST", EMAILS, 422, "no template 'a b'", json={**SEND, "template": "a b"}),
        ],
    )


async def test_a_missing_personalisation_field_is_a_400_naming_it(world: World) -> None:
    # Fields are read by the default content, a variant and the lookup URL alike.
    await create_template(
        world.client,
        world.key,
        {
            "name": "code",
            "subject": "Your code, {{ name }}",
            "text": "{{ code }}",
            "variants": {"gold": {"text": "{{ code }} for {{ tier }}"}},
            "lookup": {**LOOKUP, "url": "http://127.0.0.1:9/people/{{ crm_id }}"},
        },
    )

    def send(template: str, **personalisation: Any) -> dict[str, Any]:
        return {**SEND, "template": template, "personalisation": personalisation}

    uses = "personalisation: the template uses"
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 400, f"{uses} 'name', which is missing", json=send("confirm")),
            Bad(
                "POST",
                EMAILS,
                400,
                f"{uses} 'name', which is missing",
                json=send("confirm", Name="Ada", nam="Ada"),
                title="Missing field",
            ),
            Bad(
                "POST",
                EMAILS,
                400,
                f"{uses} 'code', 'crm_id', 'name', 'tier', which are missing",
                json=send("code"),
            ),
            Bad(
                "POST",
                EMAILS,
                400,
                f"{uses} 'tier', which is missing",
                json=send("code", name="Ada", code="1234", crm_id="c-1"),
            ),
            Bad(
                "POST",
                EMAILS,
                400,
                f"{uses} 'crm_id', which is missing",
                json=send("code", name="Ada", code="1234", tier="gold"),
            ),
        ],
    )


async def test_a_personalisation_value_that_is_not_json_is_a_422(world: World) -> None:
    def raw(personalisation: str) -> bytes:
        return (
            b'{"to": "ada@example.com", "template": "confirm", "personalisation": '
            + personalisation.encode()
            + b"}"
        )

    not_json = "NaN and Infinity are not JSON numbers"
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                EMAILS,
                422,
                f"personalisation.name: Value error, {not_json}",
                content=raw('{"name": NaN}'),
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                f"personalisation.x: Value error, {not_json}",
                content=raw('{"name": "Ada", "x": Infinity}'),
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                f"personalisation.x: Value error, {not_json}",
                content=raw('{"name": "Ada", "x": [1, -Infinity]}'),
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                f"personalisation.x: Value error, {not_json}",
                content=raw('{"name": "Ada", "x": {"y": {"z": NaN}}}'),
            ),
        ],
    )


# --- Idempotency-Key ---------------------------------------------------------------------


async def test_a_bad_idempotency_key_is_a_422_and_is_not_used_up(world: World) -> None:
    header = "header.Idempotency-Key"
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                EMAILS,
                422,
                f"{header}: String should have at least 1 character",
                json=SEND,
                headers={"idempotency-key": ""},
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                f"{header}: String should have at most 200 characters",
                json=SEND,
                headers={"idempotency-key": "k" * 201},
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                f"{header}: String should match pattern",
                json=SEND,
                headers={"idempotency-key": "clé-1".encode()},
            ),
            Bad(
                "POST",
                EMAILS,
                422,
                f"{header}: String should match pattern",
                json=SEND,
                headers={"idempotency-key": "has space"},
            ),
        ],
    )
    # A request refused for its body does not use up its key either.
    headers = {**bearer(world.key), "idempotency-key": "k" * 200}
    refused = await world.client.post(EMAILS, json={**SEND, "personalisation": {}}, headers=headers)
    assert_problem(refused, 400, "'name', which is missing")
    accepted = await world.client.post(EMAILS, json=SEND, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert "idempotent-replayed" not in accepted.headers
    world.accepted.append(accepted.json()["id"])
    await delivered(world.client, world.key, accepted.json()["id"])
    await world.assert_sink_holds_exactly_the_accepted()


async def test_a_reused_idempotency_key_is_a_409_or_a_replay(world: World) -> None:
    kept = {**SEND, "reference": "kept"}
    key = {"idempotency-key": "kept-1"}
    different = "Idempotency-Key 'kept-1' was already used with a different request body"
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                EMAILS,
                409,
                different,
                json={**kept, "reference": "other"},
                headers=key,
                title="Conflict",
            ),
            Bad(
                "POST", EMAILS, 409, different, json={**kept, "to": "bob@example.com"}, headers=key
            ),
            Bad("POST", EMAILS, 409, different, json=SEND, headers=key),
        ],
    )
    # The same body (in any key order) is the first answer again, and nothing new is sent.
    for body in (kept, dict(reversed(kept.items()))):
        replay = await world.client.post(EMAILS, json=body, headers={**bearer(world.key), **key})
        assert replay.status_code == 202, replay.text
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json() == {"id": world.email_id, "status": "accepted"}
    await world.send(reference="later")
    await world.assert_sink_holds_exactly_the_accepted()


async def test_an_idempotency_key_used_by_a_message_is_not_an_email_replay(world: World) -> None:
    headers = {**bearer(world.key), "idempotency-key": "shared-1"}
    body = {**SEND, "reference": None}
    message = await world.client.post(
        "/v1/messages", json={"event_type": "email", "payload": body}, headers=headers
    )
    assert message.status_code == 202, message.text
    response = await world.client.post(EMAILS, json=body, headers=headers)
    if response.status_code == 202:
        # Accepted: then it is an email, and it is sent.
        assert response.json()["id"].startswith("eml_"), response.text
        world.accepted.append(response.json()["id"])
        await delivered(world.client, world.key, response.json()["id"])
        await world.assert_sink_holds_exactly_the_accepted()
    else:
        assert_problem(response, 409, "shared-1")


# --- size --------------------------------------------------------------------------------


async def test_an_oversize_body_is_a_413(world: World) -> None:
    detail = f"over the limit of {LIMIT} bytes"
    big_email = json.dumps({**SEND, "personalisation": {"name": "A" * LIMIT}}).encode()
    big_template = json.dumps({**CONFIRM, "name": "big", "text": "t" * LIMIT}).encode()
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 413, detail, content=big_email, title="Payload too large"),
            Bad("POST", TEMPLATES, 413, detail, content=big_template),
            Bad("PUT", TEMPLATE, 413, detail, content=big_template),
        ],
    )
    before = await world.snapshot()
    response = await world.client.post(
        EMAILS,
        content=chunked(big_email)(),
        headers={**bearer(world.key), "content-type": "application/json"},
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, detail)
    assert await world.snapshot() == before


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
async def test_a_json_body_without_a_json_content_type_is_read_or_refused_clearly(
    world: World, content_type: str | None
) -> None:
    headers = bearer(world.key)
    if content_type:
        headers["content-type"] = content_type
    body = json.dumps({**CONFIRM, "name": "curl"}).encode()
    response = await world.client.post(TEMPLATES, content=body, headers=headers)
    if response.status_code != 201:
        assert_problem(response, response.status_code, "content-type")


# --- GET /v1/emails/{id} and the sink ------------------------------------------------------


async def test_an_unknown_email_is_a_404(world: World) -> None:
    message = await world.client.post(
        "/v1/messages", json={"event_type": "order.paid", "payload": {}}, headers=bearer(world.key)
    )
    message_id = message.json()["id"]
    await refuse_all(
        world,
        [
            Bad(
                "GET",
                f"{EMAILS}/{MISSING_EML}",
                404,
                f"no email '{MISSING_EML}'",
                title="Not found",
            ),
            Bad("GET", f"{EMAILS}/nope", 404, "no email 'nope'"),
            # A webhook message is not an email.
            Bad("GET", f"{EMAILS}/{message_id}", 404, f"no email '{message_id}'"),
        ],
    )


async def test_another_tenants_email_is_a_404(world: World) -> None:
    other = await make_world(world.client, "other")
    response = await world.client.get(
        EMAIL.format(email_id=world.email_id), headers=bearer(other.key)
    )
    assert_problem(response, 404, f"no email '{world.email_id}'")
    assert "ada@example.com" not in response.text
    # Each reads its own.
    assert (await world.get(EMAIL.format(email_id=world.email_id)))["status"] == "delivered"
    assert (await other.get(EMAIL.format(email_id=other.email_id)))["status"] == "delivered"


async def test_the_sink_is_listed_in_pages(world: World) -> None:
    for n in range(2):
        await world.send(reference=f"more-{n}")
    newest_first = sorted(world.accepted, reverse=True)
    first = await world.get(SINK, limit=2)
    assert [s["id"] for s in first["data"]] == newest_first[:2]
    assert first["next_cursor"]
    second = await world.get(SINK, limit=2, cursor=first["next_cursor"])
    assert [s["id"] for s in second["data"]] == newest_first[2:]
    assert second["next_cursor"] is None


async def test_a_tenant_sees_only_its_own_sink(world: World) -> None:
    ours = await world.sink()
    other = await make_world(world.client, "other")
    theirs = await other.sink()
    assert [s["id"] for s in theirs] == [other.email_id]
    assert await world.sink() == ours
    assert [s["id"] for s in ours] == [world.email_id]
    # A cursor from one tenant's sink does not show the other's either.
    page = await other.get(SINK, limit=1, cursor="eml_" + "Z" * 26)
    assert [s["id"] for s in page["data"]] == [other.email_id]


# --- delivery latency ----------------------------------------------------------------------


async def test_a_tenants_first_email_is_sent_at_once(client: httpx.AsyncClient) -> None:
    _, key = await new_tenant(client)
    await create_template(client, key, CONFIRM)
    response = await client.post(EMAILS, json=SEND, headers=bearer(key))
    assert response.status_code == 202, response.text
    email_id = response.json()["id"]

    async def sent() -> bool:
        email = await client.get(EMAIL.format(email_id=email_id), headers=bearer(key))
        return bool(email.json()["status"] == "delivered")

    await wait_for(sent, within=2.0)


async def test_a_reference_with_a_control_character_is_a_422(world: World) -> None:
    await refuse_all(
        world,
        [
            Bad("POST", EMAILS, 422, "reference", json={**SEND, "reference": bad})
            for bad in ("line\nbreak", "carriage\rreturn", "nul\x00", "tab\there")
        ],
    )
