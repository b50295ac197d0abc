"""Email templates, emails as sent, the mail sink's inbox, and what an email's
attempt adds to its result (the variant and subject sent, its status callback)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import partial

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from tidings.domain.models import (
    AttemptResult,
    EmailDetail,
    EmailRecord,
    Page,
    SinkEmail,
    StoredTemplate,
)
from tidings.store.sql.core import SqlCore, reads, writes
from tidings.store.sql.hot import Cursor, apply_results
from tidings.store.sql.ingest import Ingest
from tidings.store.sql.rows import fields_of, message_detail, page_of
from tidings.store.sql.schema import emails, sink_emails, templates


class EmailRecords(SqlCore):
    """The Templates and Emails roles, and the emails' side of result write-back."""

    @writes
    def put_template(self, template: StoredTemplate, *, create: bool) -> bool:
        t = templates.c
        with self._write() as conn:
            exists = conn.scalar(
                select(t.name).where(t.tenant_id == template.tenant_id, t.name == template.name)
            )
            if create:
                if exists is not None:
                    return False
                conn.execute(insert(templates).values(**fields_of(template)))
                return True
            if exists is None:
                return False
            conn.execute(
                update(templates)
                .where(t.tenant_id == template.tenant_id, t.name == template.name)
                .values(definition=template.definition, updated_at=template.updated_at)
            )
            return True

    @reads
    def get_template(self, tenant_id: str, name: str) -> StoredTemplate | None:
        t = templates.c
        with self._read() as conn:
            row = conn.execute(
                select(templates).where(t.tenant_id == tenant_id, t.name == name)
            ).first()
        return None if row is None else StoredTemplate(**row._asdict())

    @reads
    def list_templates(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[StoredTemplate]:
        t = templates.c
        query = select(templates).where(t.tenant_id == tenant_id).order_by(t.name).limit(limit + 1)
        if cursor:
            query = query.where(t.name > cursor)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return page_of([StoredTemplate(**row._asdict()) for row in rows], limit, key="name")

    @reads
    def template_names(self) -> list[str]:
        with self._read() as conn:
            names = select(templates.c.name).distinct().order_by(templates.c.name)
            return list(conn.scalars(names))

    @writes
    def delete_template(self, tenant_id: str, name: str) -> bool:
        t = templates.c
        with self._write() as conn:
            result = conn.execute(delete(templates).where(t.tenant_id == tenant_id, t.name == name))
        return bool(result.rowcount)

    @reads
    def get_email(self, tenant_id: str, email_id: str) -> EmailDetail | None:
        with self._read() as conn:
            row = conn.execute(
                select(emails).where(emails.c.id == email_id, emails.c.tenant_id == tenant_id)
            ).first()
            detail = None if row is None else message_detail(conn, tenant_id, email_id)
        if row is None or detail is None:
            return None
        return EmailDetail(EmailRecord(**row._asdict()), detail)

    @writes
    def add_sink_email(self, email: SinkEmail) -> None:
        with self._write(durable=False) as conn:
            conn.execute(delete(sink_emails).where(sink_emails.c.email_id == email.email_id))
            conn.execute(insert(sink_emails).values(**fields_of(email)))

    @reads
    def list_sink_emails(
        self, tenant_id: str, *, cursor: str | None, limit: int
    ) -> Page[SinkEmail]:
        k = sink_emails.c
        query = (
            select(sink_emails)
            .where(k.tenant_id == tenant_id)
            .order_by(k.email_id.desc())
            .limit(limit + 1)
        )
        if cursor:
            query = query.where(k.email_id < cursor)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return page_of([SinkEmail(**row._asdict()) for row in rows], limit, key="email_id")

    def _record_with_emails(
        self,
        conn: Connection,
        cursor: Cursor,
        results: Sequence[AttemptResult],
        now: datetime,
        *,
        percent: bool = False,
    ) -> int:
        """Write a result batch with emails in it: ``cursor`` is the driver's own, on
        ``conn``'s transaction. Emails' results also publish their status callbacks,
        through the ingest on SQLAlchemy's connection, so the batch commits whole."""
        applied: set[str] = set()
        ended = apply_results(cursor, results, now, applied=applied, percent=percent)
        # Only a result that still held its lease settles its email: a late one (the
        # email was claimed again meanwhile) publishes no callback.
        self._record_email_outcomes(conn, [r for r in results if r.delivery_id in applied], now)
        return ended

    def _record_email_outcomes(
        self, conn: Connection, results: Sequence[AttemptResult], now: datetime
    ) -> None:
        """What emails' attempts add to their results, in the results' transaction: the
        variant and subject sent, and the status callbacks, published as messages."""
        outcomes = [r.email for r in results if r.email is not None]
        for outcome in outcomes:
            conn.execute(
                update(emails)
                .where(emails.c.id == outcome.email_id)
                .values(
                    variant=outcome.variant,
                    variant_reason=outcome.variant_reason,
                    subject=outcome.subject,
                    sent_at=outcome.sent_at,
                )
            )
        callbacks = [o.callback for o in outcomes if o.callback is not None]
        if callbacks:
            Ingest(conn, now, now, partial(self._take_turns, conn)).run(callbacks)
