"""The worker under faults: nothing it meets leaves a job RUNNING."""

import contextlib
import signal
import threading
import time
from datetime import timedelta
from functools import partial

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_bgtasks.compat import TaskResultStatus, task_finished, task_started
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from django_bgtasks.notify import CHANNEL, STOP_CHANNEL
from django_bgtasks.worker import Worker, WorkerExit, WorkerOptions
from django_bgtasks.worker.clock import DatabaseClock
from django_bgtasks.worker.heartbeat import Heartbeat
from django_bgtasks.worker.hooks import RecordedHooks
from django_bgtasks.worker.listener import Listener
from django_bgtasks.worker.supervisor import Supervisor
from tests import tasks
from tests.conftest import (
    requires_postgresql,
    requires_server_database,
    run_in_process,
    wait_until,
)
from tests.factories import make_job
from tests.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)


def test_error_text_the_database_refuses_is_escaped():
    result = tasks.fails_with_odd_text.enqueue()
    run_in_process()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 2
    assert "nul \\x00 and \\udcff" in result.errors[0].traceback


def test_a_task_started_receiver_that_raises_fails_the_attempt():
    def broken_receiver(sender, task_result, **kwargs):
        raise RuntimeError("receiver broke")

    task_started.connect(broken_receiver)
    try:
        result = tasks.add.using(max_attempts=2).enqueue(1, 2)
        run_in_process()
    finally:
        task_started.disconnect(broken_receiver)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == [
        "builtins.RuntimeError"
    ] * 2


def test_a_task_finished_receiver_that_raises_harms_no_outcome(caplog):
    """task_finished is sent once the outcome is recorded: a receiver that
    raises is logged, and every job's outcome stays recorded, whichever
    batch of outcomes it shared with an atomic task's (whose own
    transaction wrote its outcome, reported before the batch's write)."""
    first = tasks.add.enqueue(0, 0)
    atomic = tasks.counts_once.enqueue(label="atomic")
    plain = [tasks.add.enqueue(n, 1) for n in range(3)]
    worker = Worker(concurrency=1, burst=True, poll_interval=0.05)
    sent = []

    def broken_receiver(sender, task_result, **kwargs):
        sent.append(task_result.id)
        if task_result.id == first.id:
            # Holds the completer until the other four have ended: their
            # outcomes then make its next batch, the atomic task's first.
            # (Not wait_until: its failure would end the completer's thread.)
            deadline = time.monotonic() + 30
            while worker.ledger.counts()["writing"] < 5:
                if time.monotonic() > deadline:
                    break  # the assertions below say what went wrong
                time.sleep(0.01)
        raise RuntimeError("receiver broke")

    task_finished.connect(broken_receiver)
    try:
        worker.run()
    finally:
        task_finished.disconnect(broken_receiver)
    everyone = [first, atomic, *plain]
    assert sorted(sent) == sorted(result.id for result in everyone)
    for result in everyone:
        result.refresh()
        assert (result.status, result.attempts) == (TaskResultStatus.SUCCESSFUL, 1)
    assert Effect.objects.filter(job_id=int(atomic.id)).count() == 1
    logged = [
        record
        for record in caplog.records
        if record.levelname == "ERROR" and "task_finished" in record.getMessage()
    ]
    assert len(logged) == 5
    assert all(record.exc_info[0] is RuntimeError for record in logged)


class BreaksAfterAClaim(RecordedHooks):
    """Stands in for a bug in the worker's main loop: its first claim of
    jobs raises, just after the claimed jobs have reached the ledger."""

    def claimed(self, count: int, *, urgent: bool) -> None:
        super().claimed(count, urgent=urgent)
        if count and not urgent and self["claims"] == 1:
            raise RuntimeError("a bug in the main loop")


def test_a_main_loop_that_fails_finishes_its_jobs_and_exits_failed(caplog):
    results = [tasks.add.enqueue(number, 1) for number in range(4)]
    hooks = BreaksAfterAClaim()
    worker = Worker(
        concurrency=1, prefetch=1, burst=True, poll_interval=0.05, hooks=hooks
    )

    assert worker.run() == WorkerExit.FAILED

    claimed = hooks["jobs_claimed"]
    assert claimed == 2  # one for the thread, one prefetched: both run
    statuses = []
    for result in results:
        result.refresh()
        statuses.append((result.status, result.attempts))
    assert (
        statuses
        == [(TaskResultStatus.SUCCESSFUL, 1)] * 2 + [(TaskResultStatus.READY, 0)] * 2
    )
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
    assert not WorkerProcess.objects.exists()
    [logged] = [
        record for record in caplog.records if "main loop failed" in record.getMessage()
    ]
    assert logged.levelname == "ERROR"
    assert logged.exc_info[0] is RuntimeError


