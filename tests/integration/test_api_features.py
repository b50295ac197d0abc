import pytest

@pytest.mark.parametrize("n", range(5))
async def test_x(client, n):
    r = await client.get("/healthz")
    assert r.status_code == 200
