"""Workflows on real ``runworker`` processes, SIGKILLed while they run.

The next step is made due in the transaction that records the outcome it
waited for: a worker killed at any point, before, during or after that
transaction, loses no step and releases none twice. Every step here is
``tasks.claimed_step``, which returns ``[label, claim, *args]``: a step
handed a result must have been handed exactly its predecessor's recorded
one, from the claim that ended the predecessor, and nothing else.
Logic of workflows: test_workflows.py."""

import itertools
import os
import random
import signal
import threading
import time
from functools import partial

import pytest
from django.db import connection, transaction
from django.db.models import Count, F, Q

from django_bgtasks import chain, chord
from django_bgtasks.models import (
    FINISHED_STATUSES,
    Job,
    JobDependency,
    JobStatus,
    WorkerProcess,
)
from tests import tasks
from tests.conftest import requires_server_database, wait_until
from tests.models import Execution

# Several real processes each (see test_processes.py).
pytestmark = pytest.mark.slow

# Heartbeats every 0.5 s, dead after 5 s: a killed worker's jobs are back in
# seconds, and a live one whose beats a loaded machine holds up for a while
# (ten of them) is not judged dead (it would end itself, with an error).
FAST_RESCUE = {"BGTASKS_HEARTBEAT_INTERVAL": "0.5", "BGTASKS_WORKER_TIMEOUT": "5"}


class Pool:
    """Standalone worker processes, replaced as they are killed. ``watch``
    runs at each poll of the waits for them."""

    def __init__(self, workers, *args: str, watch=None):
        self.workers = workers
        self.args = args
        self.watch = watch
        self.alive = {}  # pid -> Popen

    def start(self, count: int = 1, *, wait: bool = True) -> None:
        """Start ``count`` more processes; with ``wait``, until they have
        registered (``registered``)."""
        for _ in range(count):
            process = self.workers.start(*self.args, env=FAST_RESCUE)
            self.alive[process.pid] = process
        if wait:
            self.registered()

    def registered(self) -> None:
        """Wait until every live process still running has registered (its
        signal handlers are in place by then: ``stop`` may end it); one
        that has exited is left to ``stop``'s check of its exit code."""

        def unregistered() -> set[int]:
            running = {pid for pid, p in self.alive.items() if p.poll() is None}
            rows = WorkerProcess.objects.filter(pid__in=running)
            return running - set(rows.values_list("pid", flat=True))

        wait_until(
            watching(self.watch, lambda: not unregistered()),
            timeout=120,
            message="the worker processes registered",
        )

    def kill(self, pid: int) -> None:
        process = self.alive.pop(pid)
        os.kill(pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        self.registered()
        for process in self.alive.values():
            process.send_signal(signal.SIGTERM)
        for process in self.alive.values():
            assert self.workers.wait(process, timeout=60) == 0, self.workers.output(
                process
            )


class Consistency:
    """Reads the workflows' rows while workers change them, each check in
    one statement (one snapshot), and fails the test at the first torn
    state: a job's end recorded without its edges done, or the other way
    round; a step due while an edge of it is not done, or WAITING when all
    are; a step's waiting_for not the number of its edges not done. A
    step made due in another transaction than its last predecessor's end
    would show, for a moment, as one of these."""

    def __init__(self, ids):
        self.ids = ids
        self.checks = 0

    def check(self) -> None:
        done = ~Q(ended_as="")
        succeeded = Q(waits_for__status=JobStatus.SUCCESSFUL)
        torn = JobDependency.objects.filter(job_id__in=self.ids).filter(
            (done & ~succeeded)
            | (~done & succeeded)
            | (~done & ~Q(job__status=JobStatus.WAITING))
        )
        edges = list(torn.values_list("pk", "job_id", "waits_for_id", "ended_as"))
        assert not edges, f"edges torn from their jobs: {edges}"
        pending = Count("dependencies", filter=Q(dependencies__ended_as=""))
        miscounted = (
            Job.objects.filter(pk__in=self.ids)
            .annotate(pending=pending)
            .filter(
                ~Q(waiting_for=F("pending")) | Q(status=JobStatus.WAITING, pending=0)
            )
        )
        jobs = list(miscounted.values_list("pk", "status", "waiting_for", "pending"))
        assert not jobs, f"steps whose count is off: {jobs}"
        self.checks += 1


def watching(watch, predicate):
    """``predicate``, running ``watch`` first if there is one."""
    if watch is None:
        return predicate

    def watched():
        watch()
        return predicate()

    return watched


def ended(ids) -> bool:
    return Job.objects.filter(pk__in=ids, status__in=FINISHED_STATUSES).count() == len(
        ids
    )


def running_steps(ids, pids) -> list[tuple[int, int, int]]:
    """(pid, job, claim) of the steps among ``ids`` that a process in
    ``pids`` is running now: its run of the job's current claim has begun."""
    running = dict(
        Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).values_list(
            "pk", "worker_ids"
        )
    )
    runs = Execution.objects.filter(job_id__in=running, pid__in=pids)
    return [
        (pid, job_id, claim)
        for job_id, claim, pid in runs.values_list("job_id", "claim", "pid")
        if claim == len(running[job_id])
    ]


