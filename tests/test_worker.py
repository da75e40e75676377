"""The worker, run in this process: results, order, retries, bad jobs."""

import contextlib
import os
import sys
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_bgtasks import notify
from django_bgtasks.compat import TaskResultStatus, task_finished, task_started
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from django_bgtasks.worker import Worker, runner
from django_bgtasks.worker.completer import Completer
from django_bgtasks.worker.hooks import RecordedHooks
from django_bgtasks.worker.listener import Listener
from tests import tasks
from tests.conftest import ROOT, run_in_process, wait_until
from tests.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_runs_a_job_and_stores_the_result():
    result = tasks.add.enqueue(2, 3)
    worker = run_in_process()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.worker_ids == [worker.worker_id]
    assert result.attempts == 1
    assert result.errors == []
    assert (
        result.enqueued_at
        <= result.started_at
        <= result.last_attempted_at
        <= result.finished_at
    )
    job = Job.objects.get(pk=result.id)
    assert job.worker is None and job.attempts == 1
    assert not WorkerProcess.objects.exists()  # unregistered on exit


def test_async_task():
    result = tasks.async_add.enqueue(20, 22)
    run_in_process()
    result.refresh()
    assert result.return_value == 42


def test_context_reports_the_attempt_and_worker():
    result = tasks.record.enqueue(label="ctx")
    worker = run_in_process()
    execution = Execution.objects.get()
    assert (execution.job_id, execution.claim) == (int(result.id), 1)
    assert execution.worker_id == worker.worker_id


def test_jobs_run_in_priority_then_run_after_then_id_order():
    now = timezone.now()
    earlier = now - timedelta(minutes=5)
    tasks.record.using(priority=0).enqueue(label="p0-first")
    tasks.record.using(priority=10).enqueue(label="p10")
    tasks.record.using(priority=0, run_after=earlier).enqueue(label="p0-earlier")
    tasks.record.using(priority=-5).enqueue(label="p-5")
    tasks.record.using(priority=100).enqueue(label="p100")
    tasks.record.using(priority=0).enqueue(label="p0-second")

    run_in_process(concurrency=1)

    labels = list(Execution.objects.order_by("id").values_list("label", flat=True))
    assert labels == ["p100", "p10", "p0-earlier", "p0-first", "p0-second", "p-5"]


def test_queues_limit_what_a_worker_takes():
    default = tasks.add.enqueue(1, 1)
    other = tasks.in_other_queue.enqueue()
    run_in_process(queues=["other"])
    default.refresh()
    other.refresh()
    assert other.status == TaskResultStatus.SUCCESSFUL
    assert default.status == TaskResultStatus.READY


def test_run_after_is_respected():
    later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    now = tasks.add.enqueue(2, 2)

    run_in_process()  # burst: only what is due
    later.refresh()
    now.refresh()
    assert now.status == TaskResultStatus.SUCCESSFUL
    assert later.status == TaskResultStatus.READY

    # Due in a moment: a worker waits for it, and does not start it early.
    run_after = timezone.now() + timedelta(seconds=0.3)
    Job.objects.filter(pk=later.id).update(run_after=run_after)
    run_in_process(burst=False, max_jobs=1, poll_interval=0.05)
    later.refresh()
    assert later.status == TaskResultStatus.SUCCESSFUL
    assert later.started_at >= run_after


def test_failed_attempts_are_retried_then_the_job_fails_with_every_error():
    result = tasks.always_fails.enqueue("kaboom")
    run_in_process()

    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3 and len(result.worker_ids) == 3
    assert len(result.errors) == 3
    for error in result.errors:
        assert error.exception_class_path == "builtins.ValueError"
        assert error.exception_class is ValueError
        assert "ValueError: kaboom" in error.traceback
        assert "in always_fails\n    raise ValueError(message)" in error.traceback
    job = Job.objects.get(pk=result.id)
    assert [error["attempt"] for error in job.errors] == [1, 2, 3]
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


