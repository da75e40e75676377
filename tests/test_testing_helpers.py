"""django_bgtasks.testing's helpers for a project's tests: run_jobs runs due
jobs in the test's thread and transaction as a worker would; enqueued and
the assertions say what was enqueued; the TestCase mixin and the pytest
fixture give the same."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import TestCase
from django.utils import timezone

from django_bgtasks import chain, testing
from django_bgtasks import task as bg_task
from django_bgtasks.compat import TaskResultStatus, task_finished, task_started
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.pytest_plugin import bgtasks  # noqa: F401
from django_bgtasks.testing import (
    TEST_WORKER_ID,
    BackgroundJobsTestMixin,
    assert_enqueued,
    assert_not_enqueued,
    enqueued,
    run_jobs,
)

from .models import Execution
from .tasks import (
    add,
    always_fails,
    async_add,
    echo,
    fails_until_attempt,
    fails_with_slow_backoff,
    in_other_queue,
    record,
)

SUCCESSFUL, FAILED, READY = (
    TaskResultStatus.SUCCESSFUL,
    TaskResultStatus.FAILED,
    TaskResultStatus.READY,
)


@bg_task
def enqueues_add(a, b):
    """Enqueue ``add(a, b)``; return its job's id."""
    return add.enqueue(a, b).id


@bg_task
def enqueues_itself():
    enqueues_itself.enqueue()
    return "again"