@requires_postgresql
def test_a_listener_whose_callback_raises_keeps_its_connection(caplog):
    """An error in what the listener calls on a notification is the
    worker's, not the connection's: logged, and the listener hears on over
    the same connection."""
    heard = []

    def on_notify(priority):
        heard.append(priority)
        if len(heard) == 1:  # the call made once it listens
            raise RuntimeError("acting on the notice broke")

    listener = Listener(DEFAULT_DB_ALIAS, None, on_notify)
    listener.start()
    try:
        wait_until(lambda: heard, message="the listener listens")
        tasks.add.using(priority=7).enqueue(1, 2)
        wait_until(lambda: 7 in heard, message="the next notification heard")
    finally:
        listener.stop()
        listener.join(timeout=10)
    assert heard == [None, 7]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("ERROR", "Acting on a notification failed") in messages
    assert not [m for _, m in messages if "LISTEN connection lost" in m]


@requires_postgresql
def test_a_listener_warms_when_asked():
    """``on_warm`` runs on the listener's thread when another asks for it:
    the request ends its wait for notifications (here a minute long)."""
    heard, warmed = [], []
    listener = Listener(
        DEFAULT_DB_ALIAS,
        None,
        heard.append,
        on_warm=lambda: warmed.append(threading.current_thread()),
    )
    listener.WAIT_SECONDS = 60.0
    listener.start()
    try:
        wait_until(lambda: heard, message="the listener listens")
        listener.ask_to_warm()
        wait_until(lambda: warmed, timeout=10, message="the request acted on")
        assert warmed == [listener]
        tasks.add.using(priority=7).enqueue(1, 2)  # and it hears on
        wait_until(lambda: 7 in heard, timeout=10, message="a notification")
    finally:
        listener.stop()
        listener.join(timeout=10)


def test_only_a_listeners_own_notifications_keep_its_connection_open():
    """Another queue's jobs, or another worker's stop requests, call nothing
    back: they do not count as work that keeps the listener's connection
    open (``Listener.run`` closes it after 5 s without its own)."""
    heard, stops = [], []
    listener = Listener(
        DEFAULT_DB_ALIAS,
        ["mine"],
        heard.append,
        worker_id="w1",
        on_stop_request=stops.append,
    )
    assert not listener._pass_on([(CHANNEL, "theirs 5")])
    assert not listener._pass_on([(STOP_CHANNEL, "w2")])
    assert (heard, stops) == ([], [])
    assert listener._pass_on([(CHANNEL, "mine 5")])
    assert listener._pass_on([(STOP_CHANNEL, "w1")])
    assert (heard, stops) == ([5], ["w1"])


@override_settings(BGTASKS={"MAX_PAYLOAD_BYTES": 1000})
def test_a_return_value_over_the_limit_fails_without_retry():
    result = tasks.returns_text.enqueue(1200)
    run_in_process()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 1
    assert "Return values take" in result.errors[0].traceback


def test_deleting_a_running_workers_row_loses_nothing(tmp_path):
    gate = tmp_path / "gate"
    result = tasks.wait_for_file.enqueue(str(gate))
    worker = Worker(concurrency=1, burst=True, worker_id="deleted")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: Job.objects.running().exists(), message="a running job")
        WorkerProcess.objects.filter(pk="deleted").delete()
        assert Job.objects.running().get().worker_id == "deleted"  # kept
        # The heartbeat (every second in the tests) registers it again.
        wait_until(
            lambda: WorkerProcess.objects.filter(pk="deleted").exists(),
            message="the worker registered again",
        )
    finally:
        gate.touch()
        thread.join(timeout=30)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert not WorkerProcess.objects.exists()


@contextlib.contextmanager
def worker_holder():
    """A worker "holder" running on a thread of this process, registered;
    stopped at the end of the block."""
    worker = Worker(concurrency=1, worker_id="holder", poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: WorkerProcess.objects.exists(), message="the worker")
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)


