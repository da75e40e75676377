"""Limits: never more jobs of a limit RUNNING than it allows, never more
starts than its rate, across every worker; held-back jobs do not block the
ones behind them. Claims in this process, then several real workers."""

import importlib
import json
import time
from contextlib import nullcontext

import pytest
from django.db.models import F
from django.test import override_settings

from django_bgtasks import Limit, Rate, registry
from django_bgtasks.compat import InvalidTask
from django_bgtasks.limits import declared_limits
from django_bgtasks.models import Job, JobStatus, LimitState, WorkerProcess
from django_bgtasks.models.transitions import Succeeded
from django_bgtasks.sql.claim import claim_jobs
from tests.conftest import lose_this_connection, wait_until
from tests.settings import BGTASKS

pytestmark = pytest.mark.django_db(transaction=True)


def claim(limit=10, queues=None, worker_id="w1"):
    return claim_jobs("default", worker_id=worker_id, queues=queues, limit=limit)


def finish(job):
    assert job.record(Succeeded(None)) is not None


# Declaring limits ----------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"concurrency": 0},
        {"concurrency": True},
        {"rate": "ten a minute"},
        {"rate": "0/m"},
        {"concurrency": 1, "rate": "5/s", "key": "account_id"},
        {"concurrency": 1, "name": "has:colon"},
        {"concurrency": 1, "key": 3},
    ],
)
def test_a_limit_that_makes_no_sense_is_refused(arguments):
    with pytest.raises(InvalidTask):
        Limit(**arguments)


def test_rates_read_as_written():
    assert Rate.coerce("100/m") == Rate(100, 60)
    assert Rate.coerce("10/5m") == Rate(10, 300)
    assert Rate.coerce("3 / s") == Rate(3, 1)
    assert str(Rate.coerce("2/h")) == "2/h"
    bucket = Rate(10, 60)
    assert bucket.refilled(None, 0) == 10  # never used: full
    assert bucket.refilled(0.0, 6) == pytest.approx(1.0)
    assert bucket.refilled(9.5, 600) == 10  # never more than its count


def test_a_job_stores_the_key_of_its_limit(limited):
    two = limited.two_at_a_time.enqueue()
    account = limited.one_per_account.enqueue(42)
    named = limited.one_per_account.enqueue(account_id={"id": 7})
    shared = limited.shared_b.enqueue()
    free = limited.free.enqueue()
    keys = dict(Job.objects.values_list("pk", "limit_key"))
    assert keys[int(two.id)] == "tests.limited_tasks.two_at_a_time"
    assert keys[int(account.id)] == "tests.limited_tasks.one_per_account:42"
    assert keys[int(named.id)] == 'tests.limited_tasks.one_per_account:{"id":7}'
    assert keys[int(shared.id)] == "shared"
    assert keys[int(free.id)] is None


def test_a_call_without_the_limits_argument_is_refused(limited):
    with pytest.raises(InvalidTask, match="account_id"):
        limited.one_per_account.enqueue()
    assert not Job.objects.exists()


def test_enqueue_many_keys_each_job_and_keeps_the_calls_order(limited):
    results = limited.one_per_account.enqueue_many(
        ((account,), {}) for account in [1, 2, 1, 3, 2]
    )
    keys = [Job.objects.get(pk=r.id).limit_key.rpartition(":")[2] for r in results]
    assert keys == ["1", "2", "1", "3", "2"]
    assert [r.args for r in results] == [[1], [2], [1], [3], [2]]


# Claims ------------------------------------------------------------------------


def test_a_claim_takes_no_more_than_the_limit_has_room_for(limited):
    for _ in range(5):
        limited.two_at_a_time.enqueue()
    first = claim()
    assert len(first) == 2
    assert claim(worker_id="w2") == []  # another worker: still full
    finish(first[0])
    assert len(claim(worker_id="w2")) == 1
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 2


def test_jobs_held_back_do_not_block_the_jobs_behind_them(limited):
    held = [limited.two_at_a_time.using(priority=10).enqueue() for _ in range(30)]
    behind = [limited.free.enqueue() for _ in range(3)]
    claimed = {job.pk for job in claim(limit=10)}
    assert len(claimed & {int(r.id) for r in held}) == 2
    assert {int(r.id) for r in behind} <= claimed


