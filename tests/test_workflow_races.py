"""Races between the writers of a workflow, each made to happen.

Each test runs the writers (an operator's cancel or retry, a worker
recording an end or putting a job back) on threads of their own, so on
connections and in transactions of their own, and holds them at chosen
points: a thread stops at a ``Hold`` (a function of the product wrapped
by monkeypatch, or a statement seen by ``connection.execute_wrapper``)
until the test lets it go, and the test waits (polls with a deadline, no
sleeps) for the other thread to be done, or blocked on a row lock as the
database reports it. The interleaving is then the same on every run.

Each test ends with no step left WAITING for a job that has ended, and
no transaction aborted (a deadlock). The first four fail on the code
before the fixes of the reviewer's findings 1, 7, 3 and 5 (each says
where); the last two failed on MariaDB after those fixes, until the
operator's change took its locks before any other read and retried a
deadlock the database broke. SQLite has one writer at a time, whose lock a
transaction takes before it reads (``lock_for_writing``): none of these
interleavings can happen there. Logic of workflows: test_workflows.py;
real workers killed mid-workflow: test_workflow_processes.py."""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager

import pytest
from django.db import connection, connections

from django_bgtasks import chain, chord, group
from django_bgtasks.db import database_now
from django_bgtasks.models import (
    FINISHED_STATUSES,
    Job,
    JobDependency,
    JobStatus,
    dependencies,
)
from django_bgtasks.models import jobs as jobs_module
from django_bgtasks.models.transitions import Failed, Interrupted, Succeeded, transition
from django_bgtasks.sql.claim import claim_jobs
from django_bgtasks.sql.complete import Completion, complete_jobs
from tests import tasks
from tests.conftest import requires_server_database, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), requires_server_database]

ON_MYSQL = os.environ.get("DATABASE_URL", "").startswith(("mysql", "mariadb"))
requires_mysql = pytest.mark.skipif(
    not ON_MYSQL,
    reason="MySQL/MariaDB only: REPEATABLE READ there reads plain SELECTs in "
    "the transaction's first snapshot, locking ones in the latest rows; "
    "PostgreSQL's READ COMMITTED reads each statement afresh (and its "
    "REPEATABLE READ fails a locking read of a row changed since, with a "
    "serialization error); SQLite has one writer",
)

# Every wait of these tests, in seconds: none should come near it.
TIMEOUT = 10.0


class Hold:
    """A point where a thread stops until the test lets it go."""

    def __init__(self, name: str):
        self.name = name
        self.reached = threading.Event()
        self.released = threading.Event()

    def __call__(self) -> None:  # on the held thread
        self.reached.set()
        if not self.released.wait(TIMEOUT):
            raise TimeoutError(f"{self.name}: never let go")

    def wait_reached(self) -> None:
        assert self.reached.wait(TIMEOUT), f"{self.name}: never reached"

    def release(self) -> None:
        self.released.set()


class Actor(threading.Thread):
    """Runs ``action`` on a thread, so on a connection of its own (Django's
    are per thread), and keeps what it returned or raised. ``session``:
    the database's id of that connection."""

    def __init__(self, name: str, action, *, repeatable_read: bool = False):
        super().__init__(name=name, daemon=True)
        self.action = action
        self.repeatable_read = repeatable_read
        self.connected = threading.Event()
        self.session = None
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    cursor.execute("SELECT pg_backend_pid()")
                else:
                    cursor.execute("SELECT CONNECTION_ID()")
                self.session = cursor.fetchone()[0]
                if self.repeatable_read:  # MySQL's default, if a project sets it
                    cursor.execute(
                        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                    )
            self.connected.set()
            self.result = self.action()
        except BaseException as exc:
            self.error = exc
        finally:
            self.connected.set()
            connections.close_all()


