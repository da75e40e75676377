"""Claiming due jobs: one atomic step per database vendor.

Each function moves up to ``limit`` due READY jobs to RUNNING for one worker
(attempts + 1, the worker recorded) and returns them, so no job is ever
claimed twice:

- PostgreSQL: a single ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)
  RETURNING``; the CTE keeps the planner from re-running the LIMIT subquery.
- MySQL 8 / MariaDB 10.6+: ``SELECT ... FOR UPDATE SKIP LOCKED`` and an
  ``UPDATE`` in one short transaction (there is no ``UPDATE ... RETURNING``).
- SQLite: a single ``UPDATE ... RETURNING``. SQLite runs one writer at a time
  and a statement is atomic, so no row locks are needed; this holds for any
  number of processes on one host.

Only as many jobs as the worker has free slots are claimed, so nothing is
reserved that will not start now, and priorities hold across workers.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from django.db import IntegrityError, NotSupportedError, connections, transaction
from django.utils import timezone

from ..db import CONNECTION_ERRORS, database_now, discard_connection, now_sql
from ..exceptions import InvalidJobRow, InvalidTaskArguments
from ..models import Job, JobStatus, Queue, error_entry
from ..models.dependencies import Ended, jobs_ended
from ..private_api import model_from_row

logger = logging.getLogger("django_bgtasks.worker")

# The queues paused now (models/queues.py): a claim takes none of their jobs.
_PAUSED = f"SELECT name FROM {Queue._meta.db_table} WHERE paused_at IS NOT NULL"

# Columns every claim sets; {now} is the database's time (its clock is the
# one all hosts compare), {append} the vendor's "append to a JSON array".
_CLAIM_SET = """
    status = %s,
    attempts = {job}.attempts + 1,
    started_at = COALESCE({job}.started_at, {now}),
    last_attempted_at = {now},
    worker_id = %s,
    worker_ids = {append}
