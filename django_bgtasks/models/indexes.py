"""Indexes and constraints that each database gets in the form it supports."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import models
from django.db.models import Q


class StatusIndex(models.Index):
    """An index of the jobs in some statuses only (READY: the claims' index).

    PostgreSQL and SQLite get a partial index over the rows of those
    statuses, so it stays small however many rows the others hold, and a job
    in any other status costs it no write: a new job writes only the READY
    indexes. MySQL and MariaDB have no partial indexes (Django would drop the
    condition with a warning), so there the index leads with ``status``
    instead.
    """

    def __init__(self, *args, status: str | Sequence[str], **kwargs):
        self.status = status
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        path, args, kwargs = super().deconstruct()
        return path, args, {**kwargs, "status": self.status}

    def create_sql(self, model, schema_editor, using="", **kwargs):
        features = schema_editor.connection.features
        if features.supports_partial_indexes:
            statuses = [self.status] if isinstance(self.status, str) else self.status
            # "status = a OR status = b", not "status IN (a, b)": SQLite uses a
            # partial index only where a term of the query's WHERE is a term
            # of the index's (PostgreSQL proves either form).
            condition = Q(*[("status", s) for s in statuses], _connector=Q.OR)
            index = models.Index(
                fields=self.fields, name=self.name, condition=condition
            )
        else:
            fields = self.fields
            if fields[0] != "status":
                fields = ["status", *fields]
            index = models.Index(fields=fields, name=self.name)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


class IndexWhenSet(models.Index):
    """An index of the rows where its first field is set, on the databases
    with partial indexes (elsewhere, of every row): a job that leaves it
    NULL, as most do, costs it no write there."""

    def create_sql(self, model, schema_editor, using="", **kwargs):
        partial = schema_editor.connection.features.supports_partial_indexes
        condition = Q((f"{self.fields[0]}__isnull", False)) if partial else None
        index = models.Index(fields=self.fields, name=self.name, condition=condition)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


class LimitedReadyIndex(models.Index):
    """The READY jobs that count against a limit, in claim order: where
    partial indexes exist, an index of those rows alone (a job of no limit
    costs it nothing), so a limited claim finds them without walking the
    other READY jobs. MySQL and MariaDB (whose limited claim does not use
    it) get an index of ``limit_key``, written once per row."""

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.features.supports_partial_indexes:
            condition = Q(status="READY", limit_key__isnull=False)
            index = models.Index(
                fields=self.fields, name=self.name, condition=condition
            )
        else:
            index = models.Index(fields=["limit_key"], name=self.name)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


class UniqueWhenSet(models.UniqueConstraint):
    """A unique constraint whose index holds only the rows where its first
    field is set, on the databases with partial indexes.

    Rows with a NULL never clash in a unique constraint anyway, so this is
    the same rule; the index just skips them (for ``schedule``, every job
    not enqueued by a schedule: one index write fewer per enqueue).
    """

    def _for(self, schema_editor) -> models.UniqueConstraint:
        """The plain constraint this is on ``schema_editor``'s database."""
        partial = schema_editor.connection.features.supports_partial_indexes
        condition = Q((f"{self.fields[0]}__isnull", False)) if partial else None
        return models.UniqueConstraint(
            fields=self.fields, name=self.name, condition=condition
        )

    def constraint_sql(self, model, schema_editor):
        return self._for(schema_editor).constraint_sql(model, schema_editor)

    def create_sql(self, model, schema_editor):
        return self._for(schema_editor).create_sql(model, schema_editor)

    def remove_sql(self, model, schema_editor):
        return self._for(schema_editor).remove_sql(model, schema_editor)
