"""The one error tree of tidings; the API turns each into a problem document.

::

    TidingsError
    ├── InvalidInput            400/422: a request that can never succeed as sent
    │   ├── InvalidEndpointUrl  not http(s), no host, or an address the guard refuses
    │   ├── InvalidTemplate     a template that does not compile (names the line)
    │   └── MissingField        400: an email lacks a field its template uses
    ├── NotFound                404: no such object for this tenant
    ├── Conflict                409: e.g. an Idempotency-Key reused with another body
    ├── Unauthorized            401: a bad or missing credential
    ├── Forbidden               403: a valid credential on a route it may not use
    ├── AddressBlocked          a delivery's destination resolved to a refused address
    ├── StoreError              the store failed; the request may be retried
    │   └── StoreUnavailable    the store cannot be reached at all
    └── EncryptionKeyError      the keys given do not open the store's secrets (a
                                start-up error; names key ids, never a key or secret)
"""

from __future__ import annotations


class TidingsError(Exception):
    """Root of every error tidings raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(TidingsError):
    status = 422
    title = "Invalid input"


class InvalidEndpointUrl(InvalidInput):
    title = "Invalid endpoint URL"


class InvalidTemplate(InvalidInput):
    title = "Invalid template"


class MissingField(InvalidInput):
    status = 400
    title = "Missing field"


class NotFound(TidingsError):
    status = 404
    title = "Not found"


class Conflict(TidingsError):
    status = 409
    title = "Conflict"


class Unauthorized(TidingsError):
    status = 401
    title = "Unauthorized"


class Forbidden(TidingsError):
    status = 403
    title = "Forbidden"


class AddressBlocked(TidingsError):
    """The SSRF guard refused every address a destination resolved to."""

    status = 422
    title = "Address blocked"


class StoreError(TidingsError):
    status = 503
    title = "Store error"


class StoreUnavailable(StoreError):
    title = "Store unavailable"


class EncryptionKeyError(TidingsError):
    """The encryption keys given do not open a secret the store keeps (or none were
    given where they must be). Raised at start, before anything else runs."""

    title = "Encryption key error"