def test_jobs_of_a_limit_no_task_declares_run_as_jobs_of_no_limit(limited):
    """A limit taken out of the code (or one a newer version of it
    declares): a worker runs its jobs as a worker that knows of no limit
    does, in claim order among the others, beside the limits it knows."""
    for _ in range(30):
        limited.two_at_a_time.using(priority=10).enqueue()
    orphans = [limited.free.using(priority=5).enqueue() for _ in range(3)]
    behind = [limited.free.enqueue() for _ in range(4)]
    Job.objects.filter(pk__in=[r.id for r in orphans]).update(limit_key="gone:7")
    claimed = claim(limit=8)
    assert [job.pk for job in claimed if job.priority == 5] == [
        int(r.id) for r in orphans
    ]
    assert len([job for job in claimed if job.priority == 10]) == 2
    assert [job.pk for job in claimed if job.priority == 0] == [
        int(r.id) for r in behind[:3]
    ]
    assert Job.objects.filter(status=JobStatus.RUNNING, limit_key="gone:7").count() == 3


def test_a_job_of_an_undeclared_limit_written_later_waits_one_look_at_most(
    limited, monkeypatch
):
    """PostgreSQL looks for such jobs when a worker first claims and every
    ``UNDECLARED_CHECK_SECONDS`` after: one that appears between two looks
    waits for the next. Elsewhere they are taken at once."""
    from django.db import connection

    from django_bgtasks.sql import limited as limited_claim

    assert claim() == []  # the first look: none
    orphan = limited.free.enqueue()
    Job.objects.filter(pk=orphan.id).update(limit_key="gone:7")
    if connection.vendor == "postgresql":
        assert claim() == []  # not looked for again yet
        monkeypatch.setattr(limited_claim, "UNDECLARED_CHECK_SECONDS", 0.0)
    assert [job.pk for job in claim()] == [int(orphan.id)]


def test_jobs_held_back_cost_the_claim_of_the_others_no_reads(limited):
    """PostgreSQL: the front reads the jobs of no limit from their own part
    of the READY index, and the jobs of limits one limit at a time, leaving
    out a full limit of one key; so however many jobs a full limit holds
    back ahead of the others, it reads none of those rows (before, each
    claim read every one of them from the table and passed over it), with
    limits of keys declared beside it too."""
    from django.db import connection

    from django_bgtasks.sql.limited import _statements

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: its indexes hold those jobs apart")
    assert any(limit.key for limit in declared_limits().by_name.values())
    for _ in range(202):
        limited.two_at_a_time.using(priority=10).enqueue()
    free = [limited.free.enqueue() for _ in range(5)]
    assert len(claim(limit=2)) == 2  # the limit is full now
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
    [front, *_], params = _statements(
        connection, ["default"], 10, declared_limits(), "w2"
    )
    read = _rows_read(_front_plan(front, params))
    # The 5 jobs of no limit and the 2 RUNNING ones of the limit, not the
    # 200 held back ahead of them.
    [ready] = [name for name in read if name.startswith("bgtasks_job_ready")]
    assert read.pop(ready) == 5, read
    assert sum(read.values()) <= 2 * len(read), read
    assert {job.pk for job in claim(limit=10)} == {int(r.id) for r in free}


def test_a_claim_reads_no_more_jobs_of_a_limit_of_one_key_than_it_can_start(
    limited,
):
    """PostgreSQL: with room for 1 in a limit of 2 (no key), a claim of 10
    reads at most 2 of its 50 waiting jobs (it could never start more at
    once), not 10; and starts 1 of them."""
    from django.db import connection

    from django_bgtasks.sql.limited import _statements

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: its limits' index is walked per limit")
    waiting = [limited.two_at_a_time.using(priority=10).enqueue() for _ in range(51)]
    assert len(claim(limit=1)) == 1  # room for 1 left
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
    [front, *_], params = _statements(
        connection, ["default"], 10, declared_limits(), "w2"
    )
    plan = _front_plan(front, params)
    # What the walk of the limits kept: a walk per limit (in a loop: the
    # plan gives its rows as an average per limit).
    [kept] = [
        node
        for node in _plan_nodes(plan)
        if node.get("Subplan Name") == "CTE c_limited"
    ]
    assert kept["Actual Rows"] == 2, kept
    assert [job.pk for job in claim(limit=10)] == [int(waiting[1].id)]


