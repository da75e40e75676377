"""Claiming due jobs: one atomic step per database vendor.

Each function moves up to ``limit`` due READY jobs to RUNNING for one worker
(attempts + 1, the worker recorded) and returns them, so no job is ever
claimed twice:

- PostgreSQL: a single ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)
  RETURNING``; the CTEs keep the planner from re-running the LIMIT
  subqueries (one per part of the READY index: jobs of no limit, of limits).
- MySQL 8 / MariaDB 10.6+: ``SELECT ... FOR UPDATE SKIP LOCKED`` and an
  ``UPDATE`` in one short transaction (there is no ``UPDATE ...
  RETURNING``: the claimed jobs are made from the columns the locking read
  returned, of one queue or of all; of several queues, read after it).
- SQLite: a single ``UPDATE ... RETURNING``. SQLite runs one writer at a time
  and a statement is atomic, so no row locks are needed; this holds for any
  number of processes on one host.

Only as many jobs as the worker has free slots are claimed, so nothing is
reserved that will not start now, and priorities hold across workers.
"""

from __future__ import annotations

import functools
import json
import logging

from django.db import (
    IntegrityError,
    NotSupportedError,
    OperationalError,
    connections,
)
from django.utils import timezone

from ..db import (
    CONNECTION_ERRORS,
    database_now,
    id_list,
    in_plain_transaction,
    is_deadlock,
    now_sql,
    statements_in_one_transaction,
    still_answers,
)
from ..exceptions import InvalidJobRow, InvalidTaskArguments
from ..limits import declared_limits
from ..models import Job, JobStatus, error_entry
from ..models.dependencies import Ended, jobs_ended
from .claimed import (
    CLAIM_SET,
    PAUSED_QUEUES,
    RETURNING,
    claimed_after_all,
    commit_went_unanswered,
    jobs_from,
    jobs_read,
    lean_columns,
    lean_jobs,
    lean_refused,
    micros_sql,
    named_params,
    queue_literal,
    read_again,
    refuse_lean,
    set_params,
)
from .limited import claim_limited
from .pinned import can_pin_plan, run_pinned

logger = logging.getLogger("django_bgtasks.worker")


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
    declared = declared_limits()
    if declared:
        jobs, unreadable = claim_limited(
            connection,
            worker_id=worker_id,
            queues=queues,
            limit=limit,
            declared=declared,
            claim_ids=_CLAIM_IDS.get(connection.vendor),
            load=_load,
        )
    else:
        jobs, unreadable = claim(
            connection, worker_id=worker_id, queues=queues, limit=limit
        )
    for pk, exc in unreadable.items():
        _fail_unreadable(using, pk, worker_id, exc)
    # RETURNING gives rows in no particular order; start them in claim order.
    jobs.sort(key=lambda job: (-job.priority, job.run_after, job.id))
    return jobs


def prepare_claim(using: str, *, worker_id: str, queues: list[str] | None) -> None:
    """Run the claim for no job on this thread's connection (PostgreSQL,
    where no limit is declared): its statement is prepared and planned (for
    one queue or all; several are claimed with its text), and the server's
    catalog caches for it filled, before a job waits for them."""
    connection = connections[using]
    if connection.vendor == "postgresql" and not declared_limits():
        _claim_postgresql(connection, worker_id=worker_id, queues=queues, limit=0)


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
    return read_again(using, lambda: _read(using, ids))


def _read(using: str, ids: list[int]) -> tuple[list[Job], dict[int, Exception]]:
    jobs = Job.objects.using(using)
    try:
        return jobs_read(connections[using], ids), {}
    except CONNECTION_ERRORS:
        raise
    except Exception:
        pass  # one row that cannot be read: read them one by one
    loaded, unreadable = [], {}
    for pk in ids:
        try:
            loaded.append(jobs.get(pk=pk))
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            unreadable[pk] = exc
    return loaded, unreadable