def test_shutdown_puts_back_every_job_the_database_says_it_holds():
    """A stop can land between a claim and its dispatch: shutdown asks the
    database what the worker holds, not its own list."""
    with worker_holder():
        now = timezone.now()
        held = make_job(
            JobStatus.RUNNING,
            worker_id="holder",
            attempts=1,
            worker_ids=["holder"],
            started_at=now,
            last_attempted_at=now,
        )
    held.refresh_from_db()
    assert held.status == JobStatus.READY and held.worker_id is None
    assert held.errors[0]["exception_class_path"].endswith("JobInterrupted")


def test_a_job_running_for_a_worker_that_holds_it_nowhere_is_put_back(monkeypatch):
    """A row RUNNING for a live worker whose ledger knows nothing of it (a
    claim whose answer was lost after its commit; here written around the
    API). Once its claim is old enough (STRAY_AGE: 60 s by the database's
    clock), the worker puts it back after a heartbeat, and it runs; a
    younger one is left alone (a claim may still be on its way)."""
    from django_bgtasks.worker import runner

    monkeypatch.setattr(runner, "STRAY_CHECK_SECONDS", 0.0)  # at every beat
    with worker_holder():
        now = timezone.now()
        held = {
            "worker_id": "holder",
            "attempts": 1,
            "worker_ids": ["holder"],
            "started_at": now - timedelta(minutes=2),
        }
        stray = make_job(
            JobStatus.RUNNING, last_attempted_at=now - timedelta(minutes=2), **held
        )
        young = make_job(
            JobStatus.RUNNING, last_attempted_at=now - timedelta(seconds=5), **held
        )
        wait_until(
            lambda: Job.objects.filter(pk=stray.pk, status=JobStatus.SUCCESSFUL),
            timeout=30,
            message="the stray put back and run",
        )
        young.refresh_from_db()
        assert young.status == JobStatus.RUNNING
    stray.refresh_from_db()
    assert stray.attempts == 1  # the put back did not count
    assert stray.worker_ids == ["holder", "holder"]
    [error] = stray.errors
    assert error["exception_class_path"].endswith("JobInterrupted")
    assert "held it nowhere" in error["traceback"]


class FlakyProcess:
    """A stand-in worker row whose refresh fails in ways the database may."""

    def __init__(self):
        self.pk = "flaky"
        self.beats = 0

    def beat(self):
        self.beats += 1
        if self.beats == 1:
            raise RuntimeError("a read-only replica, say")
        return False  # the row is gone


@contextlib.contextmanager
def beating(process, **options):
    """A Heartbeat of ``process`` beating every 10 ms, stopped at the end."""
    heartbeat = Heartbeat(
        process=process,
        interval=0.01,
        using="default",
        clock=DatabaseClock(),
        **options,
    )
    heartbeat.start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()
        heartbeat.join(timeout=5)


def failing_once(function, error):
    """``function``, but its first call raises ``error``."""
    calls = []

    def once(*args, **kwargs):
        calls.append(None)
        if len(calls) == 1:
            raise error
        return function(*args, **kwargs)

    return once


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_an_error_of_the_worker_around_an_attempt_fails_the_attempt(
    monkeypatch, caplog, max_attempts
):
    """The worker itself fails before it knows what the attempt made of the
    job (here: its transition raises, as a bug would). The attempt fails
    with a WorkerError caused by that error, and the job is retried as it
    allows; it is not left RUNNING, held by a worker that no longer runs
    it, until the worker stops."""
    from django_bgtasks.worker import pool

    bug = RuntimeError("a bug")
    monkeypatch.setattr(pool, "transition", failing_once(pool.transition, bug))
    result = tasks.add.using(max_attempts=max_attempts).enqueue(1, 2)
    Worker(concurrency=1, burst=True, maintenance=False, scheduler=False).run()
    job = Job.objects.get(pk=result.id)
    [error, *_] = job.errors
    assert error["exception_class_path"] == "django_bgtasks.exceptions.WorkerError"
    assert "RuntimeError: a bug" in error["traceback"]
    if max_attempts == 1:
        assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
    else:
        assert (job.status, job.attempts) == (JobStatus.SUCCESSFUL, 2)
        assert job.return_value == 3
    assert "unexpected error in the worker" in caplog.text