@pytest.mark.parametrize("queues", [["images"], ["images", "default"], None])
def test_a_full_queues_waiting_jobs_cost_the_claim_no_reads(limited, queues):
    """PostgreSQL: a queue's limit full, a claim reads none of its 200
    waiting jobs to find the queue's next (a walk per limited queue, which
    leaves out a full one), and a claim of that queue alone reads none at
    all. A claim of several queues or of every queue still walks past them
    to find the jobs of other queues (no index tells them apart), as the
    plain claim walks past the jobs of queues it does not serve."""
    from django.db import connection

    from django_bgtasks.sql.limited import _statements

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: its claim walks each limited queue")
    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"concurrency": 1}}}
    with override_settings(BGTASKS=settings):
        for _ in range(101):
            limited.free.using(queue_name="images").enqueue()
            limited.one_per_account.using(queue_name="images").enqueue(1)
        assert len(claim(queues=["images"], limit=5)) == 1  # full now
        free = [limited.free.enqueue() for _ in range(5)]
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Job._meta.db_table}")
        [front, *_], params = _statements(
            connection, queues, 10, declared_limits(), "w2"
        )
        read = _rows_read(_front_plan(front, params))
        # Jobs waiting, read (from an index or the table), not RUNNING ones.
        ready = sum(n for index, n in read.items() if "run" not in index)
        if queues == ["images"]:
            assert ready == 0, read
        else:  # the 5 of no limit, past the full queue's 200 at most once
            assert 5 <= ready <= 205, read
        claimed = {job.pk for job in claim(queues=queues, worker_id="w2")}
        if queues == ["images"]:
            assert claimed == set()
        else:
            assert claimed == {int(r.id) for r in free}


def test_the_plan_of_one_queues_claim_made_once_reads_that_queue_only(limited):
    """PostgreSQL: the front is prepared and planned once for any
    parameters (sql/pinned.py). With statistics that know of one queue
    only, a plan made for any queue name would walk the READY index of all
    queues past that queue's backlog; the name is in the text, so the plan
    reads the claim's queue's jobs only."""
    from django.db import connection

    from django_bgtasks.sql.limited import _statements

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: its claim is prepared statements")
    others = [limited.free.using(priority=10).enqueue() for _ in range(300)]
    Job.objects.filter(pk__in=[r.id for r in others]).update(queue_name="other")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
    free = [limited.free.enqueue() for _ in range(5)]
    [front, *_], params = _statements(
        connection, ["default"], 10, declared_limits(), "w2"
    )
    read = _rows_read(_front_plan(front, params, prepared=True))
    [ready] = [name for name in read if name.startswith("bgtasks_job_ready")]
    assert read.pop(ready) == 5, read
    claimed = claim(limit=10, queues=["default"])
    assert {job.pk for job in claimed} == {int(r.id) for r in free}


def _front_plan(front, params, *, prepared=False) -> dict:
    """The plan of the front statement, run as the claim runs it (but that
    it never reads the whole table): EXPLAIN ANALYZE's, as a dict;
    ``prepared``: its plan made once for any parameters."""
    from django.db import connection, transaction

    from django_bgtasks.sql.pinned import GENERIC_PLAN, _prepared_forms

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        if prepared:
            _, prepare, front = _prepared_forms(front)
            cursor.execute(GENERIC_PLAN + prepare)
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + front, params)
        [(plan,)] = cursor.fetchall()
        transaction.set_rollback(True)
    return (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]