def _claim_postgresql(connection, *, worker_id, queues, limit):
    sql, params = claim_statement_postgresql(connection, worker_id, queues, limit)
    with connection.cursor() as cursor:
        if len(queues or ()) < 2 and can_pin_plan(connection, cursor):
            # The claim must walk its READY index in claim order and stop at
            # the limit. With stale statistics (a burst of jobs into a table
            # of finished ones, before the next ANALYZE) the planner expects
            # a few READY rows and sorts them all instead, on every claim:
            # draining a backlog turns quadratic. Sorting is switched off
            # for this statement alone, leaving the ordered index scan as
            # the plan, made once per connection (sql/pinned.py). (Several
            # queues need a sort whatever the plan: the planner chooses.)
            [rows] = run_pinned(connection, cursor, [sql], params, prepared=True)
        else:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return jobs_from(connection, rows)


def claim_statement_postgresql(connection, worker_id, queues, limit):
    """The PostgreSQL claim's statement and its parameters (by name)."""
    params = named_params(worker_id, limit)
    if queues is not None and len(queues) != 1:  # none: ANY of an empty array
        params["queue"] = list(queues)
    sql = _claim_text_postgresql(
        connection.alias, None if queues is None else tuple(queues)
    )
    return sql, params


@functools.lru_cache(maxsize=64)
def _claim_text_postgresql(using: str, queues: tuple[str, ...] | None) -> str:
    """The text of ``claim_statement_postgresql``, made once per database
    and queues: the worker's hottest statement, the same at every claim."""
    connection = connections[using]
    table = connection.ops.quote_name(Job._meta.db_table)
    if queues is None:
        queue_filter = ""
    elif len(queues) == 1:
        # "=": the queue's READY index holds its jobs in claim order. The
        # name written in the text, not a parameter: a plan made once for
        # any queue (prepared, sql/pinned.py) might walk the index of all
        # queues past another queue's backlog.
        queue_filter = f"AND queue_name = {queue_literal(connection, queues[0])}"
    else:
        queue_filter = "AND queue_name = ANY(%(queue)s)"
    db_now = now_sql(connection)
    # READY written in the text too: a plan made for any status could not
    # use the READY indexes, partial on it.
    due = f"""
        status = '{JobStatus.READY.value}' AND run_after <= {db_now}
            {queue_filter} AND queue_name <> ALL (ARRAY({PAUSED_QUEUES}))
    """
    order = "ORDER BY priority DESC, run_after, id"
    # The jobs of no limit and those of limits, each walked in claim order
    # in its part of the READY index (models/indexes.py: "IS FALSE" is the
    # form of "IS NOT NULL" that finds the second part), then merged. Each
    # part locks as it reads, up to ``limit`` rows: a job of a limit read
    # but not among the best stays locked (other claims pass over it) until
    # the claim's transaction ends. Only a worker that knows no limit reads
    # such jobs here (one that knows of limits claims in sql/limited.py).
    # The claimed rows are then found by id, from an array of them: a plan
    # made once (sql/pinned.py) while the table was empty took the table
    # for one row, and once it had grown walked all of it for each claim.
    claim_set = CLAIM_SET.format(
        job="job",
        now=db_now,
        append="job.worker_ids || jsonb_build_array(%s::text)",
    )
    # CLAIM_SET's placeholders, in order: the status, then the worker twice
    # (as two parameters: one a varchar, one text, for the PREPARE).
    for name in ("status", "worker", "worker_text"):
        claim_set = claim_set.replace("%s", f"%({name})s", 1)
    sql = f"""
        WITH free AS (
            SELECT id, priority, run_after FROM {table}
            WHERE {due} AND limit_key IS NULL
            {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED
        ), of_limits AS (
            SELECT id, priority, run_after FROM {table}
            WHERE {due} AND (limit_key IS NULL) IS FALSE
            {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED
        ), claimable AS (
            SELECT id FROM (
                SELECT * FROM free UNION ALL SELECT * FROM of_limits
            ) AS due {order} LIMIT %(limit)s
        )
        UPDATE {table} AS job SET {claim_set}
        WHERE job.id = ANY (ARRAY(SELECT id FROM claimable))
        RETURNING {RETURNING}
    """
    return sql


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
        CLAIM_SET.format(
            job=table, now=db_now, append="json_insert(worker_ids, '$[#]', %s)"
        )
    }
        WHERE id IN (
            SELECT id FROM {table}
            WHERE status = %s AND run_after <= {db_now} {queue_filter}
                AND queue_name NOT IN ({PAUSED_QUEUES})
            ORDER BY priority DESC, run_after, id
            LIMIT %s
        )
        RETURNING id
    """
    params = [*set_params(worker_id), JobStatus.READY.value, *queue_params, limit]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [row[0] for row in cursor.fetchall()]
    return _load(connection.alias, ids)


def _claim_mysql(connection, *, worker_id, queues, limit):
    # The paused queues, read apart: a locking read would lock (and SKIP
    # LOCKED skip) their rows too. Before the claim's transaction, so that
    # it reads no snapshot (below).
    with connection.cursor() as cursor:
        cursor.execute(PAUSED_QUEUES)
        paused = {row[0] for row in cursor.fetchall()}
    # A claim that opens its own transaction runs it at REPEATABLE READ
    # (below), where two claims can deadlock over the gaps they lock: the
    # database undid the loser whole, nothing was claimed, so it claims
    # again. Inside a caller's transaction: once, at that one's level.
    own = connection.get_autocommit()
    for attempt in range(1, CLAIM_TRIES + 1):
        with_rows = not lean_refused()
        try:
            ids, rows, now_micros = _claim_ids_mysql(
                connection,
                worker_id=worker_id,
                queues=queues,
                limit=limit,
                paused=paused,
                with_rows=with_rows,
            )
            break
        except OperationalError as exc:
            if is_deadlock(exc):
                if not own or attempt == CLAIM_TRIES:
                    raise
            elif with_rows and attempt < CLAIM_TRIES and still_answers(connection):
                # mysqlclient raises a server's refusal of a statement as
                # it does a lost connection: a server that refuses the
                # lean columns is claimed from without them from now on.
                refuse_lean(exc)
            else:
                raise
    if not ids:
        return [], {}
    if rows:
        # The claimed jobs from the rows the locking read returned, with no
        # second read; a row that cannot be made into one: all read again,
        # the unreadable ones found one by one.
        try:
            claimed = [rows[pk] for pk in ids]
            return (
                lean_jobs(
                    connection, claimed, claimed_by=worker_id, now_micros=now_micros
                ),
                {},
            )
        except Exception:
            pass
    return _load(connection.alias, ids)


# Tries of a MySQL/MariaDB claim that its database undid to break a deadlock.
CLAIM_TRIES = 3

# InnoDB's locking read walks the READY index past the entries that the
# last claims left behind (delete-marked until InnoDB's purge removes
# them); under READ COMMITTED (Django's default, and bgtasks.E013's) it
# locks and unlocks each one: 2.1 ms against 0.5 ms for a claim of 48 jobs
# behind a few thousand such entries (MariaDB 10.11; the drain 10-16%
# slower). So the claim's own transaction runs at REPEATABLE READ, which
# keeps them locked instead, with the gaps between them, until it commits
# (2-3 ms for 50 jobs: a job enqueued into a locked gap waits that long).
# It makes no plain read, so it takes no snapshot: its locking reads and
# its UPDATE read the latest rows (and MariaDB's innodb_snapshot_isolation,
# on by default from 11.6.2, has no snapshot to fail them against).
# The READY indexes (models/jobs.py), of one queue's jobs and of all.
READY_INDEX = "bgtasks_job_ready_idx"
READY_ANY_INDEX = "bgtasks_job_ready_any_idx"


def _claim_ids_mysql(connection, **claim):
    """Claim in one transaction (``_claim_ids_in_transaction``, given
    ``claim``): the ids claimed, the rows its locking read returned by id
    (if any), and the claim's time."""
    try:
        return _claim_ids_committed(connection, claim, django_knows=False)
    except _CorruptRows:
        # Rare: rows to fail, and their workflow steps with them, through
        # the ORM (select_for_update): in a transaction Django knows of.
        return _claim_ids_committed(connection, claim, django_knows=True)