"""


def claim_jobs(
    using: str, *, worker_id: str, queues: list[str] | None, limit: int
) -> list[Job]:
    """Atomically move up to ``limit`` due jobs of ``queues`` (None: every
    queue) to RUNNING for worker ``worker_id``, and return them in claim
    order: priority (highest first), then ``run_after``, then id. No job is
    claimed by two workers."""
    if limit <= 0:
        return []
    connection = connections[using]
    claim = _CLAIMS.get(connection.vendor)
    if claim is None:
        raise NotSupportedError(
            f"django_bgtasks cannot claim jobs on {connection.display_name}; "
            f"it supports PostgreSQL, MySQL/MariaDB and SQLite."
        )
    jobs, unreadable = claim(
        connection, worker_id=worker_id, queues=queues, limit=limit
    )
    for pk, exc in unreadable.items():
        _fail_unreadable(using, pk, worker_id, exc)
    # RETURNING gives rows in no particular order; start them in claim order.
    jobs.sort(key=lambda job: (-job.priority, job.run_after, job.id))
    return jobs


def _fail_unreadable(using: str, pk: int, worker_id: str, exc: Exception) -> None:
    """A job claimed with others whose row cannot be read (a time or JSON
    written around the API): it fails alone, the others run."""
    error = InvalidJobRow(
        f"The job's row cannot be read ({type(exc).__name__}: {exc}), so it "
        f"cannot be run. Some column holds a value written around the API."
    )
    logger.error("Job %s cannot be read and is failed: %s", pk, error)
    Job.objects.using(using).fail_unreadable(pk, worker_id=worker_id, error=error)


def _load(using: str, ids: list[int]) -> tuple[list[Job], dict[int, Exception]]:
    """The claimed jobs of ``ids``, with the ORM; the ids of those that
    cannot be read, with why. The jobs are this worker's now: a connection
    lost meanwhile is opened again and the read tried again (a few times,
    then the error is raised), never taken for a row that cannot be read."""
    pause = 0.2
    for _ in range(LOAD_TRIES - 1):
        try:
            return _read(using, ids)
        except CONNECTION_ERRORS:
            discard_connection(using)
            time.sleep(pause)
            pause *= 2
    return _read(using, ids)  # the last try: its error is raised


def _read(using: str, ids: list[int]) -> tuple[list[Job], dict[int, Exception]]:
    jobs = Job.objects.using(using)
    try:
        return list(jobs.filter(id__in=ids)), {}
    except CONNECTION_ERRORS:
        raise
    except Exception:
        pass  # one row the ORM cannot read: read them one by one
    loaded, unreadable = [], {}
    for pk in ids:
        try:
            loaded.append(jobs.get(pk=pk))
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            unreadable[pk] = exc
    return loaded, unreadable


# Reads of the claimed jobs (MySQL, SQLite) before a lost connection's error
# is raised: about 3 s of pauses in all.
LOAD_TRIES = 5


def _set_params(worker_id):
    return [JobStatus.RUNNING.value, worker_id, worker_id]


def _claim_postgresql(connection, *, worker_id, queues, limit):
    table = connection.ops.quote_name(Job._meta.db_table)
    params = [JobStatus.READY.value]
    if queues is None:
        queue_filter = ""
    elif len(queues) == 1:  # "= %s": the index's order holds for one queue
        queue_filter = "AND queue_name = %s"
        params.append(queues[0])
    else:
        queue_filter = "AND queue_name = ANY(%s)"
        params.append(list(queues))
    params.append(limit)
    params += _set_params(worker_id)
    db_now = now_sql(connection)
    sql = f"""
        WITH claimable AS (
            SELECT id FROM {table}
            WHERE status = %s AND run_after <= {db_now} {queue_filter}
                AND queue_name <> ALL (ARRAY({_PAUSED}))
            ORDER BY priority DESC, run_after, id
            LIMIT %s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE {table} AS job SET {
        _CLAIM_SET.format(
            job="job",
            now=db_now,
            append="job.worker_ids || jsonb_build_array(%s::text)",
        )
    }
        FROM claimable WHERE job.id = claimable.id
        RETURNING {_RETURNING}
    """
    with connection.cursor() as cursor:
        if len(queues or ()) < 2 and _can_pin_plan(connection, cursor):
            # The claim must walk its READY index in claim order and stop at
            # the limit. With stale statistics (a burst of jobs into a table
            # of finished ones, before the next ANALYZE) the planner expects
            # a few READY rows and sorts them all instead, on every claim:
            # draining a backlog turns quadratic. Sorting is switched off
            # for this statement alone (SET LOCAL, in the implicit
            # transaction of one query string), leaving the ordered index
            # scan as the plan. (Several queues need a sort whatever the
            # plan: the planner chooses.)
            cursor.execute(_NO_SORT + sql, params)
            while cursor.description is None and cursor.nextset():
                pass
        else:
            cursor.execute(sql, params)
        moments = {}
        jobs, unreadable = [], {}
        for row in cursor.fetchall():
            try:
                jobs.append(_job(connection.alias, row, moments))
            except Exception as exc:  # a time or JSON it cannot read
                unreadable[row[_ID_AT]] = exc
        return jobs, unreadable


_NO_SORT = "SET LOCAL enable_sort = off; "


def _can_pin_plan(connection, cursor) -> bool:
    """Whether ``_NO_SORT`` can lead the claim's query string: the cursor
    binds parameters on the client and sends the text as one simple query
    (psycopg 2, and psycopg 3's ClientCursor, Django's default), and no
    transaction is open that SET LOCAL would outlast the claim in."""
    if connection.in_atomic_block or not connection.get_autocommit():
        return False
    raw = cursor.cursor
    if type(raw).__module__.startswith("psycopg2"):
        return True
    try:
        from psycopg import ClientCursor
    except ImportError:
        return False
    return isinstance(raw, ClientCursor)


# A claimed row comes back lean: the JSON columns as one JSON array (one
# parse), the times as seconds since the epoch (no per-column loaders), and
# without the columns no worker reads (deferred on the Job: one read of
# such a field would cost a query; test_claim.py checks none is read).
NOT_RETURNED = {"task_run_after", "unique_key", "workflow_id", "waiting_for"}
# Nor the stop request, NULL on every claimed row (a READY job never
# carries one: models/transitions.py): set so, not read. The worker sets it
# when it hears of one.
UNSET_WHEN_CLAIMED = {"cancel_requested_at": None, "cancel_requested_by": None}
_FIELDS = [
    f
    for f in Job._meta.concrete_fields
    if f.name not in NOT_RETURNED and f.name not in UNSET_WHEN_CLAIMED
]
_JSON = [f for f in _FIELDS if f.get_internal_type() == "JSONField"]
_TIMES = [f for f in _FIELDS if f.get_internal_type() == "DateTimeField"]
_PLAIN = [f for f in _FIELDS if f not in _JSON and f not in _TIMES]
_RETURNING = ", ".join(
    [
        *(f"job.{f.column}" for f in _PLAIN),
        # date_part gives float8 directly: half the server's time of
        # extract's numeric cast to float8 (2 µs less per claimed row).
        *(f"date_part('epoch', job.{f.column})" for f in _TIMES),
        f"jsonb_build_array({', '.join(f'job.{f.column}' for f in _JSON)})::text",
    ]
)


_PLAIN_NAMES = [f.attname for f in _PLAIN]
_ID_AT = _PLAIN_NAMES.index("id")
_TIME_NAMES = [f.attname for f in _TIMES]
_JSON_NAMES = [f.attname for f in _JSON]
_TIMES_AT = slice(len(_PLAIN), len(_PLAIN) + len(_TIMES))


def _job(using: str, row, moments: dict[float, datetime]) -> Job:
    """A Job from a claimed row, built without the ORM's per-column loaders
    and converters: the claim is the worker's hottest query. ``moments``:
    the times made so far for this claim's rows, by their seconds (the
    claim's own time is on every row, and jobs enqueued together share
    theirs)."""
    values = dict(zip(_PLAIN_NAMES, row, strict=False))  # the row goes on
    for name, seconds in zip(_TIME_NAMES, row[_TIMES_AT], strict=True):
        if seconds is None:
            values[name] = None
            continue
        moment = moments.get(seconds)
        if moment is None:
            moment = moments[seconds] = datetime.fromtimestamp(seconds, UTC)
        values[name] = moment
    values.update(zip(_JSON_NAMES, _decode_json(row[-1]), strict=True))
    values.update(UNSET_WHEN_CLAIMED)
    return model_from_row(Job, using, values)


_decode_json = json.JSONDecoder().decode  # json.loads, without its checks


def _claim_sqlite(connection, *, worker_id, queues, limit):
    table = connection.ops.quote_name(Job._meta.db_table)
    queue_filter = ""
    queue_params = []
    if queues is not None:
        queue_filter = f"AND queue_name IN ({', '.join(['%s'] * len(queues))})"
        queue_params = list(queues)
    db_now = now_sql(connection)
    sql = f"""
        UPDATE {table} SET {
        _CLAIM_SET.format(
            job=table, now=db_now, append="json_insert(worker_ids, '$[#]', %s)"
        )
    }
        WHERE id IN (
            SELECT id FROM {table}
            WHERE status = %s AND run_after <= {db_now} {queue_filter}
                AND queue_name NOT IN ({_PAUSED})
            ORDER BY priority DESC, run_after, id
            LIMIT %s
        )
        RETURNING id
    """
    params = [*_set_params(worker_id), JobStatus.READY.value, *queue_params, limit]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [row[0] for row in cursor.fetchall()]
    return _load(connection.alias, ids)


def _claim_mysql(connection, *, worker_id, queues, limit):
    table = connection.ops.quote_name(Job._meta.db_table)
    due = (
        Job.objects.using(connection.alias)
        .due()
        .order_by("-priority", "run_after", "id")
        .select_for_update(skip_locked=True)
        .values_list("id", "priority", "run_after")
    )
    with transaction.atomic(using=connection.alias):
        # The paused queues, read apart: a locking read would lock (and
        # SKIP LOCKED skip) their rows too.
        paused = Queue.objects.using(connection.alias).paused_names()
        if paused:
            due = due.exclude(queue_name__in=paused)
            if queues is not None:
                queues = [queue for queue in queues if queue not in paused]
        # One index-ordered scan per queue (or one over all queues): InnoDB
        # locks every row a locking read examines, so an ORDER BY that no
        # index serves (several queues at once) would lock every due job.
        # Rows locked here but not claimed are free again at commit.
        if queues is None:
            candidates = list(due[:limit])
        else:
            candidates = [
                row for queue in queues for row in due.filter(queue_name=queue)[:limit]
            ]
        candidates.sort(key=lambda row: (-row[1], row[2], row[0]))
        ids = [row[0] for row in candidates[:limit]]
        if not ids:
            return [], {}
        try:
            with transaction.atomic(using=connection.alias):
                _mark_claimed(connection, table, ids, worker_id)
        except IntegrityError:
            # MariaDB checks a row's JSON again on every update: a row whose
            # JSON was corrupted behind its back (constraint checks off)
            # cannot be claimed. Fail those rows; claim the others.
            bad = _fail_corrupt(connection, ids)
            ids = [pk for pk in ids if pk not in bad]
            if not ids:
                return [], {}
            _mark_claimed(connection, table, ids, worker_id)
    return _load(connection.alias, ids)


def _mark_claimed(connection, table, ids, worker_id) -> None:
    claim_set = _CLAIM_SET.format(
        job=table,
        now=now_sql(connection),
        append="JSON_ARRAY_APPEND(worker_ids, '$', %s)",
    )
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {claim_set} WHERE id IN ({marks})",
            [*_set_params(worker_id), *ids],
        )


_JSON_COLUMNS = {
    "args": "'[]'",
    "kwargs": "'{}'",
    "backoff": "'{}'",
    "worker_ids": "'[]'",
    "errors": "'[]'",
    "return_value": "NULL",
    "progress": "NULL",
}


def _fail_corrupt(connection, ids) -> set[int]:
    """Fail the jobs among ``ids`` whose stored JSON MariaDB finds invalid,
    replacing it with empty values it accepts; return their ids."""
    table = connection.ops.quote_name(Job._meta.db_table)
    marks = ", ".join(["%s"] * len(ids))
    valid = " AND ".join(f"({c} IS NULL OR JSON_VALID({c}))" for c in _JSON_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {table} WHERE id IN ({marks}) AND NOT ({valid})", ids
        )
        bad = [row[0] for row in cursor.fetchall()]
        if not bad:
            return set()
        error = error_entry(
            InvalidTaskArguments(
                "The job's stored arguments are corrupt: its JSON was written "
                "behind the ORM's back and cannot be read, so it cannot be run. "
                "The unreadable values were emptied."
            ),
            attempt=1,
            worker_id=None,
            at=timezone.now(),
        )
        repair = ", ".join(
            f"{c} = IF({c} IS NULL OR JSON_VALID({c}), {c}, {default})"
            for c, default in _JSON_COLUMNS.items()
            if c != "errors"
        )
        cursor.execute(
            f"UPDATE {table} SET {repair}, errors = %s, status = %s, "
            f"finished_at = {now_sql(connection)}, attempts = attempts + 1 "
            f"WHERE id IN ({', '.join(['%s'] * len(bad))})",
            [json.dumps([error]), JobStatus.FAILED.value, *bad],
        )
    # The workflow steps waiting for them end with them (they fail alone).
    jobs = Job.objects.using(connection.alias)
    ended = jobs.filter(pk__in=bad, has_dependents=True).values_list("pk", flat=True)
    if ended:
        jobs_ended(
            connection.alias,
            [Ended(pk, JobStatus.FAILED) for pk in ended],
            database_now(connection.alias),
        )
    return set(bad)


_CLAIMS = {
    "postgresql": _claim_postgresql,
    "mysql": _claim_mysql,
    "sqlite": _claim_sqlite,
}