def check_results(jobs: dict[int, Job]) -> None:
    """Every job SUCCESSFUL, with the result of the claim that ended it;
    each claim run at most once; no step left waiting; every edge done."""
    ids = list(jobs)
    assert {job.status for job in jobs.values()} == {JobStatus.SUCCESSFUL}
    for job in jobs.values():
        claims = len(job.worker_ids)
        assert job.return_value == [job.kwargs["label"], claims, *job.args], job.pk
        assert job.waiting_for == 0
    runs = list(Execution.objects.filter(job_id__in=ids).values_list("job_id", "claim"))
    assert len(runs) == len(set(runs))  # the unique constraint says as much
    final = {pk: len(job.worker_ids) for pk, job in jobs.items()}
    assert set(final.items()) <= set(runs)  # the claim that ended it ran
    assert all(claim <= final[pk] for pk, claim in runs)
    edges = JobDependency.objects.filter(job_id__in=ids)
    assert set(edges.values_list("ended_as", flat=True)) == {"SUCCESSFUL"}
    assert not Job.objects.filter(status=JobStatus.WAITING).exists()


def cut_runs(ids) -> dict[int, list[int]]:
    """The runs of ``ids`` that did not end their job: job -> their claims."""
    final = dict(Job.objects.filter(pk__in=ids).values_list("pk", "worker_ids"))
    cut: dict[int, list[int]] = {}
    for job_id, claim in Execution.objects.filter(job_id__in=ids).values_list(
        "job_id", "claim"
    ):
        if claim < len(final[job_id]):
            cut.setdefault(job_id, []).append(claim)
    return cut


CHAINS, LENGTH, MEMBERS = 20, 5, 40
KILLS = 10


