"""A message goes in, a signed delivery comes out."""

from __future__ import annotations

import httpx

from support.api import delivery_states, new_endpoint, new_tenant, send
from support.receivers import Receiver
from support.waiting import wait_for


async def test_message_is_delivered_signed(client: httpx.AsyncClient, receiver: Receiver) -> None:
    _, key = await new_tenant(client)
    endpoint = await new_endpoint(client, key, receiver.url)
    receiver.secret = endpoint["secret"]

    accepted = await send(client, key, payload={"order": 42})

    await wait_for(lambda: len(receiver.received) == 1)
    got = receiver.received[0]
    assert got.verified is True
    assert got.webhook_id == accepted["id"]
    assert b'"data":{"order":42}' in got.body

    async def succeeded() -> bool:
        return await delivery_states(client, key, accepted["id"]) == ["succeeded"]

    await wait_for(succeeded)