class Race:
    """The threads and holds of one test; whatever happens, every hold is
    let go and every thread joined at its end (before the database is
    flushed)."""

    def __init__(self):
        self.actors: list[Actor] = []
        self.holds: list[Hold] = []

    def hold(self, name: str) -> Hold:
        hold = Hold(name)
        self.holds.append(hold)
        return hold

    def start(self, name: str, action, **options) -> Actor:
        actor = Actor(name, action, **options)
        self.actors.append(actor)
        actor.start()
        assert actor.connected.wait(TIMEOUT), f"{name}: no connection"
        return actor

    def finish(self) -> None:
        """Let every hold go, join every thread; fail on a thread's error
        (a deadlock, a lock wait timeout, a hold never let go)."""
        for hold in self.holds:
            hold.release()
        for actor in self.actors:
            actor.join(TIMEOUT)
            assert not actor.is_alive(), f"{actor.name}: still running"
        errors = {a.name: a.error for a in self.actors if a.error is not None}
        assert not errors, f"a transaction failed: {errors!r}"


@pytest.fixture
def race():
    race = Race()
    yield race
    for hold in race.holds:
        hold.release()
    for actor in race.actors:
        actor.join(TIMEOUT)


def waits_for_a_lock(actor: Actor) -> bool:
    """Whether ``actor``'s connection waits for a lock another holds."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                [actor.session],
            )
            row = cursor.fetchone()
            return row is not None and row[0] == "Lock"
        # MariaDB's information_schema.innodb_trx leaves out a statement
        # in autocommit waiting for a lock; the engine's status names it.
        cursor.execute("SHOW ENGINE INNODB STATUS")
        status = cursor.fetchone()[2]
    for transaction in status.split("---TRANSACTION")[1:]:
        if re.search(rf"(MySQL|MariaDB) thread id {actor.session},", transaction):
            return "LOCK WAIT" in transaction
    return False


def wait_blocked(actor: Actor) -> None:
    """Until ``actor`` waits for a row lock (it must not end first)."""
    wait_until(
        lambda: waits_for_a_lock(actor) or not actor.is_alive(),
        timeout=TIMEOUT,
        message=f"{actor.name} blocked on a lock",
    )
    assert actor.is_alive(), f"{actor.name} ended: {actor.error!r}"


def wait_blocked_or_done(actor: Actor) -> None:
    wait_until(
        lambda: not actor.is_alive() or waits_for_a_lock(actor),
        timeout=TIMEOUT,
        message=f"{actor.name} done or blocked on a lock",
    )


def held_in(thread_name: str, hold: Hold, function, *, before: bool = False):
    """``function``, holding at ``hold`` on the thread ``thread_name`` (the
    first time only) after it returns (``before``: before it runs)."""

    def wrapper(*args, **kwargs):
        ours = threading.current_thread().name == thread_name
        if ours and before and not hold.reached.is_set():
            hold()
        result = function(*args, **kwargs)
        if ours and not before and not hold.reached.is_set():
            hold()
        return result

    return wrapper


def locking_read_of_jobs(sql: str) -> bool:
    """A SELECT ... FOR UPDATE of jobs."""
    table = connection.ops.quote_name(Job._meta.db_table)
    return "FOR UPDATE" in sql and f"FROM {table}" in sql


def plain_read_of_jobs(sql: str) -> bool:
    """A SELECT of jobs that locks nothing (under REPEATABLE READ, the
    first one of a transaction takes its snapshot)."""
    table = connection.ops.quote_name(Job._meta.db_table)
    return sql.startswith("SELECT") and "FOR UPDATE" not in sql and table in sql


@contextmanager
def held_at(hold: Hold, statement, *, before: bool = False):
    """On this thread's connection: hold once the first statement for which
    ``statement(sql)`` is true has run (``before``: before it runs)."""

    def wrapper(execute, sql, params, many, context):
        first = not hold.reached.is_set() and statement(sql)
        if first and before:
            hold()
        result = execute(sql, params, many, context)
        if first and not before:
            hold()
        return result

    with connection.execute_wrapper(wrapper):
        yield


def claim(count: int) -> list[Job]:
    """What a worker does: claim the ``count`` due jobs (all there are)."""
    claimed = claim_jobs("default", worker_id="racing-worker", queues=None, limit=9)
    assert len(claimed) == count
    return sorted(claimed, key=lambda job: job.pk)


def ids_of(workflow) -> list[int]:
    return [int(member.id) for member in workflow.members]


def stranded(ids) -> list[tuple]:
    """The steps among ``ids`` left WAITING for a job that has ended,
    counted down or not: (step, job it waits for, that job's status, the
    edge's ended_as)."""
    edges = JobDependency.objects.filter(
        job_id__in=ids,
        job__status=JobStatus.WAITING,
        waits_for__status__in=FINISHED_STATUSES,
    )
    return list(
        edges.values_list("job_id", "waits_for_id", "waits_for__status", "ended_as")
    )


def states(ids) -> list[tuple]:
    return list(
        Job.objects.filter(pk__in=ids)
        .order_by("pk")
        .values_list("status", "waiting_for")
    )


# 1. An operator's cancel and a step its worker puts back -------------------


@pytest.mark.parametrize(
    "outcome",
    [Interrupted(), Failed(RuntimeError("once more"), retryable=True)],
    ids=["put back", "retried by its worker"],
)
@pytest.mark.parametrize("selected", ["the step", "the step and another job"])
def test_a_cancel_misses_no_step_its_worker_gives_back_meanwhile(
    race, outcome, selected
):
    """An operator cancels step a of chain(a, b) while a runs (alone, or
    with a job of no workflow): the cancel leaves a (a RUNNING job cannot be
    cancelled). Between the cancel's locking read and its writes, a's
    worker gives it back (READY again). The cancel changes only what it
    locked: a stays READY and b WAITING for it, and b runs once a succeeds.
    (Before the fix, the cancel's UPDATE took a, READY by then, that its
    read of the jobs with dependents had not: a CANCELLED, and b WAITING
    for ever. On MariaDB, the lookup of one job by its id kept the lock
    on a, not READY nor WAITING, and the worker waited; with another job
    in the selection, a range read let it go.)"""
    workflow = chain(tasks.workflow_step.step(label="a"), tasks.add.step(1)).enqueue()
    ids = a, b = ids_of(workflow)
    [running] = claim(1)
    chosen = [a]
    if selected != "the step":
        chosen.append(int(tasks.add.enqueue(2, 3).id))
    held = race.hold("the cancel, after its locking read")

    def cancel_held():
        with held_at(held, locking_read_of_jobs):
            return Job.objects.filter(pk__in=chosen).cancel()

    operator = race.start("operator", cancel_held)
    held.wait_reached()
    worker = race.start("worker", lambda: running.record(outcome))
    wait_blocked_or_done(worker)
    held.release()
    race.finish()

    assert worker.result is not None, "the worker no longer held its job"
    assert not stranded(ids), f"a step waits for an ended job: {stranded(ids)}"
    assert operator.result == len(chosen) - 1  # the other job only
    assert states(ids) == [(JobStatus.READY, 0), (JobStatus.WAITING, 1)]
    # a runs again; its success releases b, handed its result.
    [again] = claim(1)
    assert again.pk == a
    again.record(Succeeded(41))
    assert Job.objects.get(pk=b).status == JobStatus.READY
    assert Job.objects.get(pk=b).args == [41, 1]


# 7. An operator's cancel and a completer: one lock order --------------------


def test_a_cancel_and_a_completer_lock_the_steps_in_one_order(race):
    """chain(a, group(d1, chain(d2, e))): d1 and d2 wait for a, e for d2.
    An operator cancels d1 and d2 while a's worker records its success.
    The cancel has locked what it reads; the completer then locks a's
    dependents in id order, and waits. The cancel goes on, commits; the
    completer finds d1 and d2 cancelled: no deadlock, nothing aborted.
    (Before the fix, the cancel's read locked only the steps with
    dependents, d2, and its UPDATE then wanted d1, which the completer had
    locked while it waited for d2: a deadlock, and one transaction rolled
    back.)"""
    workflow = chain(
        tasks.workflow_step.step(label="a"),
        group(tasks.add.step(1), chain(tasks.add.step(2), tasks.add.step(3))),
    ).enqueue()
    ids = a, d1, d2, e = ids_of(workflow)
    edges = JobDependency.objects.filter(job_id__in=ids)
    assert set(edges.values_list("job_id", "waits_for_id")) == {
        (d1, a),
        (d2, a),
        (e, d2),
    }
    [running] = claim(1)
    held = race.hold("the cancel, after its locking read")

    def cancel_held():
        with held_at(held, locking_read_of_jobs):
            return Job.objects.filter(pk__in=[d1, d2]).cancel()

    operator = race.start("operator", cancel_held)
    held.wait_reached()
    completer = race.start("completer", lambda: running.record(Succeeded(41)))
    wait_blocked(completer)  # on a step the cancel holds
    held.release()
    race.finish()

    assert completer.result is not None
    assert operator.result == 2
    assert not stranded(ids)
    assert [status for status, _ in states(ids)] == [
        JobStatus.SUCCESSFUL,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
    ]


# 3. An operator's retry of a step and the completer of what it waits for ---


def test_a_retried_step_and_the_end_it_waits_for_are_counted_once(race, monkeypatch):
    """chain(a, b): an operator cancelled b while a ran. a's worker records
    its success (held after it wrote a's end on b's edge, not committed)
    while the operator retries b: the retry reads b's edge not done yet and
    makes b WAITING for a, and is held before it commits. The completer
    then locks b whatever its status, so it waits for the retry, reads b
    WAITING and releases it with a's result. (Before the fix, on
    PostgreSQL, the completer's locking read took only WAITING jobs, and b,
    CANCELLED in its snapshot, was left out without a wait: b WAITING for
    ever for a, SUCCESSFUL. On MariaDB, InnoDB's locking read waits for the
    row whatever its status: the race never happened there.)"""
    workflow = chain(tasks.workflow_step.step(label="a"), tasks.add.step(1)).enqueue()
    ids = ids_of(workflow)
    b = ids[1]
    [running] = claim(1)
    assert Job.objects.filter(pk=b).cancel() == 1
    recorded = race.hold("the completer, after it wrote the edges")
    retrying = race.hold("the retry, before it commits")
    monkeypatch.setattr(
        dependencies,
        "_record_ends",
        held_in("completer", recorded, dependencies._record_ends),
    )
    monkeypatch.setattr(
        jobs_module,
        "jobs_reopened",
        held_in("operator", retrying, jobs_module.jobs_reopened, before=True),
    )

    completer = race.start("completer", lambda: running.record(Succeeded(41)))
    recorded.wait_reached()
    operator = race.start("operator", lambda: Job.objects.filter(pk=b).retry())
    retrying.wait_reached()
    recorded.release()
    wait_blocked_or_done(completer)  # the fix: blocked on b
    retrying.release()
    race.finish()

    assert completer.result is not None
    assert operator.result == 1
    assert not stranded(ids), f"a step waits for an ended job: {stranded(ids)}"
    assert states(ids) == [(JobStatus.SUCCESSFUL, 0), (JobStatus.READY, 0)]
    assert Job.objects.get(pk=b).args == [41, 1]


# 5. A chord's callback under REPEATABLE READ ---------------------------------


@requires_mysql
def test_a_callback_is_handed_every_result_under_repeatable_read(race, monkeypatch):
    """Under REPEATABLE READ (MySQL's default isolation, if a project sets
    it; Django's is READ COMMITTED), the two members of a chord end at once:
    the first member's completer has read (its snapshot taken) and written
    its end, and is held; the second's records its end, counts the callback
    down and commits. The first's then counts the callback to zero and
    hands it both results, read with a locking read (the latest committed
    rows). (Before the fix, a plain read, in the first's snapshot: the
    callback was handed None for the second member's result.)"""
    workflow = chord(
        [tasks.workflow_step.step(label="m1"), tasks.workflow_step.step(label="m2")],
        tasks.total.step(),
    ).enqueue()
    ids = m1, m2, callback = ids_of(workflow)
    first, second = claim(2)
    assert [first.pk, second.pk] == [m1, m2]
    recorded = race.hold("the first completer, after it wrote the edges")
    monkeypatch.setattr(
        dependencies,
        "_record_ends",
        held_in("first", recorded, dependencies._record_ends),
    )

    one = race.start("first", lambda: first.record(Succeeded(10)), repeatable_read=True)
    recorded.wait_reached()
    other = race.start(
        "second", lambda: second.record(Succeeded(20)), repeatable_read=True
    )
    wait_blocked_or_done(other)
    recorded.release()
    race.finish()

    assert one.result is not None and other.result is not None
    assert not stranded(ids)
    job = Job.objects.get(pk=callback)
    assert job.status == JobStatus.READY
    assert job.args == [[10, 20]]


# Found by these tests on MariaDB, then fixed --------------------------------


def test_a_cancel_and_a_batch_completion_of_jobs_it_leaves_do_not_deadlock(race):
    """An operator cancels two RUNNING jobs (a step s of chain(s, d), and a
    job x of no workflow), which the cancel leaves as they are, while their
    worker records both ends in one batch: s first, then x. The cancel has
    written the jobs of no workflow (none changed) and is held before its
    locking read of the steps; the batch writes s's end, then x's. Neither
    transaction should fail. (On MariaDB the cancel's UPDATE, through the
    workflow_id index, kept its lock on x: the batch waits for x while
    holding s, the cancel's locking read waits for s, and InnoDB rolls the
    cancel back: OperationalError 1213. PostgreSQL locks no row that does
    not match. Fixed: the cancel takes the steps' locks before it writes,
    and tries again after a deadlock the database broke.)"""
    workflow = chain(tasks.workflow_step.step(label="s"), tasks.add.step(1)).enqueue()
    ids = s, d = ids_of(workflow)
    x = int(tasks.add.enqueue(2, 3).id)
    step, alone = claim(2)
    assert [step.pk, alone.pk] == [s, x]
    now = database_now("default")
    completions = [
        Completion(
            job.pk,
            job.attempts,
            transition(job, Succeeded(7), now=now).changes,
            ends_dependencies=job.has_dependents,
        )
        for job in (step, alone)
    ]
    held = race.hold("the cancel, before its locking read")

    def cancel_held():
        with held_at(held, locking_read_of_jobs, before=True):
            return Job.objects.filter(pk__in=[s, x]).cancel()

    operator = race.start("operator", cancel_held)
    held.wait_reached()
    completer = race.start(
        "completer", lambda: complete_jobs("default", "racing-worker", completions)
    )
    wait_blocked_or_done(completer)  # MariaDB: blocked on x
    held.release()
    race.finish()

    assert completer.result == {s, x}
    assert operator.result == 0
    assert not stranded(ids)
    assert states([d]) == [(JobStatus.READY, 0)]


@requires_mysql
def test_a_retried_step_sees_the_end_committed_before_it_locked_it(race):
    """Under REPEATABLE READ on MariaDB: chain(a, b), b cancelled by an
    operator while a ran. The operator retries b; the retry's first read
    (the queues of the jobs of no workflow it retries) takes its snapshot,
    and it is held there. a's worker records its success and commits: b,
    CANCELLED, is not counted down. The retry then locks b and should make
    it READY, handed a's result: a has ended. (It read b's edge in its
    snapshot, not done, and made b WAITING for a, for ever. Fixed: the
    retry locks the steps before any plain read, so its snapshot comes
    after any end that skipped b.)"""
    workflow = chain(tasks.workflow_step.step(label="a"), tasks.add.step(1)).enqueue()
    ids = ids_of(workflow)
    b = ids[1]
    [running] = claim(1)
    assert Job.objects.filter(pk=b).cancel() == 1
    held = race.hold("the retry, after its first plain read")

    def retry_held():
        with held_at(held, plain_read_of_jobs):
            return Job.objects.filter(pk=b).retry()

    operator = race.start("operator", retry_held, repeatable_read=True)
    held.wait_reached()
    completer = race.start(
        "completer", lambda: running.record(Succeeded(41)), repeatable_read=True
    )
    wait_blocked_or_done(completer)
    held.release()
    race.finish()

    assert completer.result is not None
    assert operator.result == 1
    assert not stranded(ids), f"a step waits for an ended job: {stranded(ids)}"
    assert states(ids) == [(JobStatus.SUCCESSFUL, 0), (JobStatus.READY, 0)]
    assert Job.objects.get(pk=b).args == [41, 1]