def test_workflows_lose_and_double_no_step_while_workers_are_killed(workers):
    """Three workers run 20 chains of five steps and a chord of 40 members
    while the test SIGKILLs, ten times, a worker in the middle of a step and
    starts another, and reads the rows all along. Every step runs to
    success, handed exactly the recorded result of the step before it (the
    chord's callback: the list of its members' results, in order), once;
    no read ever finds an end recorded without the next step counted
    down."""
    pool = Pool(workers, "--concurrency", "2", "--poll-interval", "0.1")
    pool.start(3)
    step = tasks.claimed_step.step
    with transaction.atomic():
        chains = [
            chain(*(step(label=f"c{c}.{k}", pause=0.5) for k in range(LENGTH)))
            for c in range(CHAINS)
        ]
        chains = [workflow.enqueue() for workflow in chains]
        fan = chord(
            [step(n, label=f"m{n}", pause=0.15) for n in range(MEMBERS)],
            step(label="callback"),
        ).enqueue()
    ids = [int(member.id) for w in [*chains, fan] for member in w.members]
    consistency = Consistency(ids)
    pool.watch = consistency.check
    rng = random.Random(11)
    began = time.monotonic()

    kills = []  # (pid, job, claim): the step that pid was running
    while len(kills) < KILLS:
        target = wait_until(
            watching(
                consistency.check,
                lambda: running_steps(ids, list(pool.alive)) or ended(ids),
            ),
            timeout=120,
            message="a step running, or the workflows ended",
        )
        if target is True:
            break
        pid, job_id, claim = rng.choice(target)
        pool.kill(pid)
        kills.append((pid, job_id, claim))
        # Its replacement, not waited for: on a slow machine a process takes
        # seconds to start, and the workflows would end before the kills.
        pool.start(wait=False)

    wait_until(
        watching(consistency.check, partial(ended, ids)),
        timeout=180,
        message="every step ended",
    )
    took = time.monotonic() - began
    pool.stop()

    jobs = Job.objects.in_bulk(ids)
    check_results(jobs)
    for workflow in chains:
        steps = [jobs[int(member.id)] for member in workflow.members]
        assert steps[0].args == []
        for before, after in itertools.pairwise(steps):
            assert after.args == [before.return_value]
    *members, callback = (jobs[int(member.id)] for member in fan.members)
    assert callback.args == [[member.return_value for member in members]]
    assert [member.return_value[2] for member in members] == list(range(MEMBERS))

    # The kills hit steps as they ran: those runs never ended their job,
    # which a later claim ended.
    cut = cut_runs(ids)
    hit = [kill for kill in kills if kill[2] in cut.get(kill[1], [])]
    killed_pids = {pid for pid, _, _ in kills}
    by_killed = Execution.objects.filter(job_id__in=ids, pid__in=killed_pids)
    print(
        f"\n{connection.vendor}: {len(ids)} steps, {len(kills)} kills, "
        f"{len(hit)} of them cut the step they aimed at; {len(cut)} steps were "
        f"cut short and run again ({sum(map(len, cut.values()))} runs lost), "
        f"{by_killed.count()} runs by killed processes; "
        f"{Job.objects.filter(pk__in=ids, runs_alone=True).count()} steps ran "
        f"alone after; {consistency.checks} consistent reads; drained in "
        f"{took:.1f} s"
    )
    assert len(kills) == KILLS, "the workflows ended before the kills"
    # A step may end between the look and the kill: most kills cut theirs.
    assert len(hit) >= KILLS // 2


ROUNDS, PROCESSES, THREADS = 4, 3, 3


def chord_round(gate, label):
    """A chord of one member per thread of the pool, its members all running
    at once, held at ``gate``; returns the workflow and its members' ids."""
    step = tasks.claimed_step.step
    width = PROCESSES * THREADS
    fan = chord(
        [step(n, label=f"{label}m{n}", gate=str(gate)) for n in range(width)],
        step(label=f"{label}callback"),
    ).enqueue()
    members = [int(member.id) for member in fan.members[:-1]]
    # With no prefetch, one run on each thread of each process.
    runs = Execution.objects.filter(job_id__in=members)
    wait_until(
        lambda: runs.count() == width, timeout=30, message="every member running"
    )
    assert len(set(runs.values_list("pid", flat=True))) == PROCESSES
    return fan, members


def wait_for_the_callback(fan, consistency) -> None:
    wait_until(
        watching(consistency.check, partial(ended, [fan.members[-1].id])),
        timeout=30,
        message="the callback ended",
    )


def check_chord(fan, killed_worker_id=None) -> None:
    ids = [int(member.id) for member in fan.members]
    jobs = Job.objects.in_bulk(ids)
    check_results(jobs)
    *members, callback = (jobs[pk] for pk in ids)
    assert callback.args == [[member.return_value for member in members]]
    assert [member.return_value[2] for member in members] == list(range(len(members)))
    if killed_worker_id not in callback.worker_ids:
        # Released once, claimed once, run once.
        assert callback.attempts == 1 and len(callback.worker_ids) == 1
        assert Execution.objects.filter(job_id=callback.pk).count() == 1