def _plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def _rows_read(plan) -> dict[str, int]:
    """The rows of jobs a plan reads, by index (but the primary key's: the
    claimed rows)."""
    read: dict[str, int] = {}
    for node in _plan_nodes(plan):
        index = node.get("Index Name", node.get("Relation Name", ""))
        if (
            "Scan" in node["Node Type"]
            and node.get("Relation Name") == Job._meta.db_table
            and "pkey" not in index
        ):
            rows = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            read[index] = read.get(index, 0) + rows * node["Actual Loops"]
    return read


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_claim_fills_the_places_of_limited_jobs_it_cannot_start(
    limited, in_transaction
):
    """A claim sees room in a limit, but another claim is taking it (holds
    its row): the jobs behind take the places, so the claim comes back full
    (a short claim tells the worker the backlog is gone). In a transaction,
    PostgreSQL's claim runs its statements one by one: the same outcome."""
    from django.db import connection, connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: elsewhere a claim waits for that row")
    held = [limited.two_at_a_time.using(priority=10).enqueue() for _ in range(2)]
    behind = [limited.free.enqueue() for _ in range(5)]
    [name] = {Job.objects.get(pk=r.id).limit_key for r in held}
    LimitState.objects.create(name=name)
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute(
                f"SELECT name FROM {LimitState._meta.db_table} WHERE name = %s "
                f"FOR UPDATE",
                [name],
            )
        with transaction.atomic(durable=True) if in_transaction else nullcontext():
            claimed = {job.pk for job in claim(limit=4)}
    finally:
        other.rollback()
        other.close()
    assert claimed == {int(r.id) for r in behind[:4]}
    # With the row free again, the limited jobs start.
    with transaction.atomic(durable=True) if in_transaction else nullcontext():
        claimed = {job.pk for job in claim(limit=4)}
        assert claimed == {int(r.id) for r in held} | {int(behind[4].id)}
        assert claim(worker_id="w2") == []  # full now


def test_a_claim_of_several_queues_keeps_to_the_limits(limited):
    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"concurrency": 1}}}
    with override_settings(BGTASKS=settings):
        for account in [1, 1, 2]:
            limited.one_per_account.using(queue_name="other").enqueue(account)
        for _ in range(3):
            limited.free.using(queue_name="images").enqueue()
        free = [limited.free.enqueue() for _ in range(2)]
        claimed = claim(queues=["images", "other", "default"])
        queues = sorted(job.queue_name for job in claimed)
        assert queues == ["default", "default", "images", "other", "other"]
        assert {int(r.id) for r in free} <= {job.pk for job in claimed}
        assert claim(queues=["images", "other"], worker_id="w2") == []


def test_a_limit_with_a_key_is_one_limit_per_value(limited):
    for account in [1, 1, 1, 2, 2, 3]:
        limited.one_per_account.enqueue(account)
    claimed = claim()
    assert sorted(job.args[0] for job in claimed) == [1, 2, 3]
    assert claim(worker_id="w2") == []


def test_tasks_that_share_a_limits_name_share_its_room(limited):
    for _ in range(2):
        limited.shared_a.enqueue()
        limited.shared_b.enqueue()
    assert len(claim()) == 1


def test_a_queues_limit_counts_every_job_of_the_queue(limited):
    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"concurrency": 2}}}
    with override_settings(BGTASKS=settings):
        for _ in range(4):
            limited.free.using(queue_name="images").enqueue()
        # Its own limit and the queue's: the stricter wins.
        limited.two_at_a_time.using(queue_name="images").enqueue()
        others = [limited.free.enqueue() for _ in range(3)]
        claimed = claim()
        assert [j.queue_name for j in claimed].count("images") == 2
        assert {int(r.id) for r in others} <= {j.pk for j in claimed}
        assert claim(queues=["images"], worker_id="w2") == []


def test_a_queues_limit_of_a_rate_only_counts_starts(limited):
    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"rate": "3/m"}}}
    with override_settings(BGTASKS=settings):
        for _ in range(5):
            limited.free.using(queue_name="images").enqueue()
        others = [limited.free.enqueue() for _ in range(2)]
        claimed = claim()
        assert [j.queue_name for j in claimed].count("images") == 3
        assert {int(r.id) for r in others} <= {j.pk for j in claimed}
        assert claim(queues=["images"], worker_id="w2") == []


def test_a_job_leaving_running_any_way_frees_its_place(limited):
    for _ in range(4):
        limited.two_at_a_time.enqueue()
    first = claim()
    assert len(first) == 2
    # Written around the API: the count is of rows, so nothing leaks.
    Job.objects.filter(pk=first[0].pk).update(status=JobStatus.FAILED)
    Job.objects.filter(pk=first[1].pk).update(
        status=JobStatus.READY, attempts=F("attempts") - 1
    )
    assert len(claim(worker_id="w2")) == 2


def test_limits_of_concurrency_alone_claim_within_them():
    """No rate declared anywhere (no tokens, no time read for them): the
    claim keeps to a queue's concurrency as to any limit."""
    from tests import tasks

    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"concurrency": 2}}}
    with override_settings(BGTASKS=settings):
        assert not declared_limits().rated_names()
        ids = [
            int(tasks.echo.using(queue_name="images").enqueue().id) for _ in range(3)
        ]
        assert sorted(job.pk for job in claim()) == ids[:2]
        assert claim(worker_id="w2") == []
        running = Job.objects.filter(status=JobStatus.RUNNING)
        assert all(job.started_at is not None for job in running)


