"""Helpers the tests share, one module per kind of helper.

Import from the module that holds a helper (``from support.api import bearer``); this
package re-exports nothing, so that where a helper lives is said once.

- ``stores``: the store key, PostgreSQL's test databases, migrating a store.
- ``factories``: records built in memory with test defaults.
- ``receivers``: loopback webhook receivers and the answers they can give; serving any
  aiohttp app on 127.0.0.1.
- ``smtp``: aiosmtpd servers that play a script and keep what they accept.
- ``sockets``: free ports, and checking that nothing was left open.
- ``waiting``: polling until a condition holds.
- ``served``: a tidings started in this process, and a client of its API.
- ``api``: shortcuts for the HTTP API (credentials, tenants, endpoints, messages).
- ``emails``: shortcuts for templates and emails.
- ``problems``: RFC 9457 problem documents and requests that must be refused.
- ``metrics``: reading ``/metrics`` back.
- ``processes``: ``tidings`` run as a subprocess, waited for and killed; this process's
  children.
"""
