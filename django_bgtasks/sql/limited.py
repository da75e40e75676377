"""Claiming where limits are declared (``django_bgtasks.limits``): never
more jobs of a limit RUNNING than it allows, never more starts than its
rate, across every worker, decided in the claim.

A claim of a worker that knows of any limit runs here instead of the
single statement of ``sql/claim.py``.

PostgreSQL (``_round_postgresql``): one statement (prepared once per
connection) takes the best due jobs of no limit from the claim's READY
index and those of limits from their own partial index, leaving out the
limits with no room and taking at most as many per key as it had room for;
it claims the first kind and returns the second. Only if there are some
does a short transaction lock the rows of their limits (``LimitState``, in
name order; a limit another claim is taking is passed over), lock those
jobs, count the limits' RUNNING jobs again, take in claim order those every
limit has room for, and take their tokens. The rows stay locked until the
commit that makes the jobs RUNNING, so the next claim of a limit counts
them.

MySQL/MariaDB and SQLite (``_round``): the same in one transaction per
claim, the full limits read first and left out of its scan; a claim that
held back jobs it had slots for claims again (up to ``ROUNDS``), leaving
out the limits it filled.

The count is of job rows, not a counter kept beside them: a job leaving
RUNNING by any path (success, retry, a rescue, an operator, a row written
by hand) frees its place, and nothing can leak one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

from django.db import DatabaseError, transaction
from django.db.models import Count, Q

from ..db import database_now, now_sql
from ..limits import QUEUE_PREFIX, Admission, DeclaredLimits, limit_name
from ..locking import lock_for_writing
from ..models import Job, JobStatus, LimitState, Queue
from .claimed import (
    CLAIM_SET,
    ID_AT,
    NO_SORT,
    PAUSED_QUEUES,
    RETURNING,
    can_pin_plan,
    jobs_from,
    set_params,
)

NO_JIT = "SET LOCAL jit = off; "
# Due jobs a limited claim looks at beyond its free slots: room to pass
# over jobs of limits that fill up in this very claim.
EXTRA_SCANNED = 16
# Claims in a row while jobs were held back and slots are left: each one
# leaves out the limits the last one filled, so it goes on to the jobs
# behind them.
ROUNDS = 3


def claim_limited(connection, *, worker_id, queues, limit, declared, claim_ids, load):
    """Claim up to ``limit`` due jobs of ``queues`` for ``worker_id``
    within the ``declared`` limits. ``claim_ids(connection, ids,
    worker_id)`` marks jobs claimed and returns them, or the ids that
    ``load(using, ids)`` reads after the commit (``sql/claim.py``). Returns
    the jobs and the ids of those that cannot be read, with why."""
    jobs, unreadable = [], {}
    claim_round = _round_postgresql if connection.vendor == "postgresql" else _round
    for _ in range(ROUNDS):
        claimed, held_back = claim_round(
            connection,
            worker_id,
            queues,
            limit - len(jobs) - len(unreadable),
            declared,
            claim_ids,
        )
        for part in claimed:
            if isinstance(part, list):  # ids, read now that it has committed
                part = load(connection.alias, part) if part else ([], {})
            jobs += part[0]
            unreadable.update(part[1])
        if not held_back or len(jobs) + len(unreadable) >= limit:
            break
    return jobs, unreadable


def _round(connection, worker_id, queues, limit, declared, claim_ids):
    """One claim of MySQL/MariaDB or SQLite: what it claimed, and whether
    it held back jobs it had slots for."""
    using = connection.alias
    paused = Queue.objects.using(using).paused_names()
    tokens, _ = _tokens(using, declared)
    held = Admission(declared, _running(using, declared), tokens)
    due = Job.objects.using(using).due().in_queues(queues)
    if left_out := paused | held.full_queues():
        due = due.exclude(queue_name__in=left_out)
    if full := held.full_keys():
        due = due.exclude(limit_key__in=full)
    due = (
        due.order_by("-priority", "run_after", "id")
        .select_for_update(skip_locked=True)
        .values_list("id", "queue_name", "limit_key", "priority", "run_after")
    )
    with transaction.atomic(using=using):
        # SQLite: its one write lock, taken first, is what makes claims
        # take turns (and the reads below current).
        lock_for_writing(Job, using)
        candidates = _candidates(connection, due, queues, limit + EXTRA_SCANNED)
        if not _limit_rows(candidates, declared):
            # Jobs of no limit only: nothing to count again.
            ids = [row[0] for row in candidates[:limit]]
            return [claim_ids(connection, ids, worker_id)] if ids else [], False
        return _admit(connection, candidates, limit, declared, claim_ids, worker_id)


def _admit(connection, candidates, limit, declared, claim_ids, worker_id):
    """In the caller's transaction, which holds ``candidates`` (id, queue,
    limit key) locked: lock their limits, count again, claim in order the
    jobs every limit has room for. Returns what it claimed, and whether it
    held back jobs it had slots for."""
    using = connection.alias
    _lock(using, _limit_rows(candidates, declared))
    # Counted again behind the locks: every claim of these limits before
    # this one has committed, and none other is under way.
    tokens, now = _tokens(using, declared)
    keys = {key for _, _, key, *_ in candidates if key is not None}
    queues = {queue for _, queue, *_ in candidates if queue in declared.by_queue}
    admission = Admission(declared, _running(using, declared, keys, queues), tokens)
    chosen = []
    for pk, queue, key, *_ in candidates:
        if len(chosen) == limit:
            break
        if admission.admit(queue, key):
            chosen.append(pk)
    held_back = len(chosen) < min(limit, len(candidates))
    if not chosen:
        return [], held_back
    claimed = claim_ids(connection, chosen, worker_id)
    states = LimitState.objects.using(using)
    for name in admission.taken:
        states.filter(name=name).update(tokens=admission.tokens[name], refilled_at=now)
    return [claimed], held_back


def _round_postgresql(connection, worker_id, queues, limit, declared, claim_ids):
    """One claim on PostgreSQL: one statement leaves out the full limits,
    claims the jobs of no limit among the best due ones, and returns the
    others; only if there are some does a transaction lock their limits
    and take those with room (``_admit``)."""
    sql, params = _front_statement(connection, queues, limit, declared, worker_id)
    with connection.cursor() as cursor:
        if len(queues or ()) < 2 and can_pin_plan(connection, cursor):
            _execute_prepared(connection, cursor, sql, params)
        else:
            cursor.execute(sql, params)
        rows = cursor.fetchall()
    limited = json.loads(rows[0][-1]) if rows[0][-1] else []
    returned = [row[:-1] for row in rows if row[ID_AT] is not None]
    claimed = [jobs_from(connection, returned)]
    free = limit - len(returned)
    if not limited or free <= 0:
        return claimed, bool(limited)
    more = _admit_postgresql(connection, limited, free, declared, claim_ids, worker_id)
    # No second round: the statement took no more per key than it had room
    # for, so what _admit held back, another claim took meanwhile (or a
    # rate's tokens ran out); the next claim sees it.
    return claimed + more, False


def _admit_postgresql(connection, limited, limit, declared, claim_ids, worker_id):
    """``_admit`` for the jobs of limits the front statement returned, in
    three statements: lock their limits' rows; lock the jobs again (another
    claim may have taken some meanwhile) and count the limits' RUNNING jobs
    and tokens, behind those locks; claim the jobs with room.

    A limit whose row another claim holds is passed over (``SKIP LOCKED``),
    not waited for: that claim is taking what it has room for, and the jobs
    of no limit this claim has taken already are not held up behind it."""
    table = connection.ops.quote_name(Job._meta.db_table)
    states = connection.ops.quote_name(LimitState._meta.db_table)
    rows = _limit_rows(limited, declared)
    with connection.cursor() as cursor:
        new = [name for name in rows if (connection.alias, name) not in _MADE]
        if new:  # a limit's first use here: its row made if need be
            cursor.execute(
                f"INSERT INTO {states} (name) SELECT unnest(%s::text[]) "
                f"ON CONFLICT DO NOTHING",
                [new],
            )
            _MADE.update((connection.alias, name) for name in new)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT name FROM {states} WHERE name = ANY(%s) "
            f"ORDER BY name FOR UPDATE SKIP LOCKED",
            [rows],
        )
        held = {row[0] for row in cursor.fetchall()}
        if len(held) < len(rows):
            # Held by another claim, or not there (deleted by hand, or a
            # test's flush): made again and locked, as at its first use.
            missing = [name for name in rows if name not in held]
            cursor.execute(
                f"INSERT INTO {states} (name) SELECT unnest(%s::text[]) "
                f"ON CONFLICT DO NOTHING RETURNING name",
                [missing],
            )
            held |= {row[0] for row in cursor.fetchall()}
            limited = [
                job for job in limited if set(_limit_rows([job], declared)) <= held
            ]
            if not limited:
                return []
        rows = sorted(held)
        rated = [name for name in rows if declared.rate_of(name) is not None]
        keys = sorted({key for _, _, key in limited if key is not None})
        queues = sorted(
            {queue for _, queue, _ in limited if queue in declared.by_queue}
        )
        cursor.execute(
            f"""
            WITH c AS (
                SELECT id FROM {table}
                WHERE id = ANY(%s) AND status = 'READY' FOR UPDATE SKIP LOCKED
            ), r AS (
                SELECT queue_name, limit_key, count(*) AS n FROM {table}
                WHERE status = 'RUNNING'
                    AND (limit_key = ANY(%s) OR queue_name = ANY(%s))
                GROUP BY queue_name, limit_key
            )
            SELECT
                (SELECT array_agg(id) FROM c),
                (SELECT json_agg(json_build_array(queue_name, limit_key, n))
                 FROM r)::text,
                (SELECT json_agg(json_build_array(name, tokens, date_part(
                    'epoch', STATEMENT_TIMESTAMP() - refilled_at)))
                 FROM {states} WHERE name = ANY(%s))::text,
                STATEMENT_TIMESTAMP()
            """,
            [[pk for pk, _, _ in limited], keys, queues, rated],
        )
        still, running, buckets, now = cursor.fetchone()
        still = set(still or ())
        running = {(q, k): n for q, k, n in json.loads(running or "[]")}
        tokens = {}
        stored = {name: (t, age) for name, t, age in json.loads(buckets or "[]")}
        for name in rated:
            bucket, age = stored.get(name, (None, None))
            tokens[name] = declared.rate_of(name).refilled(bucket, age or 0.0)
        admission = Admission(declared, running, tokens)
        chosen = []
        for pk, queue, key in limited:
            if len(chosen) == limit:
                break
            if pk in still and admission.admit(queue, key):
                chosen.append(pk)
        if not chosen:
            return []
        claimed = claim_ids(connection, chosen, worker_id)
        if admission.taken:
            cursor.execute(
                f"UPDATE {states} AS s SET tokens = v.tokens, refilled_at = %s "
                f"FROM unnest(%s::text[], %s::float8[]) AS v(name, tokens) "
                f"WHERE s.name = v.name",
                [
                    now,
                    list(admission.taken),
                    [admission.tokens[name] for name in admission.taken],
                ],
            )
    return [claimed]


def _front_statement(connection, queues, limit, declared, worker_id):
    """The PostgreSQL statement of ``_round_postgresql`` (its text made
    once per shape of claim and limits in force), with its parameters."""
    shape = None if queues is None else ("one" if len(queues) == 1 else "many")
    key = (connection.alias, shape, id(declared))
    made = _FRONT_TEXTS.get(key)
    if made is None or made[0] is not declared:
        if len(_FRONT_TEXTS) > 64:
            _FRONT_TEXTS.clear()
        made = _FRONT_TEXTS[key] = (declared, *_front_text(connection, shape, declared))
    _, text, constants = made
    status, worker, _ = set_params(worker_id)
    params = {
        **constants,
        "limit": limit,
        "status": status,
        "worker": worker,
        "worker_text": worker,
    }
    if shape is not None:
        params["queue"] = queues[0] if shape == "one" else list(queues)
    return text, params


def _execute_prepared(connection, cursor, sql: str, params: dict) -> None:
    """Run the front statement as a statement prepared on this connection:
    planning its dozen parts took about as long as running it, on every
    claim. Planned once, as the plain claim is on every run: sorting
    switched off (the READY index's order, whatever the statistics say),
    and JIT off (sorting "off" makes a plan's cost so large that PostgreSQL
    would compile it, a second each time). A connection that loses it (a
    pooler in transaction mode hands out another) runs the text instead."""
    name, prepare, execute = _prepared_forms(sql)
    state = getattr(connection, "_bgtasks_prepared", None)
    raw = id(connection.connection)
    if state is None or state[0] != raw:
        state = connection._bgtasks_prepared = (raw, set())
    names = state[1]
    if None in names:  # this connection keeps no prepared statement
        cursor.execute(NO_JIT + NO_SORT + sql, params)
    else:
        for attempt in (1, 2):
            if name not in names:
                cursor.execute(NO_JIT + NO_SORT + prepare)
                names.add(name)
            try:
                # Set for each run too: a plan is made again when PostgreSQL
                # sees fit (new statistics), under the settings of that run.
                cursor.execute(NO_JIT + NO_SORT + execute, params)
                break
            except DatabaseError as exc:
                if _sqlstate(exc) != "26000":  # not "no such prepared statement"
                    raise
                names.discard(name)
                if attempt == 2:
                    names.add(None)
                    cursor.execute(NO_JIT + NO_SORT + sql, params)
    while cursor.description is None and cursor.nextset():
        pass


def _sqlstate(exc) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


@functools.lru_cache(maxsize=64)
def _prepared_forms(sql: str) -> tuple[str, str, str]:
    """The name, ``PREPARE`` and ``EXECUTE`` of ``sql`` (named parameters
    become $1, $2...)."""
    order: list[str] = []

    def number(match) -> str:
        key = match.group(1)
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    body = re.sub(r"%\((\w+)\)s", number, sql)
    name = "bgtasks_limited_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    arguments = ", ".join(f"%({key})s" for key in order)
    return name, f"PREPARE {name} AS {body}", f"EXECUTE {name}({arguments})"


# The limits' rows this process knows exist, by (alias, name).
_MADE: set[tuple[str, str]] = set()

# Texts of the front statement by (alias, shape of queues, limits in force);
# the limits are held in the entry, so their id is not reused meanwhile.
_FRONT_TEXTS: dict = {}


def _front_text(connection, shape, declared) -> tuple[str, dict]:
    """The text of the front statement, and its parameters that the limits
    in force decide (the others: ``limit``, ``status``, ``worker``,
    ``worker_text`` and, by ``shape``, ``queue``).

    It returns the claimed rows (``RETURNING``), each with the due jobs of
    some limit among the best ``limit`` (as JSON [id, queue, key], in claim
    order) in its last column; one row with only that column if it claimed
    none.

    The best due jobs of no limit come from the claim's READY index (past
    the READY jobs of limits, which it reads and leaves); those of limits
    from their own index, leaving out the limits with no room (the RUNNING
    jobs it counts are read only once it finds such a job), and at most as
    many per key as the key had room for when the statement began."""
    table = connection.ops.quote_name(Job._meta.db_table)
    states = connection.ops.quote_name(LimitState._meta.db_table)
    db_now = now_sql(connection)
    # Named parameters: some of the text below appears in several places.
    params: dict = {}

    def param(value) -> str:
        name = f"p{len(params)}"
        params[name] = value
        return f"%({name})s"

    def var(name: str) -> str:  # a parameter given by each claim
        return f"%({name})s"

    by_name = declared.by_name
    concurrent = {n: lim.concurrency for n, lim in by_name.items() if lim.concurrency}
    by_queue = {q: lim.concurrency for q, lim in declared.by_queue.items()}
    rated = [(name, declared.rate_of(name)) for name in declared.rated_names()]
    limited_names, limited_queues = list(by_name), list(by_queue)
    if shape is None:
        queue_filter = ""
    elif shape == "one":  # "= %s": the index's order holds for one queue
        queue_filter = f"AND queue_name = {var('queue')}"
    else:
        queue_filter = f"AND queue_name = ANY({var('queue')})"
    due = f"status = 'READY' AND run_after <= {db_now} {queue_filter}"
    not_paused = f"queue_name <> ALL (ARRAY({PAUSED_QUEUES}))"
    order = "ORDER BY priority DESC, run_after, id"
    columns = "id, limit_key, queue_name, priority, run_after"
    ctes = [
        f"""c_free AS (
            SELECT {columns} FROM {table}
            WHERE {due} AND {not_paused}
                AND queue_name <> ALL({param(limited_queues)})
                AND (limit_key IS NULL
                     OR split_part(limit_key, ':', 1) <> ALL({param(limited_names)}))
            {order} LIMIT {var("limit")} FOR UPDATE SKIP LOCKED
        )"""
    ]
    full_keys = f"""full_keys AS (
            SELECT r.limit_key AS key FROM {table} r
            JOIN unnest({param(list(concurrent))}::text[],
                        {param(list(concurrent.values()))}::int[]) AS d(name, most)
                ON split_part(r.limit_key, ':', 1) = d.name
            WHERE r.status = 'RUNNING' AND r.limit_key IS NOT NULL
            GROUP BY r.limit_key, d.most HAVING count(*) >= d.most
            UNION ALL
            SELECT s.name FROM {states} s
            JOIN unnest({param([n for n, _ in rated])}::text[],
                        {param([float(r.count) for _, r in rated])}::float8[],
                        {param([float(r.per) for _, r in rated])}::float8[])
                AS b(name, n, per) ON s.name = b.name
            WHERE s.refilled_at IS NOT NULL AND LEAST(b.n, s.tokens
                + EXTRACT(EPOCH FROM ({db_now} - s.refilled_at)) * b.n / b.per) < 1
        )"""
    ctes.insert(0, full_keys)
    free_keys = "limit_key <> ALL (ARRAY(SELECT key FROM full_keys))"
    parts = ["SELECT *, true AS free FROM c_free"]
    some_room = ""
    if limited_names and not any(lim.key for lim in by_name.values()):
        # Every limit one key: when all are full, the scan is not made at
        # all (it would read every READY job of theirs, to take none).
        some_room = (
            f"AND (SELECT count(DISTINCT key) FROM full_keys "
            f"WHERE key = ANY({param(limited_names)})) < {len(limited_names)}"
        )
    if limited_names:
        ctes.append(
            f"""c_limited AS (
            SELECT {columns} FROM {table}
            WHERE {due} AND limit_key IS NOT NULL AND {not_paused}
                AND split_part(limit_key, ':', 1) = ANY({param(limited_names)})
                AND queue_name <> ALL({param(limited_queues)})
                AND {free_keys} {some_room}
            {order} LIMIT {var("limit")}
        )"""
        )
        # At most as many per key as it has room for (by this statement's
        # snapshot: the transaction that claims them counts again). The
        # jobs of limits are not locked here: that transaction locks them.
        ctes.append(
            f"""c_room AS (
            SELECT k.{columns.replace(", ", ", k.")} FROM (
                SELECT *, row_number() OVER (PARTITION BY limit_key {order}) AS n
                FROM c_limited
            ) AS k
            LEFT JOIN unnest({param(list(concurrent))}::text[],
                             {param(list(concurrent.values()))}::int[]) AS d(name, most)
                ON split_part(k.limit_key, ':', 1) = d.name
            LEFT JOIN (
                SELECT limit_key, count(*) AS n FROM {table}
                WHERE status = 'RUNNING'
                    AND limit_key IN (SELECT limit_key FROM c_limited)
                GROUP BY limit_key
            ) AS r ON r.limit_key = k.limit_key
            WHERE d.most IS NULL OR k.n <= d.most - coalesce(r.n, 0)
        )"""
        )
        parts.append("SELECT *, false FROM c_room")
    if limited_queues:
        ctes.insert(
            1,
            f"""full_queues AS (
            SELECT r.queue_name AS queue FROM {table} r
            JOIN unnest({param(list(by_queue))}::text[],
                        {param(list(by_queue.values()))}::int[]) AS d(name, most)
                ON r.queue_name = d.name
            WHERE r.status = 'RUNNING' AND d.most IS NOT NULL
            GROUP BY r.queue_name, d.most HAVING count(*) >= d.most
            UNION ALL
            SELECT substr(key, {len(QUEUE_PREFIX) + 1}) FROM full_keys
            WHERE left(key, {len(QUEUE_PREFIX)}) = '{QUEUE_PREFIX}'
        )""",
        )
        ctes.append(
            f"""c_queue AS (
            SELECT {columns} FROM {table}
            WHERE {due} AND {not_paused}
                AND queue_name = ANY({param(limited_queues)})
                AND queue_name <> ALL (ARRAY(SELECT queue FROM full_queues))
                AND (limit_key IS NULL OR {free_keys})
            {order} LIMIT {var("limit")}
        )"""
        )
        parts.append("SELECT *, false FROM c_queue")
    ctes.append(
        f"""top AS (
            {" UNION ALL ".join(parts)}
            {order} LIMIT {var("limit")}
        )"""
    )
    claim_set = CLAIM_SET.format(
        job="job", now=db_now, append="job.worker_ids || jsonb_build_array(%s::text)"
    )
    # CLAIM_SET's placeholders, in order: the status, then the worker twice
    # (as two parameters: one a varchar, one text, for the PREPARE).
    claim_set = claim_set.replace("%s", var("status"), 1)
    claim_set = claim_set.replace("%s", var("worker"), 1)
    claim_set = claim_set.replace("%s", var("worker_text"))
    ctes.append(
        f"""claimed AS (
            UPDATE {table} AS job SET {claim_set}
            FROM top WHERE job.id = top.id AND top.free
            RETURNING {RETURNING}
        )"""
    )
    sql = f"""
        WITH {", ".join(ctes)}
        SELECT claimed.*, held.jobs FROM (
            SELECT json_agg(json_build_array(id, queue_name, limit_key)
                            {order})::text AS jobs
            FROM top WHERE NOT free
        ) AS held LEFT JOIN claimed ON true
    """
    return sql, params


def _candidates(connection, due, queues, count):
    if connection.vendor != "mysql" or queues is None or len(queues) < 2:
        return list(due[:count])
    # MySQL: one index-ordered scan per queue (see sql/claim.py).
    rows = [row for queue in queues for row in due.filter(queue_name=queue)[:count]]
    rows.sort(key=lambda row: (-row[3], row[4], row[0]))
    return rows[:count]


def _limit_rows(candidates, declared: DeclaredLimits) -> list[str]:
    """The names of the rows of the limits these jobs count against."""
    names = set()
    for _, queue, key, *_ in candidates:
        if queue in declared.by_queue:
            names.add(QUEUE_PREFIX + queue)
        if declared.for_key(key) is not None:
            names.add(limit_name(key))
    return sorted(names)


def _lock(using: str, names: list[str]) -> None:
    states = LimitState.objects.using(using)
    locked = states.filter(name__in=names).order_by("name").select_for_update()
    found = list(locked.values_list("name", flat=True))
    if len(found) < len(names):  # first used: made, then locked like the rest
        states.bulk_create(
            [LimitState(name=name) for name in names if name not in found],
            ignore_conflicts=True,
        )
        list(locked.values_list("name", flat=True))


def _running(using: str, declared: DeclaredLimits, keys=None, queues=None):
    """The RUNNING jobs per (queue, limit key) that the limits count: of
    every limit, or of the limit ``keys`` and limited ``queues`` given."""
    if keys is None:
        counted = Q(limit_key__isnull=False) | Q(queue_name__in=list(declared.by_queue))
    else:
        counted = Q(limit_key__in=keys) | Q(queue_name__in=queues)
    running = (
        Job.objects.using(using)
        .filter(status=JobStatus.RUNNING)
        .filter(counted)
        .values_list("queue_name", "limit_key")
        .annotate(count=Count("id"))
        .order_by()
    )
    return {(queue, key): count for queue, key, count in running}


def _tokens(using: str, declared: DeclaredLimits):
    """The tokens of the rated limits, by row name, and the database's time
    they are counted at (None if no limit has a rate)."""
    names = declared.rated_names()
    if not names:
        return {}, None
    now = database_now(using)
    rows = LimitState.objects.using(using).filter(name__in=names)
    state = {
        name: (tokens, at)
        for name, tokens, at in rows.values_list("name", "tokens", "refilled_at")
    }
    tokens = {}
    for name in names:
        stored, at = state.get(name, (None, None))
        seconds = (now - at).total_seconds() if at is not None else 0.0
        tokens[name] = declared.rate_of(name).refilled(stored, seconds)
    return tokens, now