def test_a_rate_allows_its_count_then_one_per_share_of_its_period(limited):
    ids = {int(limited.five_a_second.enqueue().id) for _ in range(12)}
    first = claim()
    assert len(first) == 5  # a full bucket
    assert claim(worker_id="w2") == []  # empty: nothing until a token comes
    state = LimitState.objects.get(name="tests.limited_tasks.five_a_second")
    assert state.tokens < 1
    # Started at the moment they took their tokens, to the microsecond.
    stamps = Job.objects.filter(pk__in=[job.pk for job in first])
    assert set(stamps.values_list("started_at", flat=True)) == {state.refilled_at}
    more = wait_until(lambda: claim(worker_id="w3"), timeout=5, message="a token")
    assert len(more) == 1  # 0.2 s a token
    started = sorted(
        Job.objects.filter(pk__in=ids, started_at__isnull=False).values_list(
            "started_at", flat=True
        )
    )
    assert len(started) == 6
    # Stamped at the moments they took their tokens: 0.2 s apart at least.
    assert (started[5] - started[4]).total_seconds() >= 0.2 - 1e-6


@pytest.mark.parametrize("committed", [True, False])
def test_a_limited_mysql_claim_whose_commit_goes_unanswered_keeps_its_jobs(
    limited, monkeypatch, committed
):
    """As ``test_a_mysql_claim_whose_commit_goes_unanswered_keeps_what_it_
    claimed`` (test_claim.py), for a claim within limits: a transaction
    Django knows of, whose commit is the driver's."""
    from django.db import connection

    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: a server that can end a connection")
    ids = [int(limited.five_a_second.enqueue().id) for _ in range(7)]
    commit = connection._commit
    commits = []

    def commit_and_lose_its_answer():
        commits.append(None)
        if committed or len(commits) > 1:
            commit()
        if len(commits) == 1:  # the first
            lose_this_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")  # the driver's own error

    monkeypatch.setattr(connection, "_commit", commit_and_lose_its_answer)
    # Undone, the claim's next round (it held jobs back) claims them again.
    claimed = claim()
    assert sorted(job.pk for job in claimed) == ids[:5]
    running = Job.objects.filter(status=JobStatus.RUNNING, worker_id="w1")
    assert sorted(running.values_list("pk", flat=True)) == sorted(
        job.pk for job in claimed
    )
    # The tokens were spent once: with the commit that claimed the jobs.
    state = LimitState.objects.get(name="tests.limited_tasks.five_a_second")
    assert state.tokens < 1
    assert claim(worker_id="w2") == []


def test_a_rate_counts_every_key_of_its_limit_as_one(limited):
    """Rows written around the API (or queued before a limit with a key
    became a rate): jobs of one rated limit under several keys draw on the
    one bucket of its name."""
    ids = [int(limited.five_a_second.enqueue().id) for _ in range(8)]
    name = "tests.limited_tasks.five_a_second"
    for n, pk in enumerate(ids):
        Job.objects.filter(pk=pk).update(limit_key=f"{name}:{n}")
    assert len(claim()) == 5
    assert LimitState.objects.get(name=name).tokens < 1


def test_a_worker_that_knows_no_limit_claims_as_before():
    """Jobs of limits too, in claim order among the others (PostgreSQL
    reads the two kinds from two parts of its index), and those it does not
    take are free for the next claim."""
    from tests import tasks

    results = [tasks.echo.using(priority=p).enqueue(p) for p in (1, 4, 3, 2, 5, 0)]
    ids = [int(r.id) for r in results]
    Job.objects.filter(pk__in=ids[1::2]).update(limit_key="tests.limited:x")
    assert [job.pk for job in claim(limit=3)] == [ids[4], ids[1], ids[2]]
    assert [job.pk for job in claim(limit=2, worker_id="w2")] == [ids[3], ids[0]]
    assert [job.pk for job in claim(limit=5, worker_id="w3")] == [ids[5]]
    assert not LimitState.objects.exists()


