"""Claiming where limits are declared (``django_bgtasks.limits``): never
more jobs of a limit RUNNING than it allows, never more starts than its
rate, across every worker, decided in the claim.

A claim of a worker that knows of any limit runs here instead of the
single statement of ``sql/claim.py``.

PostgreSQL (``_round_postgresql``): one statement (prepared once per
connection, its plan made once) takes the best due jobs of no limit from
their part of the claim's READY index and those of limits from their own
partial index, leaving out the limits with no room and taking at most as
many per key as it had room for; it claims the first kind and keeps the
second aside. If it kept some, two more statements in one transaction
lock the rows of their limits (``LimitState``, in name order; a limit
another claim is taking is passed over) and then, seeing every claim that
held those rows before, count the limits' RUNNING jobs again and claim in
claim order the kept jobs every limit has room for, taking their tokens,
and as many of the jobs of no limit the first passed over for them as
they leave places (a claim comes back full while jobs are due). Where the
driver allows, those two go as one message, and with the first while this
connection's claims keep finding jobs of limits: one round trip.

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
import logging
import time

from django.db import DatabaseError, transaction
from django.db.models import Count, Q

from ..db import CONNECTION_ERRORS, database_now, micros_since_1970, now_sql
from ..limits import QUEUE_PREFIX, Admission, DeclaredLimits, limit_name
from ..locking import lock_for_writing
from ..models import Job, JobStatus, LimitState, Queue
from .claimed import (
    CLAIM_SET,
    ID_AT,
    PAUSED_QUEUES,
    RETURNING,
    claimed_after_all,
    commit_went_unanswered,
    jobs_from,
    named_params,
    queue_literal,
)
from .pinned import can_pin_plan, last_result_only, run_pinned

logger = logging.getLogger("django_bgtasks.worker")

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
    worker_id, now_micros)`` marks jobs claimed (at ``now_micros``, if not
    None: ``micros_since_1970``) and returns them, or the ids that
    ``load(using, ids)`` reads after the commit (``sql/claim.py``; not
    on PostgreSQL, whose claim marks them itself). Returns the jobs and the
    ids of those that cannot be read, with why."""
    jobs, unreadable = [], {}
    if connection.vendor == "postgresql":
        claim_round = _round_postgresql
    else:
        claim_round = functools.partial(_round, claim_ids=claim_ids)
    for _ in range(ROUNDS):
        claimed, held_back = claim_round(
            connection,
            worker_id,
            queues,
            limit - len(jobs) - len(unreadable),
            declared,
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
    own = connection.get_autocommit()
    claimed = None
    try:
        with transaction.atomic(using=using):
            # SQLite: its one write lock, taken first, is what makes claims
            # take turns (and the reads below current).
            lock_for_writing(Job, using)
            candidates = _candidates(connection, due, queues, limit + EXTRA_SCANNED)
            if not _limit_rows(candidates, declared):
                # Jobs of no limit only: nothing to count again.
                ids = [row[0] for row in candidates[:limit]]
                claimed = [claim_ids(connection, ids, worker_id)] if ids else [], False
            else:
                claimed = _admit(
                    connection, candidates, limit, declared, claim_ids, worker_id
                )
    except CONNECTION_ERRORS as exc:
        if not commit_went_unanswered(connection, exc, own, claimed and claimed[0]):
            raise
        parts, held_back = claimed
        ids = [pk for part in parts for pk in part]
        kept = claimed_after_all(connection, ids, worker_id)
        return ([kept] if kept else []), held_back
    return claimed


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
    # Stamped started at the moment they took their tokens (if a rate is
    # declared): a job's start is then exactly where the rate's bucket put it.
    stamp = None if now is None else micros_since_1970(now)
    claimed = claim_ids(connection, chosen, worker_id, stamp)
    states = LimitState.objects.using(using)
    for name in admission.taken:
        states.filter(name=name).update(tokens=admission.tokens[name], refilled_at=now)
    return [claimed], held_back


def _round_postgresql(connection, worker_id, queues, limit, declared):
    """One claim on PostgreSQL (``_statements``): the front claims the jobs
    of no limit among the best due ones and keeps those of limits aside;
    the lock takes their limits' rows; the admit counts again behind those
    locks and claims the jobs with room.

    Where the driver allows, they go as one message, one transaction (a
    claiming thread that waits on the network once, not at each statement,
    in a busy worker also waits once for Python's GIL): all three while
    this connection's claims find jobs of limits, else the front alone,
    and the other two (with the kept jobs handed in by ``keep``) only if it
    kept some. Elsewhere, those two run one by one in a transaction."""
    statements, params = _statements(connection, queues, limit, declared, worker_id)
    front, _, lock, admit = statements
    admitted = None
    with connection.cursor() as cursor:
        together = can_pin_plan(connection, cursor)
        # One queue (or all): prepared, as the plain claim's plan is
        # pinned. Several: a list the plan depends on, planned each time.
        prepared = together and len(queues or ()) < 2
        if (
            together
            and getattr(connection, "_bgtasks_kept", False)
            and not last_result_only(cursor)
        ):
            rows, _, admitted = run_pinned(
                connection, cursor, [front, lock, admit], params, prepared=prepared
            )
        elif together:
            [rows] = run_pinned(connection, cursor, [front], params, prepared=prepared)
        else:
            cursor.execute(front, params)
            rows = cursor.fetchall()
    claimed = [_claimed(connection, rows)]
    params["kept"] = rows[0][-1]
    connection._bgtasks_kept = bool(params["kept"])
    if params["kept"] and admitted is None:
        try:
            admitted = _admit_kept(connection, together, prepared, statements, params)
        except DatabaseError as exc:
            # The front's jobs are claimed (committed, unless in the
            # caller's transaction): they must reach the worker, or they
            # would wait RUNNING for a rescue. The kept jobs stay READY.
            logger.warning("Claiming jobs of limits failed: %s", exc)
    if admitted:
        claimed.append(jobs_from(connection, admitted))
    # No second round: the front took no more per key than it had room for,
    # so what the admit left, another claim took meanwhile (or a rate's
    # tokens ran out); the next claim sees it.
    return claimed, False


def _admit_kept(connection, together, prepared, statements, params):
    """The keep, lock and admit statements, for the jobs the front kept
    aside (``params["kept"]``): the rows the admit claimed."""
    _, keep, lock, admit = statements
    if together:
        with connection.cursor() as cursor:
            *_, admitted = run_pinned(
                connection, cursor, [keep, lock, admit], params, prepared=prepared
            )
        return admitted
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for statement in (keep, lock, admit):
            cursor.execute(statement, params)
        return cursor.fetchall()


def _claimed(connection, front_rows):
    """The jobs the front statement claimed (its rows but for the last
    column; one row of NULLs but that when it claimed none)."""
    return jobs_from(
        connection, [row[:-1] for row in front_rows if row[ID_AT] is not None]
    )


def _statements(connection, queues, limit, declared, worker_id):
    """The PostgreSQL statements of ``_round_postgresql`` (their texts made
    once per shape of claim and limits in force), with their parameters."""
    shape = None if queues is None else ("one" if len(queues) == 1 else "many")
    # One queue's name is written in the texts (as in sql/claim.py: a plan
    # made once for any queue might walk past other queues' backlogs).
    one = queue_literal(connection, queues[0]) if shape == "one" else None
    undeclared = _undeclared_waiting(connection, declared)
    key = (connection.alias, shape, one, id(declared), undeclared)
    made = _TEXTS.get(key)
    if made is None or made[0] is not declared:
        if len(_TEXTS) > 64:
            _TEXTS.clear()
        texts = _texts(connection, shape, one, declared, undeclared)
        made = _TEXTS[key] = (declared, *texts)
    _, texts, constants = made
    params = {**constants, **named_params(worker_id, limit)}
    if shape == "many":
        params["queue"] = list(queues)
        # The queues whose jobs of no limit are c_free's.
        params["free_queue"] = [q for q in queues if q not in declared.by_queue]
    return texts, params


def _undeclared_waiting(connection, declared: DeclaredLimits) -> bool:
    """Whether READY jobs wait whose limit no task here declares (a limit
    taken out of the code, or one that a newer version of it declares):
    this worker runs them as jobs of no limit, as a worker that knows of no
    limit does. The front then reads them too (walking past the jobs of the
    limits it knows: ``_texts``); it reads them only then, and looks for
    them when a worker first claims and every ``UNDECLARED_CHECK_SECONDS``
    after (a walk of every due READY job of a limit), so such a job may
    wait that long (MySQL/MariaDB and SQLite take them at once)."""
    seen = _UNDECLARED.get(connection.alias)
    now = time.monotonic()
    if (
        seen is not None
        and seen[0] is declared
        and now - seen[1] < UNDECLARED_CHECK_SECONDS
    ):
        return seen[2]
    table = connection.ops.quote_name(Job._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT FROM {table} WHERE status = 'READY' "
            f"AND run_after <= {now_sql(connection)} "
            f"AND limit_key IS NOT NULL "
            f"AND split_part(limit_key, ':', 1) <> ALL(%s) "
            f"AND queue_name <> ALL (ARRAY({PAUSED_QUEUES})))",
            [list(declared.by_name)],
        )
        [(found,)] = cursor.fetchall()
    _UNDECLARED[connection.alias] = (declared, now, found)
    return found


# Whether due jobs of undeclared limits wait, by alias: the limits in force
# then, when it was seen (time.monotonic()), and the answer.
_UNDECLARED: dict = {}
UNDECLARED_CHECK_SECONDS = 60.0


# Texts of the statements by (alias, shape of queues, limits in force); the
# limits are held in the entry, so their id is not reused meanwhile.
_TEXTS: dict = {}

# Where the front statement leaves the jobs of limits it kept aside, and
# the lock statement the names of the limits' rows it holds, for the next
# statement of the transaction (settings local to it: set_config's third
# argument).
_KEPT = "bgtasks.kept"
_HELD = "bgtasks.held"


def _setting(name: str) -> str:
    """A JSON array set earlier in this transaction ([] if none)."""
    return f"coalesce(nullif(current_setting('{name}', true), ''), '[]')::json"


def _texts(connection, shape, one, declared, undeclared) -> tuple[list[str], dict]:
    """The texts of the front, keep, lock and admit statements, and their
    parameters that the limits in force decide (the others: ``limit``,
    ``status``, ``worker``, ``worker_text``, for ``shape`` "many"
    ``queue`` and ``free_queue``, and for the keep statement ``kept``).
    ``one``: for ``shape`` "one", its queue as an SQL literal.

    The front returns the rows it claimed (``RETURNING``), each with, in
    its last column, the jobs it kept aside: the due jobs of limits among
    the best ``limit`` and the jobs of no limit it passed over for them
    (JSON [[[id, queue, key], ...], [id, ...]], in claim order; '' if it
    kept none), also set as ``_KEPT`` for the statements after it in the
    transaction (the keep statement sets it from ``kept`` in another); one
    row with only that column if it claimed none. The best due jobs of no
    limit come from their part of the claim's READY index (which holds
    them ahead of the jobs of limits: a job held back costs them nothing),
    and with ``undeclared`` (``_undeclared_waiting``) those of limits not
    declared here; those of limits from their own index, leaving out the
    limits with no room (the RUNNING jobs it counts are read only once it
    finds such a job), and at most as many per key as the key had room for
    when the statement began. They are not locked: the admit does.

    The lock makes the rows of those jobs' limits (``LimitState``) that do
    not exist, and locks the others in name order, passing over those
    another claim holds (``SKIP LOCKED``: that claim is taking what it has
    room for, and the jobs of no limit the front took are not held up
    behind it); their names go to ``_HELD``.

    The admit, a statement of its own so that it sees every claim that
    held those rows before: of the kept jobs whose limits' rows are held,
    locks those still READY, counts their limits' RUNNING jobs and tokens,
    and claims in claim order those every limit has room for (a job's
    place in line is counted against each of its limits: where a job
    counts against two, one may be left for the next claim that one had
    room for), taking their tokens; and in the places of those it does
    not claim, the jobs of no limit the front passed over, those still
    READY (locked here too: another claim may have taken some)."""
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
    names_param, queues_param = param(limited_names), param(limited_queues)
    concurrent_names = param(list(concurrent))
    concurrent_most = param(list(concurrent.values()))
    rates = (
        f"unnest({param([n for n, _ in rated])}::text[], "
        f"{param([float(r.count) for _, r in rated])}::float8[], "
        f"{param([float(r.per) for _, r in rated])}::float8[]) AS b(name, n, per)"
    )

    def served(column: str) -> str:
        """The claim's queues, as a condition on ``column``."""
        if shape is None:
            return ""
        if shape == "one":  # "=": the index's order holds for one queue
            return f"AND {column} = {one}"
        return f"AND {column} = ANY({var('queue')})"

    ready_due = f"status = 'READY' AND run_after <= {db_now}"
    due = f"{ready_due} {served('queue_name')}"
    not_paused = f"queue_name <> ALL (ARRAY({PAUSED_QUEUES}))"
    order = "ORDER BY priority DESC, run_after, id"
    columns = "id, limit_key, queue_name, priority, run_after"
    # The jobs of no limit: in the READY index, ahead of those of limits
    # (models/indexes.py), so the jobs held back cost this nothing. Those
    # of limited queues are c_queue's: a claim of some queues leaves those
    # queues out of its walk (not each of their jobs out of it, which would
    # read a limited queue's every job); a claim of every queue walks past
    # them.
    if shape is None:
        free_queues = f"queue_name <> ALL({queues_param})"
    elif shape == "one":
        free_queues = f"queue_name = {one} AND {one} <> ALL({queues_param})"
    else:
        free_queues = f"queue_name = ANY({var('free_queue')})"
    free = f"""SELECT {columns} FROM {table}
            WHERE {ready_due} AND {free_queues} AND {not_paused}
                AND limit_key IS NULL
            {order} LIMIT {var("limit")} FOR UPDATE SKIP LOCKED"""
    if undeclared:
        # And those of limits not declared here, merged in claim order.
        free = f"""SELECT * FROM ({free}) AS f UNION ALL SELECT * FROM (
            SELECT {columns} FROM {table}
            WHERE {due} AND (limit_key IS NULL) IS FALSE AND {not_paused}
                AND split_part(limit_key, ':', 1) <> ALL({names_param})
                AND queue_name <> ALL({queues_param})
            {order} LIMIT {var("limit")} FOR UPDATE SKIP LOCKED
        ) AS u {order} LIMIT {var("limit")}"""
    ctes = [f"c_free AS ({free})"]
    full_keys = f"""full_keys AS (
            SELECT r.limit_key AS key FROM {table} r
            JOIN unnest({concurrent_names}::text[], {concurrent_most}::int[])
                AS d(name, most) ON split_part(r.limit_key, ':', 1) = d.name
            WHERE r.status = 'RUNNING' AND r.limit_key IS NOT NULL
            GROUP BY r.limit_key, d.most HAVING count(*) >= d.most
            UNION ALL
            SELECT s.name FROM {states} s JOIN {rates} ON s.name = b.name
            WHERE s.refilled_at IS NOT NULL AND LEAST(b.n, s.tokens
                + EXTRACT(EPOCH FROM ({db_now} - s.refilled_at)) * b.n / b.per) < 1
        )"""
    ctes.insert(0, full_keys)
    free_keys = "limit_key <> ALL (ARRAY(SELECT key FROM full_keys))"
    parts = ["SELECT *, true AS free FROM c_free"]
    if limited_names:
        # One walk per limit, in its part of the limits' index (by name:
        # models/indexes.py), merged: a limit of one key that is full (its
        # key, the name, among full_keys) is not read at all, and a limit
        # with a key reads only its own jobs, past its full keys'. A limit
        # of one key reads no more jobs than it could ever start at once.
        most_read = param([_most_started(limit) for limit in by_name.values()])
        ctes.append(
            f"""c_limited AS (
            SELECT j.* FROM unnest({names_param}::text[], {most_read}::int[])
                AS l(name, most)
            CROSS JOIN LATERAL (
                SELECT {columns} FROM {table}
                WHERE {ready_due} AND limit_key IS NOT NULL AND {not_paused}
                    AND split_part(limit_key, ':', 1) = l.name
                    AND {free_queues} AND {free_keys}
                {order} LIMIT least({var("limit")}, nullif(l.most, 0))
            ) AS j
            WHERE l.name <> ALL (ARRAY(SELECT key FROM full_keys))
            {order} LIMIT {var("limit")}
        )"""
        )
        # At most as many per key as it has room for (by this statement's
        # snapshot: the admit counts again).
        ctes.append(
            f"""c_room AS (
            SELECT k.{columns.replace(", ", ", k.")} FROM (
                SELECT *, row_number() OVER (PARTITION BY limit_key {order}) AS n
                FROM c_limited
            ) AS k
            LEFT JOIN unnest({concurrent_names}::text[], {concurrent_most}::int[])
                AS d(name, most) ON split_part(k.limit_key, ':', 1) = d.name
            LEFT JOIN (
                SELECT limit_key, count(*) AS n FROM {table}
                WHERE status = 'RUNNING' AND limit_key IS NOT NULL
                    AND limit_key IN (SELECT limit_key FROM c_limited)
                GROUP BY limit_key
            ) AS r ON r.limit_key = k.limit_key
            WHERE d.most IS NULL OR k.n <= d.most - coalesce(r.n, 0)
        )"""
        )
        parts.append("SELECT *, false FROM c_room")
    # 0 for a queue's limit of a rate only: a list of NULLs alone is sent
    # as text[] by some drivers, which a prepared int[] does not take.
    queue_most = param([most or 0 for most in by_queue.values()])
    if limited_queues:
        ctes.insert(
            1,
            f"""full_queues AS (
            SELECT r.queue_name AS queue FROM {table} r
            JOIN unnest({queues_param}::text[], {queue_most}::int[])
                AS d(name, most) ON r.queue_name = d.name
            WHERE r.status = 'RUNNING' AND d.most > 0
            GROUP BY r.queue_name, d.most HAVING count(*) >= d.most
            UNION ALL
            SELECT substr(key, {len(QUEUE_PREFIX) + 1}) FROM full_keys
            WHERE left(key, {len(QUEUE_PREFIX)}) = '{QUEUE_PREFIX}'
        )""",
        )
        # One walk per limited queue the claim serves, in its parts of the
        # READY index (by queue: its jobs of no limit, and those of limits
        # not full), merged: a full queue is not read at all, and one with
        # room reads no more jobs than it could start at once.
        queue_most_read = param(
            [_most_started(limit) for limit in declared.by_queue.values()]
        )
        read = f"least({var('limit')}, nullif(q.most, 0))"
        ctes.append(
            f"""c_queue AS (
            SELECT j.* FROM unnest({queues_param}::text[], {queue_most_read}::int[])
                AS q(name, most)
            CROSS JOIN LATERAL (
                SELECT * FROM (
                    (SELECT {columns} FROM {table}
                    WHERE {ready_due} AND queue_name = q.name AND limit_key IS NULL
                    {order} LIMIT {read})
                    UNION ALL
                    (SELECT {columns} FROM {table}
                    WHERE {ready_due} AND queue_name = q.name
                        AND (limit_key IS NULL) IS FALSE AND {free_keys}
                    {order} LIMIT {read})
                ) AS b {order} LIMIT {read}
            ) AS j
            WHERE q.name <> ALL (ARRAY(SELECT queue FROM full_queues))
                AND q.name <> ALL (ARRAY({PAUSED_QUEUES})) {served("q.name")}
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

    def claim_set(now):
        text = CLAIM_SET.format(
            job="job", now=now, append="job.worker_ids || jsonb_build_array(%s::text)"
        )
        # CLAIM_SET's placeholders, in order: the status, then the worker
        # twice (as two parameters: a varchar and a text, for the PREPARE).
        text = text.replace("%s", var("status"), 1)
        text = text.replace("%s", var("worker"), 1)
        return text.replace("%s", var("worker_text"))

    ctes.append(
        f"""claimed AS (
            UPDATE {table} AS job SET {claim_set(db_now)}
            WHERE job.id = ANY (ARRAY(SELECT id FROM top WHERE top.free))
            RETURNING {RETURNING}
        )"""
    )
    front = f"""
        WITH {", ".join(ctes)}
        SELECT claimed.*, set_config('{_KEPT}', CASE
            WHEN kept.jobs IS NULL THEN ''
            ELSE json_build_array(kept.jobs, (
                SELECT coalesce(json_agg(id {order}), '[]') FROM c_free
                WHERE id NOT IN (SELECT id FROM top)
            ))::text END, true)
        FROM (
            SELECT json_agg(json_build_array(id, queue_name, limit_key)
                            {order}) AS jobs
            FROM top WHERE NOT free
        ) AS kept LEFT JOIN claimed ON true
    """
    # Each kept job's limits' rows: its queue's and its task's (by name).
    kept = f"""kept AS (
            SELECT (e->>0)::bigint AS id, e->>1 AS queue_name, e->>2 AS limit_key,
                ord,
                CASE WHEN e->>1 = ANY({queues_param})
                     THEN '{QUEUE_PREFIX}' || (e->>1) END AS queue_row,
                CASE WHEN split_part(e->>2, ':', 1) = ANY({names_param})
                     THEN split_part(e->>2, ':', 1) END AS key_row
            FROM json_array_elements({_setting(_KEPT)} -> 0)
                WITH ORDINALITY AS t(e, ord)
        )"""
    lock = f"""
        WITH {kept}, named AS (
            SELECT queue_row AS name FROM kept WHERE queue_row IS NOT NULL
            UNION SELECT key_row FROM kept WHERE key_row IS NOT NULL
        ), made AS (
            INSERT INTO {states} (name) SELECT name FROM named ORDER BY name
            ON CONFLICT DO NOTHING RETURNING name
        ), locked AS (
            SELECT name FROM {states} WHERE name = ANY (ARRAY(SELECT name FROM named))
            ORDER BY name FOR UPDATE SKIP LOCKED
        )
        SELECT set_config('{_HELD}', coalesce((
            SELECT json_agg(name) FROM (
                SELECT name FROM locked UNION SELECT name FROM made
            ) AS h)::text, ''), true)
    """
    # With no queue's limit declared, no RUNNING job read to count one (the
    # planner would walk them all to find none of those queues').
    running_queues = (
        f"""
            SELECT queue_name, count(*) AS n FROM {table}
            WHERE status = 'RUNNING'
                AND queue_name IN (SELECT queue_name FROM c WHERE queue_row IS NOT NULL)
            GROUP BY queue_name"""
        if limited_queues
        else "SELECT NULL::varchar AS queue_name, 0::bigint AS n WHERE false"
    )
    still_claimable = (
        f"locked.status = 'READY' AND locked.run_after <= {db_now} "
        f"AND queue_name <> ALL (ARRAY({PAUSED_QUEUES}))"
    )
    admit = f"""
        WITH {kept}, held AS (
            SELECT json_array_elements_text({_setting(_HELD)}) AS name
        ), ours AS (
            SELECT * FROM kept
            WHERE (queue_row IS NULL OR queue_row IN (SELECT name FROM held))
                AND (key_row IS NULL OR key_row IN (SELECT name FROM held))
        ), locked AS (
            -- Not "AND status = 'READY'" here: the READY indexes would
            -- match it, and be read whole for these ids. Locked, a row
            -- gives its latest status.
            SELECT id, status, run_after FROM {table}
            WHERE id = ANY (ARRAY(SELECT id FROM ours))
            FOR UPDATE SKIP LOCKED
        ), c AS (
            -- Still claimable: another claim may have run a kept job
            -- meanwhile, and it be READY again, not yet due (a retry).
            SELECT ours.* FROM ours JOIN locked USING (id)
            WHERE {still_claimable}
        ), running_keys AS (
            SELECT limit_key, count(*) AS n FROM {table}
            WHERE status = 'RUNNING' AND limit_key IS NOT NULL
                AND limit_key IN (SELECT limit_key FROM c WHERE key_row IS NOT NULL)
            GROUP BY limit_key
        ), running_queues AS ({running_queues}
        ), moment AS (
            -- The claim's moment, at which it takes its tokens and stamps
            -- its jobs started. This message's time may be before that of
            -- a claim that wrote a row it holds last: the buckets' clock
            -- never goes back.
            SELECT GREATEST({db_now}, max(refilled_at)) AS at FROM {states}
            WHERE name IN (SELECT name FROM held)
        ), buckets AS (
            SELECT s.name, CASE WHEN s.tokens IS NULL THEN b.n
                ELSE LEAST(b.n, s.tokens + coalesce(
                    date_part('epoch', m.at - s.refilled_at), 0) * b.n / b.per)
                END AS tokens,
                m.at AS refilled_at
            FROM {states} s JOIN {rates} ON s.name = b.name CROSS JOIN moment m
            WHERE s.name IN (SELECT name FROM held)
        ), ranked AS (
            SELECT c.*,
                row_number() OVER (PARTITION BY limit_key ORDER BY ord) AS key_place,
                row_number() OVER (PARTITION BY key_row ORDER BY ord) AS rated_place,
                row_number() OVER (PARTITION BY queue_name ORDER BY ord) AS queue_place
            FROM c
        ), chosen AS (
            SELECT r.id, r.key_row, r.queue_row FROM ranked r
            LEFT JOIN unnest({concurrent_names}::text[], {concurrent_most}::int[])
                AS dk(name, most) ON dk.name = r.key_row
            LEFT JOIN running_keys AS rk ON rk.limit_key = r.limit_key
            LEFT JOIN unnest({queues_param}::text[], {queue_most}::int[])
                AS dq(name, most) ON dq.name = r.queue_name AND r.queue_row IS NOT NULL
            LEFT JOIN running_queues AS rq ON rq.queue_name = r.queue_name
            LEFT JOIN buckets AS bk ON bk.name = r.key_row
            LEFT JOIN buckets AS bq ON bq.name = r.queue_row
            WHERE (dk.most IS NULL OR r.key_place <= dk.most - coalesce(rk.n, 0))
                AND (coalesce(dq.most, 0) = 0
                     OR r.queue_place <= dq.most - coalesce(rq.n, 0))
                AND (bk.name IS NULL OR r.rated_place <= floor(bk.tokens))
                AND (bq.name IS NULL OR r.queue_place <= floor(bq.tokens))
        ), spare AS (
            SELECT (e #>> '{{}}')::bigint AS id, ord
            FROM json_array_elements({_setting(_KEPT)} -> 1)
                WITH ORDINALITY AS t(e, ord)
        ), spare_locked AS (
            SELECT id, status, run_after, queue_name FROM {table}
            WHERE id = ANY (ARRAY(SELECT id FROM spare))
            FOR UPDATE SKIP LOCKED
        ), fill AS (
            SELECT id FROM spare JOIN spare_locked AS locked USING (id)
            WHERE {still_claimable}
            ORDER BY ord
            LIMIT (SELECT count(*) FROM kept) - (SELECT count(*) FROM chosen)
        ), claimed AS (
            UPDATE {table} AS job SET {claim_set("(SELECT at FROM moment)")}
            WHERE job.id = ANY (ARRAY(
                SELECT id FROM chosen UNION ALL SELECT id FROM fill
            ))
            RETURNING {RETURNING}
        ), spent AS (
            UPDATE {states} AS s
            SET tokens = b.tokens - t.n, refilled_at = b.refilled_at
            FROM buckets AS b JOIN (
                SELECT name, count(*) AS n FROM (
                    SELECT key_row AS name FROM chosen
                    UNION ALL SELECT queue_row FROM chosen
                ) AS taken GROUP BY name
            ) AS t ON t.name = b.name
            WHERE s.name = b.name
        )
        SELECT * FROM claimed
    """
    keep = f"SELECT set_config('{_KEPT}', {var('kept')}, true)"
    return [front, keep, lock, admit], params


def _most_started(limit) -> int:
    """How many jobs of a limit one claim can start at most (0: no bound
    but the claim's: a limit with a key, one per value)."""
    if limit.key is not None:
        return 0
    bounds = [limit.concurrency, limit.rate and limit.rate.count]
    return min(bound for bound in bounds if bound)


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