def test_a_retry_can_succeed():
    result = tasks.fails_until_attempt.enqueue(3)
    run_in_process()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3
    assert len(result.errors) == 2


def test_retry_waits_for_the_backoff():
    before = timezone.now()
    result = tasks.fails_with_slow_backoff.enqueue()
    run_in_process()

    job = Job.objects.get(pk=result.id)
    assert job.status == JobStatus.READY and job.attempts == 1
    assert len(job.errors) == 1
    # backoff: 60 s after the first attempt, no jitter
    assert before + timedelta(seconds=60) <= job.run_after
    assert job.run_after <= timezone.now() + timedelta(seconds=60)


def test_non_json_return_value_fails_without_retry():
    result = tasks.returns_object.enqueue()
    run_in_process()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 1
    assert result.errors[0].exception_class_path == (
        "django_bgtasks.exceptions.InvalidReturnValue"
    )
    assert "return value: Unsupported type" in result.errors[0].traceback


def test_sys_exit_in_a_task_fails_the_job_not_the_worker():
    exiting = tasks.calls_exit.enqueue()
    after = tasks.add.enqueue(1, 2)
    run_in_process()

    exiting.refresh()
    after.refresh()
    assert exiting.status == TaskResultStatus.FAILED
    assert exiting.errors[0].exception_class_path == (
        "django_bgtasks.exceptions.TaskExited"
    )
    assert "sys.exit(3)" in exiting.errors[0].traceback
    assert after.return_value == 3


@pytest.mark.parametrize(
    ("task_path", "message"),
    [
        ("os.system", "'os.system' is not a registered task"),
        ("antigravity.fly", "'antigravity.fly' is not a registered task"),
        ("tests.tasks.plain_function", "'tests.tasks.plain_function' is not a"),
        ("tests.no_such_module.run", "'tests.no_such_module.run' is not a"),
        ("tests.import_side_effect.run", "'tests.import_side_effect.run' is not a"),
        ("django_bgtasks.management.commands.runworker.Command", "is not a"),
        ("nodots", "'nodots' is not a registered task"),
    ],
)
def test_only_registered_tasks_run(task_path, message):
    (ROOT / "test-artifacts" / "imported").unlink(missing_ok=True)
    now = timezone.now()
    bad = Job.objects.create(
        task_path=task_path,
        args=["echo hacked"],
        run_after=now,
        enqueued_at=now,
        max_attempts=3,
    )
    good = tasks.add.enqueue(1, 1)
    run_in_process()

    bad.refresh_from_db()
    assert bad.status == JobStatus.FAILED
    assert bad.attempts == 1  # not retried: a retry cannot register the task
    assert bad.errors[0]["exception_class_path"] == (
        "django_bgtasks.exceptions.TaskNotRegistered"
    )
    assert message in bad.errors[0]["traceback"]
    # Never imported from a row: importing runs a module's code.
    assert "antigravity" not in sys.modules
    assert "tests.import_side_effect" not in sys.modules
    assert not (ROOT / "test-artifacts" / "imported").exists()
    good.refresh()
    assert good.status == TaskResultStatus.SUCCESSFUL


def test_corrupt_stored_arguments_fail_the_job():
    now = timezone.now()
    job = Job.objects.create(
        task_path="tests.tasks.add",
        args={"not": "a list"},
        run_after=now,
        enqueued_at=now,
    )
    run_in_process()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "stored arguments are corrupt" in job.errors[0]["traceback"]