@bg_task(max_attempts=1)
def breaks_the_transaction():
    """A failing query (on PostgreSQL, the transaction is aborted after it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table_here")


def running_jobs() -> list[Job]:
    return list(Job.objects.filter(status=JobStatus.RUNNING))


# run_jobs ------------------------------------------------------------------


@pytest.mark.django_db
def test_runs_due_jobs_best_first_and_returns_their_results():
    now = timezone.now()
    add.enqueue(1, 0)  # priority 0, due now
    add.using(priority=10).enqueue(2, 0)
    add.using(priority=-5).enqueue(3, 0)
    # Same priority as the first, enqueued after it but due before it.
    add.using(run_after=now - timedelta(hours=1)).enqueue(4, 0)
    in_other_queue.enqueue()  # priority 5, queue "other"

    results = run_jobs()

    assert [r.return_value for r in results] == [2, "other", 4, 1, 3]
    assert {r.status for r in results} == {SUCCESSFUL}
    assert [r.attempts for r in results] == [1] * 5
    assert {tuple(r.worker_ids) for r in results} == {(TEST_WORKER_ID,)}
    assert results[0].task.module_path == "tests.tasks.add"
    assert results[0].args == [2, 0]
    assert list(Job.objects.values_list("status", flat=True).distinct()) == [
        JobStatus.SUCCESSFUL
    ]
    assert run_jobs() == []  # nothing left
    assert running_jobs() == []


@pytest.mark.django_db
def test_results_read_like_the_backends_own():
    result = add.enqueue(20, 22)
    [ran] = run_jobs()
    assert ran.id == result.id
    result.refresh()
    assert (result.status, result.return_value) == (SUCCESSFUL, 42)
    assert result.worker_ids == [TEST_WORKER_ID]
    assert result.finished_at == ran.finished_at is not None
    assert result.started_at == ran.started_at is not None


@pytest.mark.django_db
def test_only_the_given_queues():
    add.enqueue(1, 1)
    in_other_queue.enqueue()
    [other] = run_jobs(queues=["other"])
    assert other.return_value == "other"
    assert_enqueued(add, args=[1, 1])
    [default] = run_jobs(queues="default")
    assert default.return_value == 2


@pytest.mark.django_db
def test_a_delayed_job_runs_once_now_passes_its_run_after():
    result = add.using(run_after=timedelta(minutes=5)).enqueue(2, 3)
    due_at = Job.objects.get(pk=result.id).run_after

    assert run_jobs() == []
    assert run_jobs(now=due_at - timedelta(microseconds=1)) == []
    assert_enqueued(add, args=[2, 3])

    [ran] = run_jobs(now=due_at)
    assert (ran.status, ran.return_value) == (SUCCESSFUL, 5)
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == (JobStatus.SUCCESSFUL, 1)
    # The clock dates the attempt too.
    assert job.started_at == job.last_attempted_at == job.finished_at == due_at


@pytest.mark.django_db
def test_now_may_be_a_function():
    add.using(run_after=timedelta(hours=1)).enqueue(1, 1)
    calls = []

    def clock():
        calls.append(None)
        return timezone.now() + timedelta(hours=2)

    [ran] = run_jobs(now=clock)
    assert ran.return_value == 2
    assert calls  # asked for the time


@pytest.mark.django_db
def test_now_must_be_an_aware_datetime():
    with pytest.raises(ValueError, match="aware"):
        run_jobs(now=timezone.now().replace(tzinfo=None))
    with pytest.raises(TypeError, match="datetime"):
        run_jobs(now="now")


@pytest.mark.django_db
def test_a_failing_task_is_retried_until_max_attempts_then_fails():
    result = always_fails.enqueue("bad input")

    results = run_jobs()  # the tests' BACKOFF is zero: every retry is due now

    assert [r.status for r in results] == [READY, READY, FAILED]
    assert [r.attempts for r in results] == [1, 2, 3]
    assert [len(r.errors) for r in results] == [1, 2, 3]
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts, job.max_attempts) == (JobStatus.FAILED, 3, 3)
    assert [e["attempt"] for e in job.errors] == [1, 2, 3]
    assert {e["worker_id"] for e in job.errors} == {TEST_WORKER_ID}
    result.refresh()
    paths = [error.exception_class_path for error in result.errors]
    assert paths == ["builtins.ValueError"] * 3
    assert "ValueError: bad input" in result.errors[-1].traceback
    assert running_jobs() == []


@pytest.mark.django_db
def test_a_task_that_succeeds_on_a_retry_returns_its_value():
    fails_until_attempt.enqueue(3)
    results = run_jobs()
    assert [r.status for r in results] == [READY, READY, SUCCESSFUL]
    assert results[-1].return_value == 3
    assert "attempt 2 fails" in results[-1].errors[-1].traceback


@pytest.mark.django_db
def test_a_retry_with_backoff_runs_only_when_now_has_passed_it():
    result = fails_with_slow_backoff.enqueue()
    start = timezone.now()

    [first] = run_jobs(now=start)
    assert (first.status, first.attempts) == (READY, 1)
    job = Job.objects.get(pk=result.id)
    assert job.run_after == start + timedelta(seconds=60)

    assert run_jobs() == []
    assert run_jobs(now=start + timedelta(seconds=59)) == []
    [second] = run_jobs(now=start + timedelta(seconds=60))
    assert (second.status, second.attempts, len(second.errors)) == (FAILED, 2, 2)
    job.refresh_from_db()
    assert job.finished_at == start + timedelta(seconds=60)


@pytest.mark.django_db
def test_a_job_a_task_enqueues_runs_in_the_same_call():
    enqueues_add.enqueue(5, 6)
    first, second = run_jobs()
    assert first.task.module_path == "tests.test_testing_helpers.enqueues_add"
    assert second.id == first.return_value
    assert (second.status, second.return_value) == (SUCCESSFUL, 11)
    assert running_jobs() == []


@pytest.mark.django_db
def test_a_job_enqueued_between_calls_runs_in_the_next():
    add.enqueue(1, 2)
    assert [r.return_value for r in run_jobs()] == [3]
    add.enqueue(3, 4)
    assert [r.return_value for r in run_jobs()] == [7]
    assert run_jobs() == []


@pytest.mark.django_db
def test_limit_runs_that_many_attempts():
    for n in range(4):
        add.enqueue(n, 0)
    assert [r.return_value for r in run_jobs(limit=3)] == [0, 1, 2]
    assert [r.return_value for r in run_jobs(limit=3)] == [3]


@pytest.mark.django_db
def test_a_task_that_keeps_enqueueing_hits_the_guard(monkeypatch):
    monkeypatch.setattr(testing, "RUN_JOBS_GUARD", 5)
    enqueues_itself.enqueue()
    with pytest.raises(RuntimeError, match="ran 5 attempts and jobs are still due"):
        run_jobs()
    assert Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 5
    assert len(enqueued(enqueues_itself)) == 1
    assert running_jobs() == []
    # With a limit, no guard: it stops there.
    assert [r.return_value for r in run_jobs(limit=2)] == ["again", "again"]


@pytest.mark.django_db
def test_the_task_sees_its_context_and_the_test_transaction():
    result = record.enqueue(label="seen")
    [ran] = run_jobs()
    assert ran.return_value == "seen"
    execution = Execution.objects.get(job_id=int(result.id))
    assert (execution.claim, execution.worker_id) == (1, TEST_WORKER_ID)


@pytest.mark.django_db
def test_an_async_task_runs():
    async_add.enqueue(2, 3)
    [ran] = run_jobs()
    assert (ran.status, ran.return_value) == (SUCCESSFUL, 5)


@pytest.mark.django_db
def test_a_task_whose_query_fails_fails_and_the_test_goes_on():
    result = breaks_the_transaction.enqueue()
    add.enqueue(1, 1)
    failed, ran = run_jobs()
    assert (failed.id, failed.status) == (result.id, FAILED)
    assert failed.errors[0].exception_class_path in (
        "django.db.utils.ProgrammingError",  # PostgreSQL, MySQL
        "django.db.utils.OperationalError",  # SQLite
    )
    assert (ran.status, ran.return_value) == (SUCCESSFUL, 2)
    assert Job.objects.get(pk=result.id).status == JobStatus.FAILED


@pytest.mark.django_db
def test_signals_are_sent_as_by_the_worker():
    started, finished = [], []

    def on_started(sender, task_result, **kwargs):
        started.append((task_result.id, task_result.status, task_result.attempts))

    def on_finished(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status, len(task_result.errors)))

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        failing = always_fails.enqueue()
        fine = add.enqueue(1, 1)
        run_jobs()
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)

    running = TaskResultStatus.RUNNING
    # The retry is due after the job enqueued meanwhile, as with a worker.
    assert started == [
        (failing.id, running, 1),
        (fine.id, running, 1),
        (failing.id, running, 2),
        (failing.id, running, 3),
    ]
    # task_finished: once per job, when it ends (not for the retries).
    assert finished == [(fine.id, SUCCESSFUL, 0), (failing.id, FAILED, 3)]


@pytest.mark.django_db
def test_a_task_finished_receiver_that_raises_fails_the_test():
    """Unlike the worker (which logs it), run_jobs lets a task_finished
    receiver's error through, as Signal.send does: in a test it is the
    test's. The job's outcome is recorded first."""

    def broken_receiver(sender, task_result, **kwargs):
        raise AssertionError("the receiver's check failed")

    result = add.enqueue(1, 1)
    task_finished.connect(broken_receiver)
    try:
        with pytest.raises(AssertionError, match="the receiver's check failed"):
            run_jobs()
    finally:
        task_finished.disconnect(broken_receiver)
    result.refresh()
    assert (result.status, result.return_value) == (SUCCESSFUL, 2)


# enqueued and the assertions -------------------------------------------------


@pytest.mark.django_db
def test_enqueued_matches_by_task_arguments_queue_priority_and_status():
    first = add.enqueue(1, 2)
    add.using(priority=7).enqueue(1, 2)
    echo.enqueue("a", key=[1, 2])
    in_other_queue.enqueue()

    assert [j.pk for j in enqueued(add)] == [int(first.id), int(first.id) + 1]
    assert len(enqueued("tests.tasks.add")) == 2
    assert len(enqueued(add, args=(1, 2))) == 2  # a tuple, stored as a list
    assert enqueued(add, args=[2, 1]) == []
    assert len(enqueued(add, priority=7)) == 1
    assert len(enqueued(echo, kwargs={"key": (1, 2)})) == 1
    assert len(enqueued(queue="other")) == 1
    assert len(enqueued()) == 4
    assert enqueued(echo, args=[True]) == []  # True is not "a"

    run_jobs(queues=["other"])
    assert enqueued(in_other_queue) == []  # READY only, by default
    assert len(enqueued(in_other_queue, status=None)) == 1
    assert len(enqueued(in_other_queue, status=JobStatus.SUCCESSFUL)) == 1
    assert len(enqueued(in_other_queue, status=TaskResultStatus.SUCCESSFUL)) == 1


@pytest.mark.django_db
def test_json_true_is_not_one():
    echo.enqueue(1)
    assert enqueued(echo, args=[True]) == []
    assert len(enqueued(echo, args=[1])) == 1


@pytest.mark.django_db
def test_assert_enqueued_passes_and_returns_the_jobs():
    add.enqueue(1, 2)
    add.enqueue(1, 2)
    jobs = assert_enqueued(add, args=[1, 2], count=2)
    assert [job.args for job in jobs] == [[1, 2], [1, 2]]
    assert len(assert_enqueued(add)) == 2
    assert assert_enqueued(echo, count=0) == []


@pytest.mark.django_db
def test_assert_enqueued_names_what_was_enqueued_when_it_fails():
    add.enqueue(1, 2)
    echo.using(queue_name="images", priority=3).enqueue("x", flag=True)

    with pytest.raises(AssertionError) as failure:
        assert_enqueued(add, args=[9, 9])

    message = str(failure.value)
    assert message.startswith(
        "Expected at least one job of tests.tasks.add with status READY or WAITING "
        "with args [9, 9]; found 0.\nJobs enqueued (2, oldest first):\n"
    )
    assert "tests.tasks.add args=[1, 2] kwargs={} queue='default' priority=0" in (
        message
    )
    assert (
        "tests.tasks.echo args=['x'] kwargs={'flag': True} queue='images' priority=3"
        in message
    )


@pytest.mark.django_db
def test_assert_enqueued_with_a_count_says_how_many_it_found():
    add.enqueue(1, 2)
    with pytest.raises(AssertionError, match=r"Expected 2 jobs of tests\.tasks\.add"):
        assert_enqueued(add, count=2)
    with pytest.raises(AssertionError, match="found 1"):
        assert_enqueued(add, count=2)


@pytest.mark.django_db
def test_assert_enqueued_with_nothing_enqueued_says_so():
    with pytest.raises(AssertionError, match="No job was enqueued"):
        assert_enqueued(add)


@pytest.mark.django_db
def test_assert_not_enqueued():
    add.enqueue(1, 2)
    assert_not_enqueued(add, args=[2, 1])
    assert_not_enqueued(echo)
    with pytest.raises(AssertionError) as failure:
        assert_not_enqueued(add)
    message = str(failure.value)
    assert message.startswith(
        "Expected no job of tests.tasks.add with status READY or WAITING; found 1:\n"
    )
    assert "tests.tasks.add args=[1, 2]" in message

    run_jobs()
    assert_not_enqueued()  # nothing is waiting now
    with pytest.raises(AssertionError, match="status=SUCCESSFUL"):
        assert_not_enqueued(add, status=None)


# The TestCase mixin and the pytest fixture -------------------------------------


class BackgroundJobsMixinTests(BackgroundJobsTestMixin, TestCase):
    def test_run_and_assert_inside_a_test_case(self):
        result = fails_until_attempt.enqueue(2)
        add.enqueue(4, 4)
        self.assert_enqueued(fails_until_attempt, args=[2])
        self.assert_enqueued(add, args=[4, 4], count=1)
        self.assert_not_enqueued(echo)

        results = self.run_jobs()

        self.assertEqual(
            [(r.status, r.return_value if r.is_finished else None) for r in results],
            # The retry is due after the job enqueued meanwhile.
            [(READY, None), (SUCCESSFUL, 8), (SUCCESSFUL, 2)],
        )
        self.assertEqual(Job.objects.get(pk=result.id).attempts, 2)
        self.assert_not_enqueued()
        self.assertEqual(len(self.enqueued(status=None)), 2)
        self.assertEqual(running_jobs(), [])

    def test_a_failed_assertion_lists_the_jobs(self):
        add.enqueue(5, 5)
        with self.assertRaisesMessage(AssertionError, "tests.tasks.add args=[5, 5]"):
            self.assert_enqueued(echo)

    def test_the_clock(self):
        fails_with_slow_backoff.enqueue()
        start = timezone.now()
        self.assertEqual(len(self.run_jobs(now=start)), 1)
        self.assertEqual(self.run_jobs(now=start + timedelta(seconds=30)), [])
        [last] = self.run_jobs(now=start + timedelta(minutes=1))
        self.assertEqual((last.status, last.attempts), (FAILED, 2))


def test_the_pytest_fixture(bgtasks):  # noqa: F811
    add.enqueue(2, 2)
    always_fails.using(max_attempts=2).enqueue()
    bgtasks.assert_enqueued(add, args=[2, 2])
    assert len(bgtasks.enqueued()) == 2

    results = bgtasks.run_jobs()

    assert [(r.task.module_path, r.status) for r in results] == [
        ("tests.tasks.add", SUCCESSFUL),
        ("tests.tasks.always_fails", READY),
        ("tests.tasks.always_fails", FAILED),
    ]
    assert results[0].return_value == 4
    bgtasks.assert_not_enqueued()
    with pytest.raises(AssertionError, match=r"tests\.tasks\.always_fails"):
        bgtasks.assert_enqueued(echo)
    assert running_jobs() == []


@pytest.mark.django_db
def test_a_workflows_waiting_steps_count_as_enqueued():
    chain(add.step(1, 2), echo.step("x")).enqueue()
    assert_enqueued(echo, args=["x"], count=1)
    assert enqueued(echo, status="READY") == []
    run_jobs()
    assert_not_enqueued()