def test_an_error_tidying_connections_after_a_task_keeps_its_outcome(
    monkeypatch, caplog
):
    """After the task, tidying the thread's connections raises what no
    backend should (not a DatabaseError): the outcome is known and stands;
    the thread closes its connections and goes on."""
    from django_bgtasks.worker import pool

    error = RuntimeError("a backend's own error")
    tidy = failing_once(pool.tidy_connections, error)
    monkeypatch.setattr(pool, "tidy_connections", tidy)
    first, second = (tasks.add.enqueue(1, n) for n in (2, 3))
    Worker(concurrency=1, burst=True, maintenance=False, scheduler=False).run()
    for result, value in ((first, 3), (second, 4)):
        job = Job.objects.get(pk=result.id)
        assert (job.status, job.attempts, job.errors) == (JobStatus.SUCCESSFUL, 1, [])
        assert job.return_value == value
    assert "tidying its thread's connections failed" in caplog.text


def test_closing_idle_connections_survives_any_error(monkeypatch, caplog):
    """A job thread, the completer and a supervised child's message thread
    close their connections when idle: an error of a database backend's
    ``close`` other than a DatabaseError is logged, never raised (it would
    end the thread: the completer's, and no outcome would be recorded)."""
    from django_bgtasks.db import close_idle_connections

    connection.ensure_connection()

    def close():
        raise RuntimeError("a backend's own error")

    monkeypatch.setattr(connection, "close", close)
    close_idle_connections()
    assert "Closing the idle connection 'default' failed" in caplog.text
    assert "a backend's own error" in caplog.text
    monkeypatch.undo()
    assert Job.objects.count() == 0  # the connection goes on


def test_a_thread_tidies_its_connections_once_it_has_opened_one(monkeypatch):
    """After a success, a thread tidies its connections only once it has
    opened one (``connection_created``); closing them when idle resets
    that, and opening one again, or one that would not close, sets it.
    After an attempt that did not succeed, every connection is tidied: one
    whose setup failed before the signal was sent is replaced too."""
    from django.db.backends.signals import connection_created

    from django_bgtasks import db
    from django_bgtasks.db import close_idle_connections, tidy_connections

    found = []

    def tidied(**how) -> bool:
        """Whether tidying closes this thread's connection, marked as one a
        query failed on."""
        connection.errors_occurred = True
        tidy_connections(**how)
        return connection.connection is None

    def on_a_thread():
        try:
            connection.ensure_connection()
            close_idle_connections()
            found.append(connection.connection is None)  # closed when idle
            connection.ensure_connection()  # opened again
            found.append(tidied(succeeded=True))

            connection.ensure_connection()
            with monkeypatch.context() as patched:
                patched.setattr(connection, "close", lambda: 1 / 0)
                close_idle_connections()  # it would not close
            found.append(connection.connection is not None)
            found.append(tidied(succeeded=True))

            close_idle_connections()
            # Opened unseen (as when its setup fails before the signal).
            uid = "django_bgtasks.db.opened"
            connection_created.disconnect(dispatch_uid=uid)
            try:
                connection.ensure_connection()
            finally:
                connection_created.connect(db._note_opened, dispatch_uid=uid)
            found.append(not tidied(succeeded=True))  # not seen after a success
            found.append(tidied())  # after a failure: replaced
        finally:
            connection.close()

    thread = threading.Thread(target=on_a_thread)
    thread.start()
    thread.join(timeout=30)
    assert found == [True] * 6


def test_heartbeat_survives_any_error():
    process = FlakyProcess()
    lost = []

    def on_lost():
        lost.append(1)
        raise RuntimeError("cannot register again")

    with beating(process, on_lost=on_lost) as heartbeat:
        wait_until(lambda: process.beats >= 5, message="beats after the errors")
        assert heartbeat.is_alive()
        assert lost


def test_an_error_after_a_beat_is_not_the_beats(caplog):
    """What the worker does after each beat (reading stop requests) may
    fail; the beat went through all the same, so the worker stays steady
    (it may judge other workers dead)."""
    row = WorkerProcess.objects.register(
        worker_id="after-beat", hostname="here", pid=1, queues=None,
        concurrency=1, version="test",
    )  # fmt: skip
    calls = []

    def after_beat():
        calls.append(1)
        raise RuntimeError("reading stop requests broke")

    with beating(row, on_lost=lambda: None, after_beat=after_beat) as heartbeat:
        wait_until(lambda: len(calls) >= 3, message="three beats")
        assert heartbeat.steadiness.since is not None
    logged = [r for r in caplog.records if "after a heartbeat" in r.getMessage()]
    assert len(logged) >= 3
    assert not [r for r in caplog.records if "Heartbeat failed" in r.getMessage()]


