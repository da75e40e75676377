"""Claiming where limits are declared (``django_bgtasks.limits``): never
more jobs of a limit RUNNING than it allows, never more starts than its
rate, across every worker, decided in the claim.

A claim of a worker that knows of any limit runs here instead of the
single statement of ``sql/claim.py``:

1. Outside a transaction, it reads what the limits hold now: the RUNNING
   jobs per limit key and per limited queue, and the rated limits' tokens.
   The limits with no room are left out of the next step's scan, so jobs
   held back by a full limit never block the ones behind them.
2. In one transaction: the due jobs in claim order (``FOR UPDATE SKIP
   LOCKED``; a few more than the free slots), then the rows of the limits
   those jobs count against, locked in name order (``LimitState``): two
   claims of one limit take turns here. Then it counts again, now that no
   other claim of these limits is under way, takes in claim order the jobs
   every limit has room for, marks them RUNNING, and takes their tokens.
   The limits' rows stay locked until the commit that makes the jobs
   RUNNING, so the next claim of a limit counts them.

The count is of job rows, not a counter kept beside them: a job leaving
RUNNING by any path (success, retry, a rescue, an operator, a row written
by hand) frees its place, and nothing can leak one.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Count, Q

from ..db import database_now
from ..limits import QUEUE_PREFIX, Admission, DeclaredLimits, limit_name
from ..locking import lock_for_writing
from ..models import Job, JobStatus, LimitState, Queue

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
    for _ in range(ROUNDS):
        claimed, held_back = _claim_round(
            connection,
            worker_id,
            queues,
            limit - len(jobs) - len(unreadable),
            declared,
            claim_ids,
        )
        if isinstance(claimed, list):  # ids, read now it has committed
            claimed = load(connection.alias, claimed) if claimed else ([], {})
        jobs += claimed[0]
        unreadable.update(claimed[1])
        if not held_back or len(jobs) + len(unreadable) >= limit:
            break
    return jobs, unreadable


def _claim_round(connection, worker_id, queues, limit, declared, claim_ids):
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
        rows = _limit_rows(candidates, declared)
        admission = held  # jobs of no limit only: nothing to count again
        if rows:
            _lock(using, rows)
            # Counted again behind the locks: every claim of these limits
            # before this one has committed, and none other is under way.
            tokens, now = _tokens(using, declared)
            keys = {key for _, _, key, *_ in candidates if key is not None}
            queues_in_play = {q for _, q, *_ in candidates if q in declared.by_queue}
            admission = Admission(
                declared, _running(using, declared, keys, queues_in_play), tokens
            )
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
        if admission.taken:
            states = LimitState.objects.using(using)
            for name in admission.taken:
                states.filter(name=name).update(
                    tokens=admission.tokens[name], refilled_at=now
                )
    return claimed, held_back


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
