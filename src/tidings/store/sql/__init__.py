"""The Store on SQLAlchemy Core, for SQLite and PostgreSQL.

``core`` is the machinery, written once (threads, the write lock, transactions,
error translation, the lifecycle); one module per kind of record holds its
transactions (``settings``, ``tenants``, ``endpoints``, ``messages`` with
``ingest``, ``deliveries``, ``emails``, ``health_records`` with ``health``);
``store`` composes them into :class:`~tidings.store.sql.store.SqlStore`, which
``sqlite`` and ``postgres`` subclass. ``rows`` maps rows to records, ``schema``
is the tables, ``hot`` the result write-back in the drivers' SQL, ``sealing`` the
secrets at rest, ``migrations`` the Alembic history.
"""
