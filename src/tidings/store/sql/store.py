"""The SQL store: one object per backend, composed of one part per kind of record.

Each part (a mixin on :class:`~tidings.store.sql.core.SqlCore`) keeps one kind of
record; :class:`SqlStore` is all of them, and a backend (SQLite, PostgreSQL)
subclasses it to set its hooks and write the engine's hot paths in its driver's
SQL. Mixins rather than delegation: every part's transactions run on the same
threads, write lock and connections, and call the same backend hooks
(``_prepare``, ``_take_turns``, ``_announce``, ``_read``), which a backend
overrides once on the one object; delegating to part objects would pass the core
to each and route every hook through it, for no gain in what each part can see.
"""

from __future__ import annotations

from tidings.store.ports import Store
from tidings.store.sql.core import SqlCore
from tidings.store.sql.deliveries import DeliveryRecords
from tidings.store.sql.emails import EmailRecords
from tidings.store.sql.endpoints import EndpointRecords
from tidings.store.sql.health_records import HealthRecords
from tidings.store.sql.messages import MessageRecords
from tidings.store.sql.settings import SettingsRecords
from tidings.store.sql.tenants import TenantRecords


class SqlStore(
    SettingsRecords,
    TenantRecords,
    EndpointRecords,
    MessageRecords,
    DeliveryRecords,
    EmailRecords,
    HealthRecords,
    SqlCore,
    Store,
):
    """The Store on SQLAlchemy Core, for every SQL backend; each transaction is one
    synchronous method, run whole in a worker thread (see :mod:`~tidings.store.sql.core`).
    The claims and the result write-back (``claim``, ``record_results``) are each
    backend's own."""