def _claim_ids_committed(connection, claim, *, django_knows):
    """``_claim_ids_in_transaction`` in a transaction of its own (or a
    savepoint of the caller's); a commit gone unanswered is read back
    (``commit_went_unanswered``)."""
    own = connection.get_autocommit()
    claimed = None
    try:
        with statements_in_one_transaction(
            connection, isolation="REPEATABLE READ", django_knows=django_knows
        ):
            claimed = _claim_ids_in_transaction(connection, **claim)
    except CONNECTION_ERRORS as exc:
        if not commit_went_unanswered(connection, exc, own, claimed and claimed[0]):
            raise
        return _claimed_after_all(connection, claimed, claim["worker_id"])
    return claimed


def _claimed_after_all(connection, claimed, worker_id):
    """``claimed_after_all`` of a claim (``_claim_ids_in_transaction``'s
    result) whose commit went unanswered: what it claimed, with its rows."""
    ids, rows, now_micros = claimed
    found = set(claimed_after_all(connection, ids, worker_id, now_micros))
    ids = [pk for pk in ids if pk in found]
    return ids, {pk: row for pk, row in rows.items() if pk in found}, now_micros


class _CorruptRows(Exception):
    """The claim found rows to fail as corrupt inside a transaction of plain
    statements, which the ORM's locking reads cannot join: it is rolled
    back, to be made again in one Django knows of."""