def test_framework_signals_are_sent():
    seen = []
    results = {}

    def on_started(sender, task_result, **kwargs):
        seen.append(("started", task_result.id, task_result.status))
        results["started", task_result.id] = task_result

    def on_finished(sender, task_result, **kwargs):
        seen.append(("finished", task_result.id, task_result.status))
        results["finished", task_result.id] = task_result

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        ok = tasks.add.enqueue(1, 1)
        bad = tasks.returns_object.enqueue()
        run_in_process()
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
    assert ("started", ok.id, TaskResultStatus.RUNNING) in seen
    assert ("finished", ok.id, TaskResultStatus.SUCCESSFUL) in seen
    assert ("finished", bad.id, TaskResultStatus.FAILED) in seen
    # One result per attempt, brought up to date for task_finished, as the
    # framework's own backends do.
    finished = results["finished", ok.id]
    assert finished is results["started", ok.id]
    assert finished.return_value == 2
    assert finished.finished_at is not None
    failed = results["finished", bad.id]
    assert failed is results["started", bad.id]
    assert failed.finished_at is not None
    assert failed.errors[-1].exception_class_path.endswith(".InvalidReturnValue")


def test_task_finished_for_a_failure_is_sent_while_its_error_is_handled():
    # Receivers such as error monitoring read the task's exception from
    # sys.exc_info(), as with the framework's own backends.
    handled = {}

    def on_finished(sender, task_result, **kwargs):
        handled[task_result.id] = sys.exc_info()[1]

    task_finished.connect(on_finished)
    try:
        ok = tasks.add.enqueue(1, 1)
        bad = tasks.always_fails.using(max_attempts=1).enqueue("boom")
        run_in_process()
    finally:
        task_finished.disconnect(on_finished)
    assert handled[ok.id] is None
    assert isinstance(handled[bad.id], ValueError)
    assert str(handled[bad.id]) == "boom"


def test_async_signal_receivers_are_called_for_each_job():
    seen = []

    async def on_started(sender, task_result, **kwargs):
        seen.append(("started", task_result.id))

    async def on_finished(sender, task_result, **kwargs):
        seen.append(("finished", task_result.id, task_result.status))

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        results = tasks.add.enqueue_many([((n, 1), {}) for n in range(3)])
        run_in_process()
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
    for result in results:
        assert ("started", result.id) in seen
        assert ("finished", result.id, TaskResultStatus.SUCCESSFUL) in seen