def test_a_supervisor_whose_child_cannot_start_tries_again_later(caplog):
    """A child process that cannot be started (no such program here; out
    of processes or memory elsewhere) is a crash of that child: logged,
    and tried again after the crash pause. The supervisor runs on, and
    stops when asked."""
    supervisor = Supervisor(
        WorkerOptions(processes=1, scheduler=False, maintenance=False),
        program=["/nonexistent/bgtasks-worker"],
    )

    def failed_starts():
        return [r for r in caplog.records if "could not be started" in r.getMessage()]

    def stop_once_logged():
        # Stops the supervisor whatever happens (or it would run on).
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and not failed_starts():
                time.sleep(0.01)
        finally:
            supervisor.stop_requests.from_supervisor(1, "the test")

    stopper = threading.Thread(target=stop_once_logged)
    stopper.start()
    try:
        assert supervisor.run() == WorkerExit.STOPPED
    finally:
        stopper.join(timeout=60)
    logged = failed_starts()[0]  # more, if the stop came after the pause
    assert logged.levelname == "ERROR"
    assert logged.getMessage().startswith("Worker process 1 could not be started (")
    assert logged.getMessage().endswith("; restarting it in 1 s")


@pytest.mark.slow
def test_burst_workers_do_not_exit_while_jobs_are_due(workers):
    with transaction.atomic():
        for number in range(300):
            tasks.record.enqueue(label=str(number))
    processes = [workers.start("--burst", "--concurrency", "2") for _ in range(3)]
    for process in processes:
        assert workers.wait(process, timeout=120) == 0, workers.output(process)
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 300


@requires_server_database
def test_a_burst_worker_returns_past_a_due_job_another_transaction_holds(workers):
    """A READY row locked by an open transaction (an operator's, say) is not
    work the burst worker can do: it drains the rest and returns."""
    held = tasks.add.enqueue(1, 1)
    free = tasks.add.enqueue(2, 2)
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=held.id)  # held until the end
        code, output = workers.run("--burst", timeout=30)
        assert code == 0, output
        assert Job.objects.get(pk=free.id).status == JobStatus.SUCCESSFUL
    assert Job.objects.get(pk=held.id).status == JobStatus.READY


@requires_server_database
def test_a_burst_worker_waits_for_a_due_job_held_for_a_moment():
    """A due job another transaction holds only for a moment (another
    worker's claim under way, pruning's neighbour lock on MariaDB) is run:
    the burst does not end without it."""
    job = tasks.add.enqueue(1, 1)
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                Job.objects.select_for_update().get(pk=job.id)
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    hooks = RecordedHooks()
    worker = Worker(concurrency=1, burst=True, poll_interval=0.05, hooks=hooks)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        # It found the job only locked, and polls instead of ending.
        hooks.wait_for("idle_polls", 1, timeout=10)
    finally:
        release.set()
        holder.join(10)
        thread.join(30)
    assert not thread.is_alive()
    assert Job.objects.get(pk=job.id).status == JobStatus.SUCCESSFUL


def idle_in_its_loop(workers, process) -> bool:
    return "No job is due: waiting for one" in workers.output(process)


@pytest.mark.slow
@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="signal handling: one database is enough"
)
def test_sigterm_always_stops_a_busy_worker(workers):
    """The signal handler touches no lock the main thread may hold: a worker
    polling all the time stops on SIGTERM every time."""
    for _ in range(5):
        process = workers.start("--poll-interval", "0.001", "-v", "2")
        # The signal lands mid-loop, not at start-up: once the worker has
        # found nothing to claim (logged at DEBUG) and polls again.
        wait_until(
            partial(idle_in_its_loop, workers, process),
            timeout=30,
            message="the worker in its loop",
        )
        process.send_signal(signal.SIGTERM)
        assert workers.wait(process, timeout=20) == 0, workers.output(process)
        assert not WorkerProcess.objects.exists()