def recorded_elsewhere(members, worker_id) -> bool:
    """Whether a member first claimed by another worker than ``worker_id``
    has been recorded."""
    return (
        Job.objects.filter(pk__in=members, status=JobStatus.SUCCESSFUL)
        .exclude(worker_ids__0=worker_id)
        .exists()
    )


def spread_ms(members) -> float:
    ends = Job.objects.filter(pk__in=members).values_list("finished_at", flat=True)
    return (max(ends) - min(ends)).total_seconds() * 1000


def test_chord_members_ending_at_once_on_several_processes_release_it_once(
    workers, tmp_path
):
    """Nine members of a chord, three on each of three processes, are let go
    at once: the three processes record their ends at the same moment. The
    callback is made due once, claimed once, run once, with the nine
    results in order. Four rounds."""
    pool = Pool(
        workers, "--concurrency", str(THREADS), "--prefetch", "0",
        "--poll-interval", "0.1",
    )  # fmt: skip
    pool.start(PROCESSES)
    spreads = []
    checks = 0
    for round_ in range(ROUNDS):
        gate = tmp_path / f"gate-{round_}"
        fan, members = chord_round(gate, f"r{round_}")
        consistency = Consistency([m.id for m in fan.members])
        gate.touch()
        wait_for_the_callback(fan, consistency)
        check_chord(fan)
        claims = Job.objects.filter(pk__in=members).values_list("worker_ids", flat=True)
        assert {len(worker_ids) for worker_ids in claims} == {1}
        spreads.append(spread_ms(members))
        checks += consistency.checks
    pool.stop()
    print(
        f"\n{connection.vendor}: the members of each round recorded within "
        f"{', '.join(f'{s:.0f}' for s in spreads)} ms of each other; "
        f"{checks} consistent reads"
    )


def test_a_worker_killed_as_chord_members_end_releases_the_callback_once(
    workers, tmp_path
):
    """As above, but as the members are let go, the process that started
    first is SIGKILLed: at once (its members cut short), or once another's
    member is recorded (before, between or after the writes of its own
    members' ends). What it recorded stays, the rest is rescued and run
    again; the callback runs once, with the results the members' recorded
    ends hold. Six rounds, each way in turn."""
    pool = Pool(
        workers, "--concurrency", str(THREADS), "--prefetch", "0",
        "--poll-interval", "0.1",
    )  # fmt: skip
    pool.start(PROCESSES)
    outcomes = []
    for round_ in range(6):
        gate = tmp_path / f"gate-{round_}"
        fan, members = chord_round(gate, f"k{round_}")
        consistency = Consistency([m.id for m in fan.members])
        pool.watch = consistency.check
        runs = Execution.objects.filter(job_id__in=members).order_by("pk")
        pid, worker_id = runs.values_list("pid", "worker_id").first()
        gate.touch()
        if round_ % 2:
            wait_until(
                watching(
                    consistency.check, partial(recorded_elsewhere, members, worker_id)
                ),
                timeout=30,
                message="another process's member recorded",
            )
        pool.kill(pid)
        pool.start()
        wait_for_the_callback(fan, consistency)
        check_chord(fan, killed_worker_id=worker_id)
        # The victim's members: how many it had recorded before it died.
        claims = Job.objects.filter(
            pk__in=members, worker_ids__0=worker_id
        ).values_list("worker_ids", flat=True)
        outcomes.append((sum(len(c) == 1 for c in claims), len(claims)))
    pool.stop()
    print(
        f"\n{connection.vendor}: the killed process had recorded "
        + ", ".join(f"{done} of its {held}" for done, held in outcomes)
        + " members' ends"
    )
    assert any(done < held for done, held in outcomes)  # some were rescued