def test_a_rated_job_waits_without_spinning_the_worker(limited):
    """The claims a worker makes while its jobs wait for tokens: about one
    per poll, not a claim-and-release loop."""
    from django_bgtasks.worker import Worker
    from django_bgtasks.worker.hooks import RecordedHooks

    count = 12
    for _ in range(count):
        limited.five_a_second.enqueue()
    hooks = RecordedHooks()
    poll = 0.1
    began = time.monotonic()
    Worker(concurrency=4, burst=True, poll_interval=poll, hooks=hooks).run()
    elapsed = time.monotonic() - began
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == count
    assert elapsed >= (count - 5) / 5 - 0.2  # 5 at once, then 5 a second
    claims = hooks["claims"] + hooks["urgent_claims"]
    print(f"{claims} claims in {elapsed:.2f} s")
    assert claims <= elapsed / poll + count + 10


# Several workers -------------------------------------------------------------------

WORKER_ENV = {"BGTASKS_TEST_TASK_MODULES": "tests.limited_tasks"}


def drain(workers, started, jobs, *, timeout=120) -> None:
    """Wait until every one of ``jobs`` has succeeded, then stop the worker
    processes ``started``."""
    count = jobs.count()
    wait_until(
        lambda: jobs.filter(status=JobStatus.SUCCESSFUL).count() == count,
        timeout=timeout,
        message="every job done",
    )
    for process in started:
        process.terminate()
        workers.wait(process)


def most_at_once(results) -> int:
    """The most runs of ``results`` that overlapped, from their spans."""
    moments = []
    for result in results:
        began, ended = Job.objects.get(pk=result.id).return_value
        moments += [(began, 1), (ended, -1)]
    running = most = 0
    for _, change in sorted(moments):  # an end before a start at one time
        running += change
        most = max(most, running)
    return most


@pytest.mark.slow
def test_several_workers_never_run_more_than_a_limit_allows(workers, limited):
    """Four worker processes that each hold one job at most: a limit of 2
    can only be reached by two processes at once, and a third must be kept
    out by the database, not by a process's own count."""
    args = ("--concurrency", "1", "--prefetch", "0")
    started = [workers.start(*args, env=WORKER_ENV) for _ in range(4)]
    wait_until(
        lambda: WorkerProcess.objects.count() == 4, timeout=60, message="4 workers"
    )
    two = limited.two_at_a_time.enqueue_many(((), {"pause": 0.05}) for _ in range(30))
    by_account = {
        account: limited.one_per_account.enqueue_many(
            ((account,), {"pause": 0.05}) for _ in range(6)
        )
        for account in range(3)
    }
    free = limited.free.enqueue_many(((), {}) for _ in range(40))
    everything = [*two, *free, *(r for rs in by_account.values() for r in rs)]
    jobs = Job.objects.filter(pk__in=[r.id for r in everything])
    drain(workers, started, jobs)
    # Never more, and the room was used: by two processes at once.
    assert most_at_once(two) == 2
    for results in by_account.values():
        assert most_at_once(results) == 1
    assert most_at_once([r for rs in by_account.values() for r in rs]) >= 2
    two_ran_on = {
        worker
        for job in jobs.filter(pk__in=[r.id for r in two])
        for worker in job.worker_ids
    }
    assert len(two_ran_on) >= 2


@pytest.mark.slow
def test_workers_of_every_shape_of_claim_keep_to_a_queues_limit(workers, limited):
    """A queue's limit of 2, kept by four worker processes that claim it as
    their one queue, as one of several, and among every queue (each walks
    it in its own way: sql/limited.py), with jobs of a task's limit and
    keys among its jobs and other queues' jobs beside them. Each holds one
    job at most: the limit is reached by two processes at once, and the
    others are kept out by the database."""
    limits = json.dumps({"images": {"concurrency": 2}})
    env = {**WORKER_ENV, "BGTASKS_TEST_QUEUE_LIMITS": limits}
    settings = {**BGTASKS, "QUEUE_LIMITS": json.loads(limits)}
    started = [
        workers.start(
            "--queues", queues, "--concurrency", "1", "--prefetch", "0", env=env
        )
        for queues in ["images", "images,default", "*", "*"]
    ]
    wait_until(
        lambda: WorkerProcess.objects.count() == 4, timeout=60, message="4 workers"
    )
    with override_settings(BGTASKS=settings):
        images = [
            *limited.free.using(queue_name="images").enqueue_many(
                ((), {"pause": 0.05}) for _ in range(16)
            ),
            *limited.one_per_account.using(queue_name="images").enqueue_many(
                ((account,), {"pause": 0.05}) for account in [1, 1, 2, 2]
            ),
        ]
        others = limited.free.enqueue_many(((), {}) for _ in range(40))
    jobs = Job.objects.filter(pk__in=[r.id for r in [*images, *others]])
    drain(workers, started, jobs)
    assert most_at_once(images) == 2


