"""Tenants and their API keys."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, select, update

from tidings.domain.models import ApiKey, Page, Tenant
from tidings.store.ports import Change
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.rows import fields_of, page_of
from tidings.store.sql.schema import api_keys, tenants


class TenantRecords(SqlCore):
    """The Tenants and ApiKeys roles."""

    @writes
    def create_tenant(self, tenant: Tenant) -> None:
        with self._write() as conn:
            conn.execute(insert(tenants).values(**fields_of(tenant)))

    @reads
    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._read() as conn:
            row = (conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return None if row is None else Tenant(**row._asdict())

    @reads
    def list_tenants(self, *, cursor: str | None, limit: int) -> Page[Tenant]:
        query = select(tenants).order_by(tenants.c.id.desc()).limit(limit + 1)
        if cursor:
            query = query.where(tenants.c.id < cursor)
        with self._read() as conn:
            rows = (conn.execute(query)).all()
        return page_of([Tenant(**row._asdict()) for row in rows], limit)

    @writes
    def update_tenant(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant | None:
        with self._write() as conn:
            if changes:
                conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**changes))
                self._announce(conn, Change.ENDPOINTS)  # their alarm policies
            row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
        return None if row is None else Tenant(**row._asdict())

    @writes
    def create_api_key(self, key: ApiKey) -> None:
        with self._write() as conn:
            conn.execute(insert(api_keys).values(**fields_of(key)))

    @reads
    def api_key_for_hash(self, key_hash: str) -> ApiKey | None:
        query = select(api_keys).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else ApiKey(**row._asdict())

    @reads
    def list_api_keys(self, tenant_id: str, *, cursor: str | None, limit: int) -> Page[ApiKey]:
        query = (
            select(api_keys)
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(api_keys.c.id < cursor)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return page_of([ApiKey(**row._asdict()) for row in rows], limit)

    @writes
    def revoke_api_key(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey | None:
        mine = and_(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
        with self._write() as conn:
            revoked = conn.execute(
                update(api_keys).where(mine, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
            ).rowcount
            row = conn.execute(select(api_keys).where(mine)).first()
            if revoked:
                self._announce(conn, Change.KEYS)
        return None if row is None else ApiKey(**row._asdict())

    @writes
    def touch_api_key(self, key_id: str, now: datetime) -> None:
        with self._write(durable=False) as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))