class RowLock(threading.Thread):
    """Holds a row lock on ``job_id`` (on its own connection) until
    ``release()``."""

    def __init__(self, job_id):
        super().__init__(daemon=True)
        self.job_id = job_id
        self.locked = threading.Event()
        self.released = threading.Event()

    def run(self):
        try:
            with transaction.atomic():
                Job.objects.select_for_update().get(pk=self.job_id)
                self.locked.set()
                self.released.wait(60)
        finally:
            connection.close()

    def release(self):
        self.released.set()
        self.join(30)


def blocked_on_a_row_lock() -> bool:
    """Whether another session waits, in a locking read, for a row lock
    (MariaDB/MySQL: has run one for a second or more)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%FOR UPDATE%%'"
            )
        else:
            cursor.execute(
                "SELECT 1 FROM information_schema.processlist WHERE db = DATABASE()"
                " AND id <> CONNECTION_ID() AND command = 'Query' AND time >= 1"
                " AND info LIKE '%%FOR UPDATE%%'"
            )
        return cursor.fetchone() is not None


@requires_server_database
@pytest.mark.parametrize("shape", ["chain", "chord"])
def test_a_worker_killed_inside_the_transaction_that_records_a_step(workers, shape):
    """The worker is SIGKILLed in the middle of the transaction that records
    the end of steps and releases the one after them: it has written the
    ends, and waits for the row lock this test holds on the next step. The
    ends are rolled back with the release; the steps are rescued, run
    again, and release the next step once, with their second results. Had
    the ends been committed apart from the release, the next step would
    wait for ever. (SQLite: one lock for the whole database, taken before
    the ends are written; no such moment to kill in.)"""
    step = tasks.claimed_step.step
    if shape == "chain":
        workflow = chain(step(label="first"), step(label="next")).enqueue()
    else:
        members = [step(n, label=f"m{n}") for n in range(4)]
        workflow = chord(members, step(label="next")).enqueue()
    ids = [int(member.id) for member in workflow.members]
    *before, after = ids
    lock = RowLock(after)
    lock.start()
    assert lock.locked.wait(10)
    consistency = Consistency(ids)
    pool = Pool(workers, "--concurrency", "4", "--poll-interval", "0.1")
    try:
        pool.start()
        wait_until(
            watching(consistency.check, blocked_on_a_row_lock),
            timeout=30,
            message="the worker blocked on the next step's row",
        )
        runs = Execution.objects.filter(job_id__in=before)
        assert runs.count() >= 1
        # Its ends are written but not committed: nothing reads them.
        ends = Job.objects.filter(pk__in=before, status=JobStatus.SUCCESSFUL)
        assert not ends.exists()
        [victim] = pool.alive
        pool.kill(victim)
    finally:
        lock.release()
    pool.watch = consistency.check
    pool.start()  # rescues the victim's steps and runs them again
    wait_until(
        watching(consistency.check, partial(ended, ids)),
        timeout=30,
        message="the workflow ended",
    )
    pool.stop()

    jobs = Job.objects.in_bulk(ids)
    check_results(jobs)
    cut = Execution.objects.filter(job_id__in=before, pid=victim, claim=1)
    assert cut.exists()
    for pk in cut.values_list("job_id", flat=True):
        assert len(jobs[pk].worker_ids) >= 2  # claimed again after the kill
    results = [jobs[pk].return_value for pk in before]
    handed = results[0] if shape == "chain" else results
    next_step = jobs[after]
    assert next_step.args == [handed]
    assert next_step.attempts == 1 and len(next_step.worker_ids) == 1
    assert Execution.objects.filter(job_id=after).count() == 1
    print(
        f"\n{connection.vendor} {shape}: killed inside the transaction that "
        f"recorded the end of a step; its {cut.count()} run(s) were lost and "
        f"run again, and released the next step once"
    )