def test_concurrency_runs_jobs_at_once(tmp_path):
    """Two blocking jobs both start on a worker with two threads."""
    gate = tmp_path / "gate"
    first = tasks.wait_for_file.enqueue(str(gate))
    second = tasks.wait_for_file.enqueue(str(gate))
    worker = Worker(concurrency=2, burst=True, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(
            lambda: Job.objects.running().count() == 2, message="both jobs running"
        )
    finally:
        gate.touch()
        thread.join(timeout=30)
    assert not thread.is_alive()
    for result in (first, second):
        result.refresh()
        assert result.return_value == "released"


def test_max_jobs_stops_the_worker():
    for _ in range(5):
        tasks.add.enqueue(1, 1)
    worker = run_in_process(burst=False, max_jobs=3, concurrency=2)
    assert worker.jobs_claimed == 3
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 3
    assert Job.objects.ready().count() == 2


def test_wait_returns_once_a_worker_finishes_the_job():
    result = tasks.add.enqueue(40, 2)
    worker = Worker(concurrency=1, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert result.wait(timeout=20) is result
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42


def test_heartbeat_refreshes_the_worker_row(tmp_path):
    gate = tmp_path / "gate"
    tasks.wait_for_file.enqueue(str(gate))
    worker = Worker(concurrency=1, burst=True, worker_id="beating")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        row = wait_until(
            lambda: WorkerProcess.objects.filter(pk="beating").first(),
            message="the worker row",
        )
        assert row.is_alive()
        wait_until(
            lambda: (
                WorkerProcess.objects.get(pk="beating").last_heartbeat_at
                > row.last_heartbeat_at
            ),
            timeout=5,  # HEARTBEAT_INTERVAL is 1 s in the test settings
            message="a heartbeat",
        )
        running = Job.objects.running().get()
        assert running.worker_id == "beating"
    finally:
        gate.touch()
        thread.join(timeout=30)
    assert not WorkerProcess.objects.exists()


def test_an_urgent_job_enqueued_during_a_backlog_overtakes_the_prefetched():
    """With NOTIFY, a worker busy with a backlog claims a new job as soon as
    a slot frees, not when half its slots have: an urgent job joins the
    prefetched ones and starts next."""
    if not notify.notify_enabled(connection):
        pytest.skip("needs NOTIFY (PostgreSQL)")
    backlog = [int(tasks.sleep_for.enqueue(0.05).id) for _ in range(60)]
    # One thread and twenty prefetched: without the wake-up, the next claim
    # waits for ten free slots.
    worker = Worker(concurrency=1, prefetch=20, burst=True, poll_interval=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(
            lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() >= 3,
            message="the backlog under way",
        )
        urgent = tasks.sleep_for.using(priority=100).enqueue(0)
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    urgent_job = Job.objects.get(pk=int(urgent.id))
    assert urgent_job.status == JobStatus.SUCCESSFUL
    finished_meanwhile = Job.objects.filter(
        pk__in=backlog,
        finished_at__gt=urgent_job.enqueued_at,
        finished_at__lt=urgent_job.finished_at,
    ).count()
    assert finished_meanwhile <= 3, finished_meanwhile


def test_an_idle_worker_gives_freed_memory_back_after_a_burst(monkeypatch):
    release_free_memory = runner.release_free_memory
    trims = []
    monkeypatch.setattr(runner, "release_free_memory", lambda: trims.append(1))
    monkeypatch.setattr(runner, "TRIM_AFTER_JOBS", 30)
    tasks.echo.enqueue_many(((number,), {}) for number in range(40))
    hooks = RecordedHooks()
    worker = Worker(concurrency=2, poll_interval=0.1, hooks=hooks)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: trims, message="memory to be given back")
        # Three idle polls more: nothing new to give back, no trim.
        hooks.wait_for("idle_polls", hooks["idle_polls"] + 3)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not Job.objects.exclude(status=JobStatus.SUCCESSFUL).exists()
    assert trims == [1]  # once for the burst, not again while idle
    release_free_memory()  # the real one works on this platform


def test_notifications_carry_the_queue_and_the_priority():
    assert notify.parse(notify.payload("default", -5)) == ("default", -5)
    assert notify.parse(notify.payload("a b", 7)) == ("a b", 7)
    assert notify.parse(notify.payload("default")) == ("default", None)
    assert notify.parse("from an older version") == ("from an older version", None)


def test_claims_wait_while_outcomes_wait_for_the_database(monkeypatch):
    """When outcomes are written slower than jobs run, the worker stops
    claiming once a batch of them waits, instead of holding ever more
    finished jobs in memory (and un-recorded)."""
    monkeypatch.setattr(Completer, "MAX_BATCH", 3)
    released = threading.Event()

    def stall_the_completer(sender, task_result, **kwargs):
        released.wait(30)  # runs on the completer's thread, after the commit

    for number in range(20):
        tasks.add.enqueue(number, 0)
    task_finished.connect(stall_the_completer)
    hooks = RecordedHooks()
    worker = Worker(
        concurrency=1, prefetch=5, burst=True, poll_interval=0.05, hooks=hooks
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(
            lambda: (
                (counts := worker.ledger.counts())["writing"] >= 3
                and not counts["waiting"] + counts["running"] + counts["reserved"]
            ),
            message="a batch waiting, the jobs held run, no claim under way",
        )
        # A round of the main loop, for its last claim's count (reported
        # just after the ledger has its jobs); then five more: it claims
        # nothing.
        hooks.wait_for("loop_waits", hooks["loop_waits"] + 1)
        claims = hooks["claims"]
        hooks.wait_for("loop_waits", hooks["loop_waits"] + 5)
        assert hooks["claims"] == claims
        # The stalled batch of one, a full batch waiting, and what the
        # thread and prefetch held when the batch filled.
        assert Job.objects.exclude(status=JobStatus.READY).count() <= 1 + 3 + 6
        assert Job.objects.ready().exists()
    finally:
        released.set()
        thread.join(timeout=30)
        task_finished.disconnect(stall_the_completer)
    assert not thread.is_alive()
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 20


def test_a_backlog_is_claimed_while_jobs_run_when_outcomes_limit_claims(monkeypatch):
    """With more threads and prefetch than a batch of outcomes, a worker
    working through a backlog still claims while its jobs run (it waits for
    part of a batch's worth of free slots, not for more than it may ever
    claim)."""
    monkeypatch.setattr(Completer, "MAX_BATCH", 8)
    running_at_claims = []

    class Watch(RecordedHooks):
        def claimed(self, count, *, urgent):
            running_at_claims.append(worker.ledger.counts()["running"])
            super().claimed(count, urgent=urgent)

    tasks.sleep_for.enqueue_many(((0.02,), {}) for _ in range(60))
    worker = Worker(
        concurrency=4, prefetch=16, burst=True, poll_interval=0.05, hooks=Watch()
    )
    worker.run()
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 60
    assert any(running for running in running_at_claims[1:]), running_at_claims


@pytest.mark.parametrize("max_age", [0, 60, None])
def test_a_job_thread_keeps_its_connection_whatever_conn_max_age_says(max_age):
    """A worker is not a request: its threads keep their database
    connections from job to job (Django's default CONN_MAX_AGE = 0 would
    close them after each), and replace one a task left unusable."""
    hooks = RecordedHooks()
    worker = Worker(concurrency=1, poll_interval=0.05, hooks=hooks)

    def run(**options):
        """A job run on the worker's one thread, after the ones before."""
        written = hooks["jobs_written"]
        task = tasks.connection_identity.using(max_attempts=1)
        result = task.enqueue(**options)
        hooks.wait_for("jobs_written", written + 1)
        result.refresh()
        return result

    with override_database_setting("CONN_MAX_AGE", max_age):
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            kept = [run() for _ in range(3)]
            broken = run(break_it=True)
            after = run()
        finally:
            worker.stop()
            thread.join(timeout=30)
    identities = {result.return_value for result in kept}
    assert len(identities) == 1, identities  # one session for the three
    assert broken.status == TaskResultStatus.FAILED
    assert after.status == TaskResultStatus.SUCCESSFUL
    assert after.return_value not in identities  # a fresh one


@contextlib.contextmanager
def override_database_setting(name, value):
    """``DATABASES["default"][name] = value`` for the worker's threads (each
    makes its connection from these settings)."""
    settings_dict = connection.settings_dict
    saved = settings_dict[name]
    settings_dict[name] = value
    try:
        yield
    finally:
        settings_dict[name] = saved


def test_the_thread_that_hears_wake_ups_is_asked_to_ready_the_claims_connection():
    """The main loop asks the thread that hears the worker's wake-ups (a
    standalone worker's listener, a supervised child's reader of its
    supervisor's lines) to ready the urgent claims' connection, where
    wake-ups come (PostgreSQL); elsewhere nothing is asked."""
    listens = notify.notify_enabled(connection)
    worker = Worker(concurrency=1, burst=True, poll_interval=0.05)
    worker.run()
    asked = worker.claimer.ask_listener_to_warm
    assert (asked is not None) == listens
    if listens:
        assert isinstance(asked.__self__, Listener)

    read_end, write_end = os.pipe()
    child = Worker(concurrency=1)
    child.hear_supervisor(read_end)
    reader = next(t for t in threading.enumerate() if t.name == "bgtasks-supervisor")
    try:
        asked = child.claimer.ask_listener_to_warm
        assert (asked is not None) == listens
        if listens:
            assert asked.__self__ is reader
    finally:
        os.close(write_end)  # the supervisor is gone: the reader ends
        reader.join(10)
        os.close(read_end)
    assert not reader.is_alive()