def _claim_ids_in_transaction(
    connection, *, worker_id, queues, limit, paused, with_rows
):
    """The ids claimed; ``with_rows`` and one locking read (of one queue or
    of all), the rows it returned by id and the time the claim's UPDATE was
    given (microseconds since 1970), else no rows and None."""
    with connection.cursor() as cursor:
        candidates = []
        reads = locking_reads_mysql(
            connection, queues, paused, limit, with_rows=with_rows
        )
        for sql, params in reads:
            cursor.execute(sql, params)
            candidates += cursor.fetchall()
        candidates.sort(key=lambda row: (-row[1], row[2], row[0]))
        chosen = candidates[:limit]
        if not chosen:
            return [], {}, None
        rows, now_micros = {}, None
        if len(chosen[0]) > _CANDIDATE_COLUMNS:  # the whole rows, and the time
            now_micros = chosen[0][-1]
            rows = {row[0]: row[_CANDIDATE_COLUMNS:-1] for row in chosen}
        ids = [row[0] for row in chosen]
        ids = _mark_ids_mysql(connection, ids, worker_id, now_micros=now_micros)
        return ids, rows, now_micros


# A candidate's first columns: id, priority, run_after in microseconds (an
# integer sorts several scans' rows without mysqlclient parsing a DATETIME).
_CANDIDATE_COLUMNS = 3


def locking_reads_mysql(
    connection, queues, paused, limit, *, with_rows=False
) -> list[tuple[str, list]]:
    """A MySQL/MariaDB claim's locking reads of the due jobs of ``queues``
    (None: all) but the ``paused`` queues', with their parameters: each
    returns up to ``limit`` rows (id, priority, run_after in microseconds).
    ``with_rows`` and a single read (of one queue, or of all): then each row
    goes on with the lean read's columns (``lean_columns``: the claimed
    jobs are made from them) and the database's time (microseconds since
    1970), which the claim's UPDATE is given. (Several reads would send
    every candidate's whole row, though only ``limit`` are claimed.)"""
    due = f"WHERE status = %s AND run_after <= {now_sql(connection)}"
    params = [JobStatus.READY.value]
    if paused:
        due += f" AND queue_name NOT IN ({', '.join(['%s'] * len(paused))})"
        params += sorted(paused)
        if queues is not None:
            queues = [queue for queue in queues if queue not in paused]
    # One index-ordered scan per queue (or one over all queues): InnoDB
    # locks every row a locking read examines, so an ORDER BY that no index
    # serves (several queues at once), or a plan of the whole table (a
    # small one), would lock every due job, or every row; hence the index
    # named. Rows locked here but not claimed are free again at commit.
    table = connection.ops.quote_name(Job._meta.db_table)
    locking = " ORDER BY priority DESC, run_after, id LIMIT %s FOR UPDATE SKIP LOCKED"
    scans = (
        [(READY_ANY_INDEX, "", [])]
        if queues is None
        else [(READY_INDEX, " AND queue_name = %s", [queue]) for queue in queues]
    )
    columns = f"id, priority, {micros_sql('run_after')}"
    if with_rows and len(scans) == 1:
        columns += f", {lean_columns(connection)}, {micros_sql(now_sql(connection))}"
    return [
        (
            f"SELECT {columns} FROM {table} FORCE INDEX ({index}) "
            f"{due}{where}{locking}",
            [*params, *scan_params, limit],
        )
        for index, where, scan_params in scans
    ]


