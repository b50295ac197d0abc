"""schemathesis against the served OpenAPI document, on both backends.

A real tidings (the API role: no delivery engine, so nothing the fuzzer
registers is ever dialled) serves HTTP on loopback in a thread of its own,
over a fresh SQLite file or PostgreSQL database holding a tenant, an
endpoint, a template, a message and an email. Every operation of the
document, tenant and admin routes alike, is called with generated valid and
invalid input, and must:

- never answer with a server error;
- answer only with a status, a media type and a body the document declares
  (every error a problem document);
- refuse what the document refuses, and accept what it accepts.

``TIDINGS_FUZZ_EXAMPLES`` sets the cases per operation (a few in the suite;
``make fuzz`` runs many more).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from support.api import ADMIN_TOKEN, admin, bearer
from support.sockets import free_port
from support.stores import ENCRYPTION_KEY, migrate, postgres_server
from tidings.api.app import create_api, openapi_document
from tidings.app import Tidings
from tidings.config import Settings
from tidings.domain.alarms import MAX_WINDOW_S

EXAMPLES = int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "6"))
# The coverage phase (every boundary and every undocumented method, a few hundred cases
# an operation) runs under `make fuzz`; the suite runs the generated cases only.
COVERAGE = os.environ.get("TIDINGS_FUZZ_COVERAGE", "") == "1"

CONFIG = SchemathesisConfig.from_dict(
    {
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": COVERAGE}},
        "checks": {
            "positive_data_acceptance": {
                # Well-formed input naming an object that does not exist (404), or an
                # idempotency key or a template name already used (409).
                "expected-statuses": ["2xx", "404", "409"],
            },
        },
    }
)


@dataclass(frozen=True)
class Seeded:
    """What the served tidings holds before the fuzzer starts: ids a path may name."""

    base_url: str
    key: str
    ids: dict[str, str]


class ServedApi:
    """tidings' API on a loopback port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = threading.Event()
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        tidings = Tidings(self.settings, role="api")
        await tidings.start()
        config = uvicorn.Config(
            create_api(tidings),
            host="127.0.0.1",
            port=self.settings.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():  # noqa: ASYNC110 (no event)
            await asyncio.sleep(0.01)
        self.started.set()
        try:
            await serving
        finally:
            await tidings.stop()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.started.wait(30), "tidings did not start"
        return f"http://127.0.0.1:{self.settings.port}"

    def __exit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.should_exit = True
        self.thread.join(30)


def _seed(base_url: str) -> Seeded:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        tenant = http.post(
            "/v1/tenants", json={"name": "fuzz", "owner_email": "o@fuzz.example"}, headers=admin()
        ).json()
        key_out = http.post(f"/v1/tenants/{tenant['id']}/api-keys", headers=admin()).json()
        key = bearer(key_out["key"])
        endpoint = http.post(
            "/v1/endpoints", json={"url": "https://hooks.fuzz.example/in"}, headers=key
        ).json()
        template = {"name": "welcome", "subject": "Hi", "text": "Hello {{ to }}"}
        assert http.post("/v1/templates", json=template, headers=key).status_code == 201
        message = http.post(
            "/v1/messages", json={"event_type": "fuzz", "payload": {"a": 1}}, headers=key
        ).json()
        email = http.post(
            "/v1/emails", json={"to": "a@fuzz.example", "template": "welcome"}, headers=key
        ).json()
    ids = {
        "tenant_id": tenant["id"],
        "key_id": key_out["id"],
        "endpoint_id": endpoint["id"],
        "name": "welcome",
        "message_id": message["id"],
        "email_id": email["id"],
    }
    return Seeded(base_url, key_out["key"], ids)


def _settings(database_url: str, port: int) -> Settings:
    return Settings.model_validate(
        {
            "database_url": database_url,
            "port": port,
            "admin_token": SecretStr(ADMIN_TOKEN),
            "encryption_key": SecretStr(ENCRYPTION_KEY),
            "allow_networks": (ipaddress.ip_network("127.0.0.0/8"),),
            "log_level": "error",
            "senders": 0,
        }
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    if request.param == "sqlite":
        with _serving(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'tidings.db'}") as seeded:
            yield seeded
        return
    with postgres_server() as server:
        name = server.create(template=None)
        try:
            url = server.url_of(name)
            migrate(url)
            with _serving(url) as seeded:
                yield seeded
        finally:
            server.drop(name)


@contextlib.contextmanager
def _serving(database_url: str) -> Iterator[Seeded]:
    with ServedApi(_settings(database_url, free_port())) as base_url:
        yield _seed(base_url)


# The document is built as /openapi.json builds it (schemathesis' lazy fixture loader
# does not run on pytest 9); test_the_document_fuzzed_is_the_one_served checks it is.
DOCUMENT = openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_document_fuzzed_is_the_one_served(served: Seeded) -> None:
    assert httpx.get(f"{served.base_url}/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_does_what_its_document_says(case: Case, served: Seeded) -> None:
    _aim_at_seeded(case, served)
    credential = admin() if case.path.startswith("/v1/tenants") else bearer(served.key)
    case.call_and_validate(base_url=served.base_url, headers=credential)


def _aim_at_seeded(case: Case, served: Seeded) -> None:
    """Every other valid case names the seeded objects, so its path finds one; a valid
    email names the seeded template (which needs no personalisation)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if case.operation.label == "POST /v1/emails" and isinstance(case.body, dict):
        case.body["template"] = "welcome"
    policy = case.body.get("alarm_policy") if isinstance(case.body, dict) else None
    if isinstance(policy, dict):
        # The one rule relating two fields (and the defaults), which JSON Schema cannot say.
        policy["breaker_max_cool_down_s"] = MAX_WINDOW_S
    if not case.path_parameters or case.method.upper() == "DELETE":
        return
    if zlib.crc32(repr(sorted(case.path_parameters.items())).encode()) % 2:
        return
    for name in case.path_parameters:
        if name in served.ids:
            case.path_parameters[name] = served.ids[name]