@pytest.mark.slow
def test_several_workers_keep_to_a_rate(workers, limited):
    count = 16
    results = limited.five_a_second.enqueue_many(((), {}) for _ in range(count))
    started = [workers.start("--concurrency", "4", env=WORKER_ENV) for _ in range(3)]
    jobs = Job.objects.filter(pk__in=[r.id for r in results])
    drain(workers, started, jobs, timeout=60)
    # Claimed by the database's clock: in any span of t seconds, at most
    # the bucket (5) and what refills in t (5 a second). A claim stamps its
    # jobs started at the moment it took their tokens: exactly, however
    # slow the machine (a microsecond's rounding aside).
    starts = sorted(jobs.values_list("started_at", flat=True))
    for first in range(count):
        for last in range(first, count):
            span = (starts[last] - starts[first]).total_seconds()
            assert last - first + 1 <= 5 + 5 * (span + 1e-6), (first, last, span)
    assert (starts[-1] - starts[0]).total_seconds() >= (count - 5) / 5 - 0.05


def test_the_checks_refuse_queue_limits_that_are_not_limits():
    from django.core.checks import run_checks

    bad = {**BGTASKS, "QUEUE_LIMITS": {"images": {"concurrency": 2, "key": "x"}}}
    with override_settings(BGTASKS=bad):
        ids = [e.id for e in run_checks()]
    assert "bgtasks.E003" in ids
    good = {**BGTASKS, "QUEUE_LIMITS": {"images": {"rate": "10/s"}}}
    with override_settings(BGTASKS=good):
        assert "bgtasks.E003" not in [e.id for e in run_checks()]


def test_the_checks_refuse_two_limits_under_one_name(limited):
    from django.core.checks import run_checks

    assert "bgtasks.E012" not in [e.id for e in run_checks()]
    clash = importlib.import_module("tests.limited_clash")
    registry.register(clash.another_shared)
    errors = [e for e in run_checks() if e.id == "bgtasks.E012"]
    assert len(errors) == 1 and "'shared'" in errors[0].msg


def test_why_a_job_waits_names_the_full_limit_and_its_holders(limited):
    from django_bgtasks.waits import why_waiting

    for _ in range(3):
        limited.two_at_a_time.enqueue()
    holders = sorted(job.pk for job in claim())
    waiting = Job.objects.get(status=JobStatus.READY)
    [reason] = [r for r in why_waiting(waiting) if r.code == "limit_full"]
    assert reason.jobs == holders
    assert "2 of 2 running" in reason.message


def test_why_a_job_waits_names_a_used_up_rate(limited):
    from django_bgtasks.waits import why_waiting

    for _ in range(6):
        limited.five_a_second.enqueue()
    assert len(claim()) == 5
    waiting = Job.objects.get(status=JobStatus.READY)
    codes = [r.code for r in why_waiting(waiting)]
    assert "rate_limited" in codes
    assert "limit_full" not in codes


def test_why_a_job_waits_names_its_queues_full_limit(limited):
    from django_bgtasks.waits import why_waiting

    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"concurrency": 1}}}
    with override_settings(BGTASKS=settings):
        for _ in range(2):
            limited.free.using(queue_name="images").enqueue()
        [held] = claim()
        waiting = Job.objects.get(status=JobStatus.READY)
        [reason] = [r for r in why_waiting(waiting) if r.code == "limit_full"]
        assert reason.jobs == [held.pk]
        assert "queue 'images'" in reason.message


# The admin ---------------------------------------------------------------------


