"""Indexes and constraints that each database gets in the form it supports."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import models
from django.db.models import BooleanField, ExpressionWrapper, F, Func, Q, Value

from .status import AT_REST


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


class ListIndex(StatusIndex):
    """An index by a column the admin's job list filters on (``fields``).

    On PostgreSQL, of the jobs at rest only (``status``: finished, or a
    workflow's step waiting): a job costs it one write, when it comes to
    rest, and the list finds READY and RUNNING jobs through the claims'
    indexes instead (``JobQuerySet.matching`` writes its condition so that
    PostgreSQL can). An index of every row would cost a job a write at
    each of its three row versions there (measured: two such indexes cut
    bulk enqueue by a quarter). Elsewhere an index of every row, without
    ``status`` in it: InnoDB and SQLite write a row's entry again only when
    its columns change, so it costs a job one write, at enqueue (SQLite
    would not read a partial index for ``matching``'s condition: it uses
    one only where the query repeats the index's own terms)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("status", [status.value for status in AT_REST])
        super().__init__(*args, **kwargs)

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor == "postgresql":
            return super().create_sql(model, schema_editor, using=using, **kwargs)
        index = models.Index(fields=self.fields, name=self.name)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


class ReadyIndex(StatusIndex):
    """The claims' index of READY jobs, in claim order (``fields``).

    On PostgreSQL, the jobs of no limit come first: a key column
    ``limit_key IS NULL`` goes before ``-priority``. A query that asks for
    those jobs alone fixes it and walks them in claim order, so a limited
    claim (``sql/limited.py``) reads none of the jobs its limits hold back,
    however many wait; the plain claim (``sql/claim.py``) reads both parts
    and merges them. Without that column the held-back jobs lay across
    every limited claim's path, each read from the table and passed over:
    2,000 of them doubled the claim's time. Elsewhere a ``StatusIndex`` of
    ``fields`` (their claims read both kinds of job in one walk).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("status", "READY")
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        path, args, kwargs = super().deconstruct()
        kwargs.pop("status")
        return path, args, kwargs

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor != "postgresql":
            return super().create_sql(model, schema_editor, using=using, **kwargs)
        free_first = ExpressionWrapper(
            Q(limit_key__isnull=True), output_field=BooleanField()
        )
        columns = []
        for field in self.fields:
            if field == "-priority":
                columns.append(free_first)
            columns.append(_ordered(field))
        index = models.Index(*columns, name=self.name, condition=Q(status=self.status))
        return index.create_sql(model, schema_editor, using=using, **kwargs)


def _ordered(field: str):
    """A field of an index's ``fields`` (``-name``: descending) as the
    expression an index of expressions takes."""
    name = field.removeprefix("-")
    return F(name).desc() if field.startswith("-") else F(name)


def rebuild_concurrently(schema_editor, model, name: str, index_named) -> None:
    """PostgreSQL, for a migration: build ``index_named(name + "_building")``
    with ``CONCURRENTLY`` beside the index ``name``, then drop that and give
    its name to the new one; enqueues and claims go on meanwhile (so the
    migration is not atomic). Started again after a failure, it begins
    afresh."""
    quote = schema_editor.quote_name
    building = f"{name}_building"
    add_concurrently(schema_editor, model, index_named(building))
    drop_concurrently(schema_editor, name)
    schema_editor.execute(f"ALTER INDEX {quote(building)} RENAME TO {quote(name)}")


def add_concurrently(schema_editor, model, index) -> None:
    """PostgreSQL, for a migration: build ``index`` with ``CONCURRENTLY``,
    after dropping what a failed earlier build left under its name."""
    drop_concurrently(schema_editor, index.name)
    schema_editor.execute(index.create_sql(model, schema_editor, concurrently=True))


def drop_concurrently(schema_editor, name: str) -> None:
    """PostgreSQL, for a migration: drop the index ``name``, if any, with
    ``CONCURRENTLY``."""
    quoted = schema_editor.quote_name(name)
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quoted}")


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
    other READY jobs. On PostgreSQL it leads with the limit's name (the
    key up to its ':'), so the claim walks each limit's jobs apart and
    reads none of a full limit's. MySQL and MariaDB (whose limited claim
    does not use it) get an index of ``limit_key``, written once per row."""

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor == "postgresql":
            limit_name = Func(
                F("limit_key"),
                Value(":"),
                Value(1),
                function="split_part",
                output_field=models.TextField(),
            )
            index = models.Index(
                limit_name,
                *(_ordered(field) for field in self.fields),
                name=self.name,
                condition=Q(status="READY", limit_key__isnull=False),
            )
        elif schema_editor.connection.features.supports_partial_indexes:
            condition = Q(status="READY", limit_key__isnull=False)
            index = models.Index(
                fields=self.fields, name=self.name, condition=condition
            )
        else:
            index = models.Index(fields=["limit_key"], name=self.name)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


class LimitedRunningIndex(models.Index):
    """The RUNNING jobs that count against a limit of a task, by key: what
    a limited claim counts at every claim (``sql/limited.py``), read
    without the RUNNING jobs of no limit beside them, or the dead entries
    those leave behind in a busy table. Only where partial indexes exist
    (a job of no limit costs it nothing). MySQL and MariaDB get none: an
    index of every row's key would cost each job's every change of status
    a write, and their limited claim counts through the RUNNING index."""

    def _for(self, schema_editor) -> models.Index | None:
        if not schema_editor.connection.features.supports_partial_indexes:
            return None
        condition = Q(status="RUNNING", limit_key__isnull=False)
        return models.Index(fields=self.fields, name=self.name, condition=condition)

    def create_sql(self, model, schema_editor, using="", **kwargs):
        index = self._for(schema_editor)
        if index is None:
            return NOTHING
        return index.create_sql(model, schema_editor, using=using, **kwargs)

    def remove_sql(self, model, schema_editor, **kwargs):
        index = self._for(schema_editor)
        if index is None:
            return NOTHING
        return index.remove_sql(model, schema_editor, **kwargs)


# A statement that does nothing, for an index one database does not get
# (only MySQL and MariaDB lack partial indexes among those supported).
NOTHING = "DO 0"


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