def _mark_ids_mysql(connection, ids, worker_id, now_micros=None) -> list[int]:
    """Mark the jobs ``ids``, locked by this transaction, claimed (at
    ``now_micros``, else the database's time now); return the ids of those
    claimed."""
    table = connection.ops.quote_name(Job._meta.db_table)
    try:
        # No savepoint: InnoDB undoes a failed statement alone, and Django
        # leaves a transaction usable after an IntegrityError caught inside
        # it (two round trips fewer per claim).
        _mark_claimed(connection, table, ids, worker_id, now_micros)
    except IntegrityError as exc:
        # MariaDB checks a row's JSON again on every update: a row whose
        # JSON was corrupted behind its back (constraint checks off)
        # cannot be claimed. Fail those rows; claim the others.
        if in_plain_transaction(connection):
            raise _CorruptRows from exc
        bad = _fail_corrupt(connection, ids)
        ids = [pk for pk in ids if pk not in bad]
        if ids:
            _mark_claimed(connection, table, ids, worker_id, now_micros)
    return ids


# Each vendor's "append the worker to worker_ids" (MySQL/MariaDB, SQLite).
_APPEND_WORKER = {
    "mysql": "JSON_ARRAY_APPEND(worker_ids, '$', %s)",
    "sqlite": "json_insert(worker_ids, '$[#]', %s)",
}


def _mark_claimed(connection, table, ids, worker_id, now_micros=None) -> None:
    """Mark the jobs ``ids`` claimed by ``worker_id`` (MySQL/MariaDB,
    SQLite), in one UPDATE, at the database's time now or at
    ``now_micros`` (microseconds since 1970), the time the claim read its
    jobs or took their tokens."""
    claim_set = CLAIM_SET.format(
        job=table,
        now=now_sql(connection, now_micros),
        append=_APPEND_WORKER[connection.vendor],
    )
    # By the primary key, named on MySQL/MariaDB: at REPEATABLE READ a plan
    # of the whole table (a small one) would wait for every locked row.
    hint = " FORCE INDEX (PRIMARY)" if connection.vendor == "mysql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table}{hint} SET {claim_set} WHERE id IN ({id_list(ids)})",
            set_params(worker_id),
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
            f"UPDATE {table} FORCE INDEX (PRIMARY) SET {repair}, errors = %s, "
            f"status = %s, "
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


# Marking claimed the jobs a limited claim chose (sql/limited.py, MySQL/
# MariaDB and SQLite; PostgreSQL's marks them in its own statement), locked
# by its transaction: each returns the ids to read once it commits.


def _claim_ids_sqlite(connection, ids, worker_id, now_micros=None):
    table = connection.ops.quote_name(Job._meta.db_table)
    _mark_claimed(connection, table, ids, worker_id, now_micros)
    return ids


_CLAIM_IDS = {
    "mysql": _mark_ids_mysql,
    "sqlite": _claim_ids_sqlite,
}

_CLAIMS = {
    "postgresql": _claim_postgresql,
    "mysql": _claim_mysql,
    "sqlite": _claim_sqlite,
}
