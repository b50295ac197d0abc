"""Bad input on the endpoint-health routes gets a clear error and harms nothing.

The routes: a tenant's and an endpoint's ``alarm_policy`` (``PATCH /v1/tenants/{id}``,
``POST /v1/tenants``, ``PATCH /v1/endpoints/{id}``, ``POST /v1/endpoints``), and
``POST /v1/endpoints/{id}/suspend`` and ``/resume``.

Every refusal is an RFC 9457 problem document whose ``detail`` says why, and after it
the tenant and its endpoint read back exactly as they were (the same alarm policy, the
endpoint still active, no suspension recorded), and a message accepted before the bad
requests is still delivered to the receiver. The positive tests show what the refused
requests would have changed: a valid policy field is set and shown, null removes it,
the endpoint's fields win over the tenant's and the tenant's over the defaults, and a
suspended endpoint holds its deliveries until it is resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.api import admin, bearer, delivery_states, new_endpoint, new_tenant, send, settled
from support.problems import Bad, assert_refused, refuse_each, send_bad
from support.receivers import Receiver
from support.waiting import wait_for
from tidings import ids
from tidings.domain.alarms import AlarmPolicy

MISSING_EP = ids.new_id(ids.ENDPOINT)
MISSING_TNT = ids.new_id(ids.TENANT)

TENANTS = "/v1/tenants"
TENANT = "/v1/tenants/{tenant_id}"
ENDPOINTS = "/v1/endpoints"
ENDPOINT = "/v1/endpoints/{endpoint_id}"
SUSPEND = "/v1/endpoints/{endpoint_id}/suspend"
RESUME = "/v1/endpoints/{endpoint_id}/resume"
GOOD_URL = "https://example.com/hook"
TENANT_IN = {"name": "other", "owner_email": "ops@other.example"}

DEFAULTS = AlarmPolicy().as_dict()
# What the world's tenant and endpoint set before the bad requests: a refusal must keep both.
TENANT_POLICY = {"warning_failed_attempts": 8, "critical_silence_s": 3600.0}
ENDPOINT_POLICY = {"critical_dead_deliveries": 4, "drain_rate_per_s": 20.0}
IN_FORCE = {**DEFAULTS, **TENANT_POLICY, **ENDPOINT_POLICY}

EXTRA = "Extra inputs are not permitted"
NO_TENANT_KEY = "needs a tenant API key"
NO_ADMIN = "needs the admin token"


@dataclass
class World:
    """What was accepted before the bad requests: a tenant and its alarm policy, a key,
    an endpoint with its own policy fields, and a message sent to it."""

    client: httpx.AsyncClient
    receiver: Receiver
    tenant_id: str
    key: str
    endpoint: dict[str, Any]
    message: dict[str, Any]

    @property
    def endpoint_id(self) -> str:
        return str(self.endpoint["id"])

    async def request(self, bad: Bad) -> httpx.Response:
        return await send_bad(
            self.client, bad, self.key, endpoint_id=self.endpoint_id, tenant_id=self.tenant_id
        )

    async def get(self, path: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
        response = await self.client.get(path, headers=headers, params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def read_endpoint(self) -> dict[str, Any]:
        return await self.get(f"{ENDPOINTS}/{self.endpoint_id}", bearer(self.key))

    async def read_tenant(self) -> dict[str, Any]:
        return await self.get(f"{TENANTS}/{self.tenant_id}", admin())

    async def snapshot(self) -> dict[str, Any]:
        """The tenant, its endpoint, and the listings, as the API shows them."""
        endpoints = await self.get(ENDPOINTS, bearer(self.key), limit=1000)
        tenants = await self.get(TENANTS, admin(), limit=1000)
        return {
            "tenant": await self.read_tenant(),
            "endpoint": await self.read_endpoint(),
            "endpoints": [e["id"] for e in endpoints["data"]],
            "tenants": [t["id"] for t in tenants["data"]],
        }

    async def message_delivered(self) -> None:
        """The message accepted before the bad requests reached the receiver, once."""
        message_id = self.message["id"]
        await settled(self.client, self.key, message_id, "succeeded")
        got = [r for r in self.receiver.received if r.webhook_id == message_id]
        assert len(got) == 1, f"{len(got)} requests for {message_id}"


async def refuse_all(world: World, cases: Sequence[Bad]) -> None:
    """Send every bad request: each is a problem document, and changes nothing."""
    before = await world.snapshot()
    assert before["endpoint"]["state"] == "active"
    assert before["endpoint"]["suspensions"] == []
    await refuse_each(cases, world.request, world.snapshot, before)
    await world.message_delivered()
    after = await world.read_endpoint()
    assert after["state"] == "active"
    assert after["held"] == 0


async def make_world(client: httpx.AsyncClient, receiver: Receiver, name: str = "acme") -> World:
    tenant_id, key = await new_tenant(client, name)
    response = await client.patch(
        f"{TENANTS}/{tenant_id}", json={"alarm_policy": TENANT_POLICY}, headers=admin()
    )
    assert response.status_code == 200, response.text
    endpoint = await new_endpoint(client, key, receiver.url, alarm_policy=ENDPOINT_POLICY)
    assert endpoint["alarm_policy"] == IN_FORCE
    assert endpoint["alarm_policy_overrides"] == ENDPOINT_POLICY
    message = await send(client, key, payload={"order": 1})
    assert [d["endpoint_id"] for d in message["deliveries"]] == [endpoint["id"]]
    return World(client, receiver, tenant_id, key, endpoint, message)


@pytest.fixture
async def world(client: httpx.AsyncClient, receiver: Receiver) -> World:
    return await make_world(client, receiver)


def on_both(policy: Any, status: int, fragment: str) -> list[Bad]:
    """``policy`` as the tenant's and as the endpoint's ``alarm_policy``: both refused."""
    body = {"alarm_policy": policy}
    return [
        Bad("PATCH", TENANT, status, fragment, json=body, auth="admin"),
        Bad("PATCH", ENDPOINT, status, fragment, json=body),
    ]


def on_all(policy: Any, status: int, fragment: str) -> list[Bad]:
    """``policy`` on both PATCH routes, and when creating a tenant or an endpoint."""
    return [
        *on_both(policy, status, fragment),
        Bad(
            "POST",
            TENANTS,
            status,
            fragment,
            json={**TENANT_IN, "alarm_policy": policy},
            auth="admin",
        ),
        Bad("POST", ENDPOINTS, status, fragment, json={"url": GOOD_URL, "alarm_policy": policy}),
    ]


def field_error(name: str, message: str) -> str:
    return f"alarm_policy.{name}: {message}"


# --- alarm_policy: unknown fields, wrong types, out of range --------------------------------


async def test_an_unknown_alarm_policy_field_is_a_422(world: World) -> None:
    cases = [
        # A valid field alongside is not applied either.
        *on_all({"warning_failed_attempts": 3, "bogus": 1}, 422, f"alarm_policy.bogus: {EXTRA}"),
        *on_both({"breaker_cool_down": 10}, 422, f"alarm_policy.breaker_cool_down: {EXTRA}"),
        *on_both({"max_in_flight": 5}, 422, f"alarm_policy.max_in_flight: {EXTRA}"),
        *on_both({"Suspend": "auto"}, 422, f"alarm_policy.Suspend: {EXTRA}"),
        Bad("PATCH", TENANT, 422, f"alarm: {EXTRA}", json={"alarm": {}}, auth="admin"),
        Bad("PATCH", ENDPOINT, 422, f"alarm_policies: {EXTRA}", json={"alarm_policies": {}}),
    ]
    await refuse_all(world, cases)


WRONG_TYPES: list[tuple[dict[str, Any], str]] = [
    ({"warning_failed_attempts": "ten"}, "Input should be a valid integer"),
    ({"critical_dead_deliveries": 2.5}, "Input should be a valid integer"),
    ({"critical_silence_failed_attempts": "1e3x"}, "Input should be a valid integer"),
    ({"warning_failed_attempts": [5]}, "Input should be a valid integer"),
    ({"breaker_min_attempts": {"value": 5}}, "Input should be a valid integer"),
    ({"warning_window_s": "soon"}, "Input should be a valid number"),
    ({"breaker_failure_ratio": [0.5]}, "Input should be a valid number"),
    ({"drain_rate_per_s": {"per": "second"}}, "Input should be a valid number"),
    ({"auto_resume": "maybe"}, "Input should be a valid boolean"),
    ({"suspend": ["auto"]}, "Input should be 'auto' or 'alert_only'"),
    ({"suspend": 1}, "Input should be 'auto' or 'alert_only'"),
]


async def test_a_wrongly_typed_alarm_policy_field_is_a_422(world: World) -> None:
    cases = []
    for policy, message in WRONG_TYPES:
        ((name, _),) = policy.items()
        cases += on_all(policy, 422, field_error(name, message))
    await refuse_all(world, cases)


async def test_an_alarm_policy_that_is_not_an_object_is_a_422(world: World) -> None:
    not_an_object = "alarm_policy: Input should be a valid dictionary"
    cases = [
        *on_all([{"warning_failed_attempts": 3}], 422, not_an_object),
        *on_both("strict", 422, not_an_object),
        *on_both(5, 422, not_an_object),
        *on_both(True, 422, not_an_object),
    ]
    await refuse_all(world, cases)


# A JSON `true` where a number belongs: read as 1, it would set a warning at one failed
# attempt, a breaker that opens only when every attempt fails, or a drain of 1/s.


@pytest.mark.parametrize("target", ["tenant", "endpoint"])
@pytest.mark.parametrize(
    "name",
    [
        "warning_failed_attempts",
        "breaker_min_attempts",
        "breaker_failure_ratio",
        "drain_rate_per_s",
        "warning_window_s",  # 1 is out of its range, so it is refused anyway
    ],
)
async def test_true_for_a_number_is_a_422(world: World, target: str, name: str) -> None:
    tenant, endpoint = on_both({name: True}, 422, f"alarm_policy.{name}")
    await refuse_all(world, [tenant if target == "tenant" else endpoint])


OUT_OF_RANGE: list[tuple[dict[str, Any], str]] = [
    ({"warning_window_s": 59}, "Input should be greater than or equal to 60"),
    ({"warning_window_s": 86401}, "Input should be less than or equal to 86400"),
    ({"critical_dead_window_s": 0}, "Input should be greater than or equal to 60"),
    ({"critical_silence_s": 59.9}, "Input should be greater than or equal to 60"),
    ({"critical_silence_s": 10**9}, "Input should be less than or equal to 86400"),
    ({"warning_failed_attempts": 0}, "Input should be greater than or equal to 1"),
    ({"warning_failed_attempts": -1}, "Input should be greater than or equal to 1"),
    ({"critical_dead_deliveries": 0}, "Input should be greater than or equal to 1"),
    ({"critical_silence_failed_attempts": -5}, "Input should be greater than or equal to 1"),
    ({"breaker_consecutive_failures": 0}, "Input should be greater than or equal to 1"),
    ({"warning_failed_attempts": 1_000_001}, "Input should be less than or equal to 1000000"),
    ({"breaker_failure_ratio": 0}, "Input should be greater than 0"),
    ({"breaker_failure_ratio": -0.1}, "Input should be greater than 0"),
    ({"breaker_failure_ratio": 1.5}, "Input should be less than or equal to 1"),
    ({"breaker_min_attempts": 0}, "Input should be greater than or equal to 1"),
    ({"breaker_min_attempts": 101}, "Input should be less than or equal to 100"),
    ({"breaker_window_s": 0}, "Input should be greater than 0"),
    ({"breaker_cool_down_s": -30}, "Input should be greater than 0"),
    ({"breaker_max_cool_down_s": 86401}, "Input should be less than or equal to 86400"),
    ({"drain_rate_per_s": 0}, "Input should be greater than or equal to 0.001"),
    ({"drain_rate_per_s": -1}, "Input should be greater than or equal to 0.001"),
    # 1/rate overflowed on resume: a 500.
    ({"drain_rate_per_s": 5e-324}, "Input should be greater than or equal to 0.001"),
    ({"drain_rate_per_s": 10_001}, "Input should be less than or equal to 10000"),
    ({"suspend": "never"}, "Input should be 'auto' or 'alert_only'"),
    ({"suspend": "AUTO"}, "Input should be 'auto' or 'alert_only'"),
    ({"suspend": ""}, "Input should be 'auto' or 'alert_only'"),
]


async def test_an_alarm_policy_field_out_of_range_is_a_422(world: World) -> None:
    cases = []
    for policy, message in OUT_OF_RANGE:
        ((name, _),) = policy.items()
        cases += on_both(policy, 422, field_error(name, message))
    # Creating a tenant or an endpoint checks the same.
    cases += on_all({"warning_window_s": 59}, 422, "alarm_policy.warning_window_s")
    cases += on_all({"breaker_min_attempts": 101}, 422, "alarm_policy.breaker_min_attempts")
    await refuse_all(world, cases)


async def test_nan_and_infinity_in_an_alarm_policy_are_a_422(world: World) -> None:
    # Python's json module reads NaN and Infinity; the policy must still refuse them.
    cases = []
    for name, value in [
        ("warning_window_s", "NaN"),
        ("breaker_failure_ratio", "NaN"),
        ("breaker_cool_down_s", "NaN"),
        ("drain_rate_per_s", "Infinity"),
        ("critical_silence_s", "-Infinity"),
    ]:
        body = f'{{"alarm_policy": {{"{name}": {value}}}}}'.encode()
        cases.append(Bad("PATCH", TENANT, 422, f"alarm_policy.{name}", content=body, auth="admin"))
        cases.append(Bad("PATCH", ENDPOINT, 422, f"alarm_policy.{name}", content=body))
    await refuse_all(world, cases)


async def test_a_cool_down_above_its_maximum_is_a_422(world: World) -> None:
    fragment = "breaker_max_cool_down"  # and that it must be at least the cool-down
    cases = [
        # Above the default maximum (600 s).
        *on_all({"breaker_cool_down_s": 700}, 422, fragment),
        # Both set in one request.
        *on_all({"breaker_cool_down_s": 200, "breaker_max_cool_down_s": 100}, 422, fragment),
        # A maximum below the default cool-down (30 s).
        *on_both({"breaker_max_cool_down_s": 10}, 422, fragment),
    ]
    await refuse_all(world, cases)
    response = await world.request(cases[1])
    assert "must be at least" in response.json()["detail"]
    assert response.json()["title"] == "Invalid input"


@pytest.mark.parametrize("target", ["tenant", "endpoint"])
async def test_a_cool_down_above_its_maximum_names_the_fields(world: World, target: str) -> None:
    policy = {"breaker_cool_down_s": 200, "breaker_max_cool_down_s": 100}
    tenant, endpoint = on_both(policy, 422, "breaker_cool_down_s")
    bad = tenant if target == "tenant" else endpoint
    await refuse_all(world, [bad])
    assert "breaker_max_cool_down_s" in (await world.request(bad)).json()["detail"]


async def test_a_tenant_policy_that_breaks_an_endpoints_own_fields_is_a_422(world: World) -> None:
    # The endpoint sets its own maximum cool-down; the tenant then sets a longer cool-down.
    response = await world.client.patch(
        f"{ENDPOINTS}/{world.endpoint_id}",
        json={"alarm_policy": {"breaker_max_cool_down_s": 100}},
        headers=bearer(world.key),
    )
    assert response.status_code == 200, response.text
    assert response.json()["alarm_policy_overrides"] == {
        **ENDPOINT_POLICY,
        "breaker_max_cool_down_s": 100,
    }
    names_it = f"with the fields endpoint {world.endpoint_id} sets itself"
    await refuse_all(
        world,
        [
            Bad(
                "PATCH",
                TENANT,
                422,
                names_it,
                json={"alarm_policy": {"breaker_cool_down_s": 200}},
                auth="admin",
                title="Invalid input",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "breaker_max_cool_down",
                json={"name": "renamed", "alarm_policy": {"breaker_cool_down_s": 101}},
                auth="admin",
            ),
        ],
    )
    # At the endpoint's maximum it is fine.
    response = await world.client.patch(
        f"{TENANTS}/{world.tenant_id}",
        json={"alarm_policy": {"breaker_cool_down_s": 100}},
        headers=admin(),
    )
    assert response.status_code == 200, response.text
    assert (await world.read_endpoint())["alarm_policy"]["breaker_cool_down_s"] == 100


async def test_removing_a_tenant_field_an_endpoint_relies_on_is_a_422(world: World) -> None:
    # The tenant allows a 1000 s maximum; the endpoint's 700 s cool-down relies on it.
    response = await world.client.patch(
        f"{TENANTS}/{world.tenant_id}",
        json={"alarm_policy": {"breaker_max_cool_down_s": 1000}},
        headers=admin(),
    )
    assert response.status_code == 200, response.text
    response = await world.client.patch(
        f"{ENDPOINTS}/{world.endpoint_id}",
        json={"alarm_policy": {"breaker_cool_down_s": 700}},
        headers=bearer(world.key),
    )
    assert response.status_code == 200, response.text
    names_it = f"endpoint {world.endpoint_id}"
    await refuse_all(
        world,
        [
            Bad(
                "PATCH",
                TENANT,
                422,
                names_it,
                json={"alarm_policy": {"breaker_max_cool_down_s": None}},
                auth="admin",
            ),
            Bad("PATCH", TENANT, 422, names_it, json={"alarm_policy": None}, auth="admin"),
            Bad(
                "PATCH",
                TENANT,
                422,
                names_it,
                json={"alarm_policy": {"breaker_max_cool_down_s": 699}},
                auth="admin",
            ),
            # And the endpoint cannot lower its own maximum under its cool-down either.
            Bad(
                "PATCH",
                ENDPOINT,
                422,
                "breaker_max_cool_down",
                json={"alarm_policy": {"breaker_max_cool_down_s": 600}},
            ),
        ],
    )


# --- PATCH /v1/tenants/{id} ---------------------------------------------------------------


async def test_bad_tenant_patches_are_refused(world: World) -> None:
    policy = {"alarm_policy": {"warning_failed_attempts": 3}}
    await refuse_all(
        world,
        [
            Bad(
                "PATCH",
                f"{TENANTS}/{MISSING_TNT}",
                404,
                f"no tenant '{MISSING_TNT}'",
                json={"name": "x"},
                auth="admin",
                title="Not found",
            ),
            Bad("PATCH", f"{TENANTS}/{MISSING_TNT}", 404, "no tenant", json=policy, auth="admin"),
            Bad("PATCH", TENANT, 403, NO_ADMIN, json={"name": "mine now"}, title="Forbidden"),
            Bad("PATCH", TENANT, 403, NO_ADMIN, json=policy),
            Bad("PATCH", TENANT, 401, "Authorization: Bearer", json={"name": "x"}, auth="none"),
            Bad(
                "PATCH",
                TENANT,
                401,
                "admin token is not valid",
                json={"name": "x"},
                auth="Bearer not-the-admin-token",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "owner_email: Value error, not an email address",
                json={"owner_email": "not-an-email"},
                auth="admin",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "not an email address",
                json={"owner_email": "ops@"},
                auth="admin",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "not an email address",
                json={"owner_email": "ops@acme.example\n"},
                auth="admin",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "owner_email",
                json={"owner_email": ["ops@acme.example"]},
                auth="admin",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "name: String should have at least 1 character",
                json={"name": ""},
                auth="admin",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "name: String should have at most 200 characters",
                json={"name": "n" * 201},
                auth="admin",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "name: Input should be a valid string",
                json={"name": 5},
                auth="admin",
            ),
            # A valid field alongside a bad one is not applied.
            Bad(
                "PATCH",
                TENANT,
                422,
                "owner_email",
                json={"name": "renamed", "owner_email": "bad", **policy},
                auth="admin",
            ),
            Bad("PATCH", TENANT, 422, f"plan: {EXTRA}", json={"plan": "gold"}, auth="admin"),
            Bad("PATCH", TENANT, 422, f"id: {EXTRA}", json={"id": MISSING_TNT}, auth="admin"),
            Bad(
                "PATCH",
                TENANT,
                400,
                "not valid JSON",
                content=b'{"name": ',
                auth="admin",
                title="Malformed JSON",
            ),
            Bad(
                "PATCH",
                TENANT,
                422,
                "body: Input should be a valid dictionary",
                json=["name", "x"],
                auth="admin",
            ),
        ],
    )


# --- suspend and resume: bad requests --------------------------------------------------------


async def test_bad_suspend_requests_are_refused(world: World) -> None:
    reason = {"reason": "maintenance"}
    no_ep = f"no endpoint '{MISSING_EP}'"
    await refuse_all(
        world,
        [
            Bad("POST", SUSPEND, 422, "reason: Field required", json={}),
            Bad("POST", SUSPEND, 422, "reason: Field required", json={"why": "x"}),
            Bad(
                "POST",
                SUSPEND,
                422,
                "reason: String should have at least 1 character",
                json={"reason": ""},
            ),
            Bad(
                "POST",
                SUSPEND,
                422,
                "reason: String should have at most 1000 characters",
                json={"reason": "r" * 1001},
            ),
            Bad("POST", SUSPEND, 422, "reason: Input should be a valid string", json={"reason": 5}),
            Bad(
                "POST",
                SUSPEND,
                422,
                "reason: Input should be a valid string",
                json={"reason": None},
            ),
            Bad(
                "POST",
                SUSPEND,
                422,
                f"until: {EXTRA}",
                json={**reason, "until": "2030-01-01T00:00:00Z"},
            ),
            Bad("POST", SUSPEND, 422, f"state: {EXTRA}", json={**reason, "state": "disabled"}),
            Bad(
                "POST",
                SUSPEND,
                422,
                "body: Input should be a valid dictionary",
                json="maintenance",
            ),
            Bad(
                "POST",
                SUSPEND,
                400,
                "not valid JSON",
                content=b"reason=maintenance",
                title="Malformed JSON",
            ),
            Bad("POST", SUSPEND, 400, "not valid JSON", content=b'{"reason": "maintenance"'),
            Bad(
                "POST",
                SUSPEND,
                415,
                "Content-Type: application/json",
                content=b"reason=maintenance",
                headers={"content-type": "application/x-www-form-urlencoded"},
                title="Unsupported media type",
            ),
            Bad(
                "POST",
                SUSPEND,
                415,
                "Content-Type: application/json",
                content=b"maintenance",
                headers={"content-type": "text/plain"},
            ),
            Bad("POST", SUSPEND, 415, "send the body as JSON"),  # no body at all
            Bad(
                "POST",
                f"{ENDPOINTS}/{MISSING_EP}/suspend",
                404,
                no_ep,
                json=reason,
                title="Not found",
            ),
            Bad("POST", SUSPEND, 403, NO_TENANT_KEY, json=reason, auth="admin", title="Forbidden"),
            Bad("POST", SUSPEND, 401, "Authorization: Bearer", json=reason, auth="none"),
            Bad(
                "POST",
                SUSPEND,
                401,
                "API key is not valid",
                json=reason,
                auth="Bearer tdk_not-a-real-key",
            ),
            Bad("GET", SUSPEND, 405, "method not allowed"),
        ],
    )


async def test_bad_resume_requests_are_refused(world: World) -> None:
    await refuse_all(
        world,
        [
            Bad(
                "POST",
                RESUME,
                409,
                "the endpoint is active, not suspended",
                title="Conflict",
            ),
            Bad(
                "POST",
                f"{ENDPOINTS}/{MISSING_EP}/resume",
                404,
                f"no endpoint '{MISSING_EP}'",
                title="Not found",
            ),
            Bad("POST", RESUME, 403, NO_TENANT_KEY, auth="admin"),
            Bad("POST", RESUME, 401, "Authorization: Bearer", auth="none"),
            Bad("GET", RESUME, 405, "method not allowed"),
        ],
    )


async def test_another_tenants_endpoint_is_a_404(world: World) -> None:
    _, other_key = await new_tenant(world.client, "other")
    as_other = f"Bearer {other_key}"
    no_ep = f"no endpoint '{world.endpoint_id}'"
    await refuse_all(
        world,
        [
            Bad("POST", SUSPEND, 404, no_ep, json={"reason": "theirs"}, auth=as_other),
            Bad("POST", RESUME, 404, no_ep, auth=as_other),
            Bad(
                "PATCH",
                ENDPOINT,
                404,
                no_ep,
                json={"alarm_policy": {"suspend": "alert_only"}},
                auth=as_other,
            ),
            Bad("PATCH", ENDPOINT, 404, no_ep, json={"alarm_policy": None}, auth=as_other),
            Bad("GET", ENDPOINT, 404, no_ep, auth=as_other),
        ],
    )


async def test_suspending_twice_is_a_409_and_keeps_the_first_suspension(world: World) -> None:
    await world.message_delivered()
    response = await world.client.post(
        f"{ENDPOINTS}/{world.endpoint_id}/suspend",
        json={"reason": "first"},
        headers=bearer(world.key),
    )
    assert response.status_code == 200, response.text
    first = response.json()
    held = await send(world.client, world.key, payload={"order": 2})
    assert await delivery_states(world.client, world.key, held["id"]) == ["held"]
    _, other_key = await new_tenant(world.client, "other")

    before = await world.snapshot()
    assert before["endpoint"]["state"] == "suspended"
    assert before["endpoint"]["held"] == 1
    for bad in [
        Bad(
            "POST",
            SUSPEND,
            409,
            "the endpoint is suspended, not active",
            json={"reason": "second"},
            title="Conflict",
        ),
        Bad("POST", SUSPEND, 409, "is suspended", json={"reason": "first"}),
        Bad("POST", RESUME, 404, "no endpoint", auth=f"Bearer {other_key}"),
        Bad("POST", RESUME, 403, NO_TENANT_KEY, auth="admin"),
    ]:
        assert_refused(await world.request(bad), bad)
        assert await world.snapshot() == before, f"{bad} changed the suspended endpoint"
    assert before["endpoint"]["suspensions"] == [first]
    assert await delivery_states(world.client, world.key, held["id"]) == ["held"]

    # The first suspension is the one resume ends, and the held message goes.
    response = await world.client.post(
        f"{ENDPOINTS}/{world.endpoint_id}/resume", headers=bearer(world.key)
    )
    assert response.status_code == 200, response.text
    assert response.json()["suspension"]["id"] == first["id"]
    assert response.json()["draining"] == 1
    await settled(world.client, world.key, held["id"], "succeeded")


# --- what the refused requests would have done ------------------------------------------------


async def test_alarm_policy_precedence_default_then_tenant_then_endpoint(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    tenant_id, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    ep_path = f"{ENDPOINTS}/{endpoint['id']}"
    tenant_path = f"{TENANTS}/{tenant_id}"

    async def patch_tenant(policy: Any) -> dict[str, Any]:
        response = await client.patch(tenant_path, json={"alarm_policy": policy}, headers=admin())
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def patch_endpoint(policy: Any) -> dict[str, Any]:
        response = await client.patch(ep_path, json={"alarm_policy": policy}, headers=bearer(key))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def read() -> dict[str, Any]:
        response = await client.get(ep_path, headers=bearer(key))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    # Defaults.
    assert endpoint["alarm_policy"] == DEFAULTS
    assert endpoint["alarm_policy_overrides"] == {}

    # The tenant's fields over the defaults; the answer shows every field in force.
    tenant = await patch_tenant({"warning_failed_attempts": 8, "drain_rate_per_s": 10})
    assert tenant["alarm_policy"] == {
        **DEFAULTS,
        "warning_failed_attempts": 8,
        "drain_rate_per_s": 10,
    }
    shown = await read()
    assert shown["alarm_policy"] == tenant["alarm_policy"]
    assert shown["alarm_policy_overrides"] == {}

    # The endpoint's own over the tenant's; the overrides show only its own.
    shown = await patch_endpoint({"warning_failed_attempts": 3, "suspend": "alert_only"})
    assert shown["alarm_policy_overrides"] == {
        "warning_failed_attempts": 3,
        "suspend": "alert_only",
    }
    assert shown["alarm_policy"] == {
        **DEFAULTS,
        "warning_failed_attempts": 3,
        "drain_rate_per_s": 10,
        "suspend": "alert_only",
    }
    assert await read() == shown

    # A tenant change under the endpoint's field does not reach it; a patch merges.
    tenant = await patch_tenant({"warning_failed_attempts": 9})
    assert tenant["alarm_policy"]["warning_failed_attempts"] == 9
    assert tenant["alarm_policy"]["drain_rate_per_s"] == 10
    shown = await read()
    assert shown["alarm_policy"]["warning_failed_attempts"] == 3
    assert shown["alarm_policy_overrides"] == {
        "warning_failed_attempts": 3,
        "suspend": "alert_only",
    }

    # Null removes one field: the tenant's value applies again.
    shown = await patch_endpoint({"warning_failed_attempts": None})
    assert shown["alarm_policy_overrides"] == {"suspend": "alert_only"}
    assert shown["alarm_policy"]["warning_failed_attempts"] == 9
    assert shown["alarm_policy"]["suspend"] == "alert_only"

    # An empty object changes nothing; "alarm_policy": null removes all of its own.
    assert (await patch_endpoint({}))["alarm_policy_overrides"] == {"suspend": "alert_only"}
    shown = await patch_endpoint(None)
    assert shown["alarm_policy_overrides"] == {}
    assert shown["alarm_policy"] == tenant["alarm_policy"]

    # And the tenant's null: back to the defaults, for the tenant and its endpoint.
    tenant = await patch_tenant({"drain_rate_per_s": None})
    assert tenant["alarm_policy"]["drain_rate_per_s"] == DEFAULTS["drain_rate_per_s"]
    assert tenant["alarm_policy"]["warning_failed_attempts"] == 9
    assert (await patch_tenant(None))["alarm_policy"] == DEFAULTS
    assert (await read())["alarm_policy"] == DEFAULTS

    # Other tenant fields in the same PATCH are applied with it; a null email is ignored.
    response = await client.patch(
        tenant_path,
        json={"name": "renamed", "owner_email": None, "alarm_policy": {"auto_resume": True}},
        headers=admin(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "renamed"
    assert response.json()["owner_email"] == "ops@acme.example"
    assert response.json()["alarm_policy"] == {**DEFAULTS, "auto_resume": True}


async def test_a_policy_given_at_creation_is_in_force(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    response = await client.post(
        TENANTS,
        json={**TENANT_IN, "alarm_policy": {"critical_dead_deliveries": 2}},
        headers=admin(),
    )
    assert response.status_code == 201, response.text
    assert response.json()["alarm_policy"] == {**DEFAULTS, "critical_dead_deliveries": 2}
    tenant_id = response.json()["id"]
    response = await client.post(f"{TENANTS}/{tenant_id}/api-keys", headers=admin())
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    endpoint = await new_endpoint(
        client, key, receiver.url, alarm_policy={"breaker_failure_ratio": 0.9}
    )
    assert endpoint["alarm_policy_overrides"] == {"breaker_failure_ratio": 0.9}
    assert endpoint["alarm_policy"] == {
        **DEFAULTS,
        "critical_dead_deliveries": 2,
        "breaker_failure_ratio": 0.9,
    }


async def test_a_suspended_endpoint_holds_until_it_is_resumed(world: World) -> None:
    await world.message_delivered()
    path = f"{ENDPOINTS}/{world.endpoint_id}"
    response = await world.client.post(
        f"{path}/suspend", json={"reason": "maintenance window"}, headers=bearer(world.key)
    )
    assert response.status_code == 200, response.text
    suspension = response.json()
    assert suspension["reason"] == "maintenance window"
    assert suspension["suspended_by"].startswith("api key tdk_")
    assert suspension["suspended_by"] == f"api key {world.key[:12]}…"
    assert suspension["resumed_at"] is None
    assert suspension["resumed_by"] is None

    shown = await world.read_endpoint()
    assert shown["state"] == "suspended"
    assert shown["suspensions"] == [suspension]
    assert shown["alarm_policy"] == IN_FORCE, "suspending keeps the policy"

    # A message sent now is held: accepted, but not attempted.
    held = await send(world.client, world.key, payload={"order": 2})
    assert [d["endpoint_id"] for d in held["deliveries"]] == [world.endpoint_id]
    assert await delivery_states(world.client, world.key, held["id"]) == ["held"]
    await asyncio.sleep(0.5)
    assert await delivery_states(world.client, world.key, held["id"]) == ["held"]
    assert [r for r in world.receiver.received if r.webhook_id == held["id"]] == []
    assert (await world.read_endpoint())["held"] == 1

    response = await world.client.post(f"{path}/resume", headers=bearer(world.key))
    assert response.status_code == 200, response.text
    resumed = response.json()
    assert resumed["draining"] == 1, "the one held delivery drains"
    ended = resumed["suspension"]
    assert ended["id"] == suspension["id"]
    assert ended["reason"] == "maintenance window"
    assert ended["resumed_at"] is not None
    assert ended["resumed_by"] == f"api key {world.key[:12]}…"

    shown = await world.read_endpoint()
    assert shown["state"] == "active"
    assert shown["suspensions"] == [ended], "the history keeps the suspension"
    assert shown["held"] == 0

    # The held message is then delivered, once.
    await wait_for(lambda: any(r.webhook_id == held["id"] for r in world.receiver.received))
    await settled(world.client, world.key, held["id"], "succeeded")
    assert len([r for r in world.receiver.received if r.webhook_id == held["id"]]) == 1

    # Resumed, it can be suspended again; the history lists both, newest first.
    response = await world.client.post(
        f"{path}/suspend", json={"reason": "r" * 1000}, headers=bearer(world.key)
    )
    assert response.status_code == 200, response.text
    history = (await world.read_endpoint())["suspensions"]
    assert [s["id"] for s in history] == [response.json()["id"], suspension["id"]]