def test_the_dashboard_shows_each_limit_and_whether_it_is_full(limited, admin_client):
    from django.urls import reverse

    settings = {**BGTASKS, "QUEUE_LIMITS": {"images": {"rate": "10/m"}}}
    with override_settings(BGTASKS=settings):
        for _ in range(3):
            limited.two_at_a_time.enqueue()
        for account in [1, 1, 2]:
            limited.one_per_account.enqueue(account)
        claim()
        page = admin_client.get(
            reverse("admin:django_bgtasks_jobdashboard_changelist")
        ).content.decode()
    section = page[page.index('id="bgtasks-limits"') :]
    section = section[: section.index("</section>")]
    rows = {
        row.split("<td>")[1].split("<")[0].strip(): row
        for row in section.split("<tr")[2:]
    }
    assert set(rows) == {
        "tests.limited_tasks.two_at_a_time",
        "tests.limited_tasks.one_per_account",
        "tests.limited_tasks.five_a_second",
        "shared",
        "queue:images",
    }
    two = rows["tests.limited_tasks.two_at_a_time"]
    assert "bgtasks-full" in two and "2 / 2" in two
    assert ">1</td>" in two  # one due job counts against it
    per_account = rows["tests.limited_tasks.one_per_account"]
    assert "2 (1 per value; 2 at most)" in per_account
    assert "bgtasks-full" not in per_account  # other values have room
    assert "10/m (10.0)" in rows["queue:images"]


def test_a_waiting_jobs_page_links_the_jobs_holding_its_limit(limited, admin_client):
    from django.urls import reverse

    for _ in range(2):
        limited.shared_a.enqueue()
    [holder] = claim()
    waiting = Job.objects.get(status=JobStatus.READY)
    page = admin_client.get(
        reverse("admin:django_bgtasks_job_change", args=[waiting.pk])
    ).content.decode()
    assert "Limit &#x27;shared&#x27; is full: 1 of 1 running" in page
    holder_url = reverse("admin:django_bgtasks_job_change", args=[holder.pk])
    assert f'running (<a href="{holder_url}">#{holder.pk}</a>)' in page


@pytest.mark.slow
def test_a_dead_workers_job_holds_its_limit_until_it_is_rescued(workers, limited):
    """A worker killed while it runs a job of a limit: the job stays RUNNING
    (its worker's, until a rescue), so no other worker starts another job
    of that key meanwhile; the rescued job runs first, then the others."""
    import os
    import signal

    results = limited.one_per_account.enqueue_many(
        ((7,), {"pause": 0.5}) for _ in range(3)
    )
    first = Job.objects.get(pk=results[0].id)
    env = {
        **WORKER_ENV,
        "BGTASKS_HEARTBEAT_INTERVAL": "0.3",
        "BGTASKS_WORKER_TIMEOUT": "1.5",
    }
    doomed = workers.start("--concurrency", "2", env=env)
    wait_until(
        lambda: Job.objects.filter(pk=first.pk, status=JobStatus.RUNNING).exists(),
        timeout=30,
        message="the first job running",
    )
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    survivor = workers.start("--concurrency", "2", env=env)
    jobs = Job.objects.filter(pk__in=[r.id for r in results])
    wait_until(
        lambda: jobs.filter(status=JobStatus.SUCCESSFUL).count() == 3,
        timeout=60,
        message="every job done",
    )
    survivor.terminate()
    workers.wait(survivor)
    first.refresh_from_db()
    assert len(first.worker_ids) == 2  # run again after the rescue
    others = jobs.exclude(pk=first.pk)
    # None of the others started before the rescued job's second start.
    assert all(job.started_at >= first.last_attempted_at for job in others)
    assert all(len(job.worker_ids) == 1 for job in others)
    assert most_at_once(results[1:]) == 1


@pytest.mark.parametrize("lost", ["all", "some"])
def test_a_claim_prepares_its_statements_again_on_a_connection_that_lost_them(
    limited, lost
):
    """As behind a pooler in transaction mode, which hands out another
    server connection: one with none of them, or with some only."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: its claim is prepared statements")
    for _ in range(4):
        limited.two_at_a_time.enqueue()
    assert len(claim(limit=1)) == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        prepared = dict(cursor.fetchall())
        assert len(prepared) >= 3  # the front, the lock and the admit
        for name, statement in prepared.items():
            if lost == "all" or "claimed.*" in statement:  # "some": the front
                cursor.execute(f"DEALLOCATE {name}")
    assert len(claim(limit=1)) == 1
    assert claim(worker_id="w2") == []  # and still keeps to the limit
    finish(Job.objects.filter(status=JobStatus.RUNNING).first())
    assert len(claim(limit=3)) == 1  # the room of the job that ended
