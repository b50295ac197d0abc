"""Bearer authentication: the admin token for tenant management, API keys for the rest.

Only SHA-256 hashes of credentials are stored. A tenant key's hash is looked
up through the process's :class:`~tidings.keys.KeyCache`, so ingest at high
rates does not hit the store to authenticate, and a revoked key is refused at
once.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from tidings.app import Tidings
from tidings.exceptions import Forbidden, Unauthorized
from tidings.service import sha256


def tidings_of(request: Request) -> Tidings:
    app: Tidings = request.app.state.tidings
    return app


async def get_tidings(request: Request) -> Tidings:
    # async on purpose: FastAPI runs a plain-def dependency in a thread pool.
    return tidings_of(request)


App = Annotated[Tidings, Depends(get_tidings)]


def _bearer(request: Request) -> str:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthorized("send an `Authorization: Bearer <key>` header")
    return credential.strip()


# The two guards take only the request: every sub-dependency costs FastAPI time
# on each call, and these run on every request.


async def require_admin(request: Request) -> None:
    app = tidings_of(request)
    digest = sha256(_bearer(request))
    if hmac.compare_digest(digest, app.admin_token_hash):
        return
    if await app.keys.tenant(digest):
        raise Forbidden("this route needs the admin token; a tenant API key cannot use it")
    raise Unauthorized("the admin token is not valid")


async def require_tenant(request: Request) -> str:
    app = tidings_of(request)
    digest = sha256(_bearer(request))
    tenant_id: str | None = await app.keys.tenant(digest)
    if tenant_id:
        return tenant_id
    if hmac.compare_digest(digest, app.admin_token_hash):
        raise Forbidden(
            "this route needs a tenant API key, not the admin token; "
            "create one with POST /v1/tenants/{id}/api-keys"
        )
    raise Unauthorized("the API key is not valid")


def key_prefix(request: Request) -> str:
    """The shown prefix of the request's API key: who made a change, in its history."""
    return _bearer(request)[:12]


TenantId = Annotated[str, Depends(require_tenant)]
Admin = Depends(require_admin)
