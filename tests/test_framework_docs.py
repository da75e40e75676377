"""The database backend as the documentation of Django's tasks framework
describes a backend, its tasks, results, errors, context and signals.

The sources are the reference and topic pages of ``django.tasks``
(docs/ref/tasks.txt, docs/topics/tasks.txt, the tasks part of
docs/ref/signals.txt and docs/ref/settings.txt, Django 6.0 and 6.1) and the
README of the ``django-tasks`` backport (Django 5.2). Each test says which
documented behaviour it checks; where the versions document different things,
it looks at what the installed framework has, not at version numbers.

Jobs run as a project's tests run them (``django_bgtasks.testing.run_jobs``)
or on a real worker, in this process or a ``runworker`` subprocess.
"""

import copy
import dataclasses
import pickle
import threading
from datetime import datetime, timedelta
from functools import partial

import pytest
from asgiref.sync import async_to_sync
from django.core import checks
from django.db import connections, transaction
from django.test import override_settings
from django.utils import timezone

from django_bgtasks import registry
from django_bgtasks.backend import DatabaseBackend
from django_bgtasks.compat import (
    BACKPORT,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from django_bgtasks.exceptions import InvalidReturnValue, TaskNotRegistered
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.testing import TEST_WORKER_ID, run_jobs
from tests import tasks
from tests.conftest import run_in_process, wait_until
from tests.factories import make_job
from tests.models import Execution
from tests.tasks import FRAMEWORK_FORWARDS_OPTIONS

# The backport names InvalidTaskBackend InvalidTaskBackendError.
if BACKPORT:
    from django_tasks import default_task_backend
    from django_tasks import task as framework_task
    from django_tasks.exceptions import (
        InvalidTaskBackendError as InvalidTaskBackend,
    )
else:
    from django.tasks import default_task_backend
    from django.tasks import task as framework_task
    from django.tasks.exceptions import InvalidTaskBackend

pytestmark = pytest.mark.django_db

READY = TaskResultStatus.READY
RUNNING = TaskResultStatus.RUNNING
SUCCESSFUL = TaskResultStatus.SUCCESSFUL
FAILED = TaskResultStatus.FAILED

DATABASE = "django_bgtasks.backend.DatabaseBackend"
QUEUES = ["default", "images", "other"]  # tests.settings' (the demo uses "images")

# Django 6.1 documents that Tasks and TaskResults can be pickled ("Changed in
# 6.1"); Django 6.0 and the backport have no such support (a Task's function
# is not importable under its own name: the name is the Task's).
FRAMEWORK_PICKLES = "__reduce__" in vars(Task)


def backend() -> DatabaseBackend:
    return task_backends["default"]


def refreshed(*results):
    for result in results:
        result.refresh()
    return results


# Backends: configuration, feature flags, validate_task, enqueue, get_result,
# check (ref/tasks "Backends", ref/settings "TASKS") ----------------------------


def test_the_backend_takes_its_alias_queues_and_options_from_the_tasks_setting():
    # QUEUES defaults to ["default"]; OPTIONS, to {}, is the backend's `options`.
    setting = {
        "default": {
            "BACKEND": DATABASE,
            "QUEUES": QUEUES,
            "OPTIONS": {"flavour": "mint"},
        },
        "bare": {"BACKEND": DATABASE},
    }
    with override_settings(TASKS=setting):
        configured, bare = task_backends["default"], task_backends["bare"]
        assert type(configured) is DatabaseBackend and type(bare) is DatabaseBackend
        assert (configured.alias, bare.alias) == ("default", "bare")
        assert configured.queues == set(QUEUES)
        assert configured.options == {"flavour": "mint"}
        assert (bare.queues, bare.options) == ({"default"}, {})
        # The "default" backend is also default_task_backend.
        assert default_task_backend.alias == "default"
        assert default_task_backend.options == {"flavour": "mint"}


def test_the_backend_supports_every_optional_feature():
    # supports_defer, supports_async_task, supports_get_result and
    # supports_priority; the tests below use each feature.
    flags = (
        backend().supports_defer,
        backend().supports_async_task,
        backend().supports_get_result,
        backend().supports_priority,
    )
    assert flags == (True, True, True, True)


def test_the_task_decorator_makes_tasks_of_the_backends_task_class():
    # BaseTaskBackend.task_class is documented from Django 6.1; Django 6.0's
    # @task and the backport's use it too.
    assert issubclass(DatabaseBackend.task_class, Task)
    assert type(tasks.add) is DatabaseBackend.task_class
    assert type(tasks.add.using(priority=1)) is DatabaseBackend.task_class


@pytest.mark.skipif(
    not FRAMEWORK_FORWARDS_OPTIONS,
    reason="@task passes extra keywords to task_class from Django 6.1 (and in "
    "the backport); Django 6.0's @task takes none",
)
def test_the_task_decorator_passes_extra_keywords_to_the_task_class():
    assert tasks.with_framework_options.max_attempts == 7
    result = tasks.with_framework_options.enqueue()
    assert Job.objects.get(pk=result.id).max_attempts == 7


def _altered(task, **changes):
    """A copy of ``task`` with ``changes`` made after its validation: a Task
    the backend has not seen, for ``validate_task`` to judge."""
    altered = copy.copy(task)
    for name, value in changes.items():
        object.__setattr__(altered, name, value)
    return altered


def _plain_function(a, b):
    return a + b


def test_validate_task_accepts_a_valid_task_and_refuses_an_invalid_one():
    nested = _altered(tasks.add)
    object.__setattr__(nested, "func", lambda a, b: a + b)
    invalid = [
        _altered(tasks.add, priority=101),
        _altered(tasks.add, priority=-101),
        _altered(tasks.add, queue_name="nowhere"),
        _altered(tasks.add, run_after=datetime(2030, 1, 1)),  # naive, USE_TZ
        _altered(tasks.add, takes_context=True),  # no "context" first argument
        nested,  # not a module-level function
    ]
    assert backend().validate_task(tasks.add) is None
    assert backend().validate_task(tasks.async_add) is None  # supports_async_task
    for task in invalid:
        with pytest.raises(InvalidTask):
            backend().validate_task(task)


def test_backend_enqueue_and_aenqueue_return_a_result_for_a_new_job():
    first = backend().enqueue(tasks.add, [1, 2], {})
    second = async_to_sync(backend().aenqueue)(tasks.add, [3], {"b": 4})
    for result, args, kwargs in [(first, [1, 2], {}), (second, [3], {"b": 4})]:
        assert isinstance(result, TaskResult)
        assert result.task == tasks.add and result.status == READY
        assert (result.args, result.kwargs) == (args, kwargs)
        job = Job.objects.get(pk=result.id)
        assert job.task_path == "tests.tasks.add"
        assert (job.args, job.kwargs) == (args, kwargs)
    first_run, second_run = run_jobs()
    assert (first_run.return_value, second_run.return_value) == (3, 7)


def test_backend_get_result_and_aget_result_find_a_result_of_any_task():
    added = tasks.add.enqueue(1, 2)
    echoed = tasks.echo.enqueue("x")
    for result in (added, echoed):
        assert backend().get_result(result.id) == result
        assert async_to_sync(backend().aget_result)(result.id) == result
        assert default_task_backend.get_result(result.id) == result
    for missing in [str(int(echoed.id) + 1000), "not an id", ""]:
        with pytest.raises(TaskResultDoesNotExist):
            backend().get_result(missing)
        with pytest.raises(TaskResultDoesNotExist):
            async_to_sync(backend().aget_result)(missing)


def test_check_finds_nothing_wrong_with_a_valid_backend_and_reports_a_bad_queue():
    assert list(backend().check()) == []
    bad = {"default": {"BACKEND": DATABASE, "QUEUES": [*QUEUES, ""]}}
    with override_settings(TASKS=bad):
        messages = list(task_backends["default"].check())
        # The framework's system check runs each backend's check() (with
        # no database: since Django 6.1.3 the model checks ask every alias's
        # features, a query on SQLite).
        everything = [message.id for message in checks.run_checks(databases=[])]
    assert [(type(message), message.id) for message in messages] == [
        (checks.Error, "bgtasks.E011")
    ]
    assert "bgtasks.E011" in everything


# Tasks: attributes, using, enqueue, get_result, call, get_backend
# (ref/tasks "Task", topics/tasks "Defining/Modifying/Enqueueing Tasks") -------


def test_task_attributes():
    add = tasks.add
    assert add.func(2, 3) == 5 and add.func.__name__ == "add"
    assert (add.priority, add.backend, add.queue_name) == (0, "default", "default")
    assert add.run_after is None and add.takes_context is False
    assert add.name == "add"
    assert add.module_path == "tests.tasks.add"
    assert (tasks.in_other_queue.priority, tasks.in_other_queue.queue_name) == (
        5,
        "other",
    )
    assert tasks.record.takes_context is True


def test_tasks_and_results_cannot_be_modified():
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tasks.add.priority = 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = SUCCESSFUL
    assert tasks.add.priority == 0 and result.status == READY


def test_using_makes_a_new_task_and_leaves_the_original_unchanged():
    when = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    changed = tasks.add.using(priority=10, queue_name="other", run_after=when)
    assert (changed.priority, changed.queue_name, changed.run_after) == (
        10,
        "other",
        when,
    )
    assert changed.func is tasks.add.func and changed.backend == "default"
    assert (tasks.add.priority, tasks.add.queue_name, tasks.add.run_after) == (
        0,
        "default",
        None,
    )
    result = changed.enqueue(1, 2)
    job = Job.objects.get(pk=result.id)
    assert (job.priority, job.queue_name, job.run_after) == (10, "other", when)
    # TaskResult.task: the Task the result was enqueued for.
    assert result.task == changed
    assert backend().get_result(result.id).task == changed


@override_settings(
    TASKS={
        "default": {"BACKEND": DATABASE, "QUEUES": QUEUES},
        "reserve": {"BACKEND": DATABASE},
    }
)
def test_using_another_backend_enqueues_there():
    moved = tasks.add.using(backend="reserve")
    assert moved.backend == "reserve" and tasks.add.backend == "default"
    assert moved.get_backend() is task_backends["reserve"]
    result = moved.enqueue(1, 2)
    assert result.backend == "reserve"
    assert Job.objects.get(pk=result.id).backend == "reserve"
    assert task_backends["reserve"].get_result(result.id) == result


def test_run_after_is_the_earliest_time_the_task_runs():
    when = timezone.now() + timedelta(hours=1)
    later = tasks.add.using(run_after=when).enqueue(1, 2)
    assert run_jobs() == []
    assert refreshed(later)[0].status == READY
    [ran] = run_jobs(now=when)
    assert (ran.id, ran.status, ran.started_at) == (later.id, SUCCESSFUL, when)


def test_run_after_can_be_a_timedelta_relative_to_now():
    # Django's docs (6.0, 6.1) allow a timedelta "relative to the current
    # time"; the framework's own Task does not handle one, ours counts it from
    # the using() call.
    before = timezone.now()
    delayed = tasks.add.using(run_after=timedelta(minutes=5))
    after = timezone.now()
    assert before + timedelta(minutes=5) <= delayed.run_after
    assert delayed.run_after <= after + timedelta(minutes=5)
    result = delayed.enqueue(1, 2)
    assert run_jobs(now=before + timedelta(minutes=4)) == []
    [ran] = run_jobs(now=after + timedelta(minutes=5))
    assert (ran.id, ran.return_value) == (result.id, 3)


def test_higher_priority_tasks_run_sooner():
    for priority in (0, 100, -100, 10):
        tasks.record.using(priority=priority).enqueue(label=f"p{priority}")
    run_jobs()
    labels = list(Execution.objects.order_by("id").values_list("label", flat=True))
    assert labels == ["p100", "p10", "p0", "p-100"]


def test_invalid_options_are_refused():
    for options in [
        {"priority": 101},
        {"priority": -101},
        {"queue_name": "nowhere"},
        {"run_after": datetime(2030, 1, 1)},  # naive under USE_TZ
    ]:
        with pytest.raises(InvalidTask):
            tasks.add.using(**options)
    # The bounds are allowed.
    assert tasks.add.using(priority=100).priority == 100
    assert tasks.add.using(priority=-100).priority == -100
    # Task.backend must name a backend of TASKS.
    with pytest.raises(InvalidTaskBackend):
        tasks.add.using(backend="missing")
    assert not Job.objects.exists()


def test_the_task_decorator_refuses_a_task_the_backend_cannot_run():
    with pytest.raises(InvalidTask):
        framework_task(lambda a: a)  # not a module-level function
    with pytest.raises(InvalidTask):
        framework_task(takes_context=True)(_plain_function)  # no "context"
    with pytest.raises(InvalidTask):
        framework_task(queue_name="nowhere")(_plain_function)
    with pytest.raises(InvalidTask):
        framework_task(priority=101)(_plain_function)


def test_enqueue_refuses_a_task_that_is_no_longer_valid():
    # A queue no longer in QUEUES: InvalidTask at enqueue, nothing written.
    only_default = {"default": {"BACKEND": DATABASE}}
    with override_settings(TASKS=only_default), pytest.raises(InvalidTask):
        tasks.in_other_queue.enqueue()
    assert not Job.objects.exists()


@override_settings(TASKS={"default": {"BACKEND": DATABASE, "QUEUES": []}})
def test_an_empty_queues_setting_allows_any_queue_name():
    result = tasks.add.using(queue_name="anything").enqueue(1, 2)
    assert Job.objects.get(pk=result.id).queue_name == "anything"
    assert result.task.queue_name == "anything"


@override_settings(TASKS={"default": {"BACKEND": DATABASE, "QUEUES": []}})
def test_an_empty_queues_setting_allows_any_name_the_column_holds():
    """``QUEUES = []`` disables the check against a list (ref/settings); a
    name longer than the column (64 characters) is still refused, before a
    row is written, rather than cut short or failing in the database."""
    result = tasks.add.using(queue_name="q" * 64).enqueue(1, 2)
    assert Job.objects.get(pk=result.id).queue_name == "q" * 64
    with pytest.raises(InvalidTask, match="64"):
        tasks.add.using(queue_name="q" * 65).enqueue(1, 2)
    assert Job.objects.count() == 1


def test_arguments_reach_the_function_after_a_json_round_trip():
    result = tasks.echo.enqueue((1, 2), "x", key=(3, {"n": (4,)}))
    assert (result.args, result.kwargs) == ([[1, 2], "x"], {"key": [3, {"n": [4]}]})
    [ran] = run_jobs()
    # echo returns its arguments: tuples arrived as lists.
    assert ran.return_value == {
        "args": [[1, 2], "x"],
        "kwargs": {"key": [3, {"n": [4]}]},
    }


def test_arguments_that_are_not_json_are_refused_before_anything_is_written():
    with pytest.raises(InvalidTask):
        tasks.echo.enqueue(datetime.now())
    with pytest.raises(InvalidTask):
        tasks.echo.enqueue(key={1, 2})
    assert not Job.objects.exists()


def test_a_non_json_argument_raises_type_error_as_the_docs_show():
    with pytest.raises(TypeError):
        tasks.echo.enqueue(datetime.now())


def test_aenqueue_enqueues_as_enqueue_does():
    result = async_to_sync(tasks.add.aenqueue)(4, b=5)
    assert isinstance(result, TaskResult) and result.status == READY
    job = Job.objects.get(pk=result.id)
    assert (job.args, job.kwargs) == ([4], {"b": 5})
    [ran] = run_jobs()
    assert (ran.id, ran.return_value) == (result.id, 9)


def test_task_get_result_and_aget_result():
    result = tasks.add.enqueue(1, 2)
    assert tasks.add.get_result(result.id) == result
    assert async_to_sync(tasks.add.aget_result)(result.id) == result
    # Any variant of the same task may retrieve it.
    assert tasks.add.using(priority=3).get_result(result.id) == result
    # A result of another task: TaskResultMismatch; none: TaskResultDoesNotExist.
    other = tasks.echo.enqueue()
    with pytest.raises(TaskResultMismatch):
        tasks.add.get_result(other.id)
    with pytest.raises(TaskResultMismatch):
        async_to_sync(tasks.add.aget_result)(other.id)
    missing = str(int(other.id) + 1000)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(missing)
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(tasks.add.aget_result)(missing)


def test_call_and_acall_run_the_function_here_and_now():
    assert tasks.add.call(2, 3) == 5
    assert tasks.async_add.call(2, 3) == 5
    assert async_to_sync(tasks.add.acall)(2, 3) == 5
    assert async_to_sync(tasks.async_add.acall)(2, 3) == 5
    assert not Job.objects.exists()


def test_get_backend_is_the_backend_the_task_names():
    assert tasks.add.get_backend() is task_backends["default"]
    assert type(tasks.add.get_backend()) is DatabaseBackend


def test_async_functions_are_tasks_too():
    result = tasks.async_add.enqueue(20, 22)
    run_jobs()
    assert refreshed(result)[0].return_value == 42


@pytest.mark.django_db(transaction=True)
def test_a_result_can_be_retrieved_from_another_thread():
    result = tasks.add.enqueue(1, 2)
    retrieved = []

    def retrieve():
        try:
            retrieved.append(tasks.add.get_result(result.id))
        finally:
            connections.close_all()

    thread = threading.Thread(target=retrieve)
    thread.start()
    thread.join(30)
    assert retrieved == [result]


def test_enqueue_on_commit_as_the_docs_advise(django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        transaction.atomic(),
    ):
        transaction.on_commit(partial(tasks.add.enqueue, a=1, b=2))
        assert not Job.objects.exists()
    assert len(callbacks) == 1
    assert Job.objects.get().kwargs == {"a": 1, "b": 2}


@pytest.mark.skipif(
    not FRAMEWORK_PICKLES,
    reason="Tasks and TaskResults pickle from Django 6.1 (documented there)",
)
def test_tasks_and_results_can_be_pickled():
    task = tasks.always_fails.using(priority=7, max_attempts=5, backoff=30)
    assert pickle.loads(pickle.dumps(task)) == task
    result = tasks.add.enqueue(1, 2)
    run_jobs()
    result.refresh()
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result and copy.return_value == 3
    copy.refresh()
    assert copy.status == SUCCESSFUL


# Results: attributes through a job's life (ref/tasks "Task results",
# topics/tasks "Task results") ------------------------------------------------


def test_a_new_result_is_ready_and_nothing_has_run():
    before = timezone.now()
    result = tasks.add.enqueue(1, b=2)
    assert isinstance(result, TaskResult)
    assert isinstance(result.id, str) and 0 < len(result.id) < 64
    assert result.task == tasks.add
    assert result.status == READY and result.is_finished is False
    assert before <= result.enqueued_at <= timezone.now()
    assert (result.started_at, result.last_attempted_at, result.finished_at) == (
        None,
        None,
        None,
    )
    assert (result.args, result.kwargs) == ([1], {"b": 2})
    assert result.backend == "default"
    assert (result.errors, result.worker_ids, result.attempts) == ([], [], 0)
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018


def test_a_successful_result():
    result = tasks.add.enqueue(2, 3)
    [ran] = run_jobs()
    assert (ran.id, ran.status, ran.return_value) == (result.id, SUCCESSFUL, 5)
    # A result keeps the state it was read in until refreshed.
    assert result.status == READY
    result.refresh()
    assert result.status == SUCCESSFUL and result.is_finished is True
    assert result.return_value == 5
    assert result.errors == []
    assert result.worker_ids == [TEST_WORKER_ID] and result.attempts == 1
    assert result.enqueued_at <= result.started_at == result.last_attempted_at
    assert result.last_attempted_at <= result.finished_at
    # get_result gives the current state.
    assert tasks.add.get_result(result.id) == result


def test_refresh_and_arefresh_reload_a_retrieved_result():
    result = tasks.add.enqueue(2, 3)
    first = tasks.add.get_result(result.id)
    second = tasks.add.get_result(result.id)
    run_jobs()
    assert (first.status, second.status) == (READY, READY)
    first.refresh()
    async_to_sync(second.arefresh)()
    for reloaded in (first, second):
        assert (reloaded.status, reloaded.return_value) == (SUCCESSFUL, 5)
        assert reloaded.finished_at is not None
        assert reloaded.worker_ids == [TEST_WORKER_ID]
    assert first == second


def test_a_failed_result_has_an_error_for_each_attempt():
    result = tasks.always_fails.enqueue("boom")  # max_attempts=3
    run_jobs()
    result.refresh()
    assert result.status == FAILED and result.is_finished is True
    assert result.attempts == 3
    assert result.worker_ids == [TEST_WORKER_ID] * 3
    assert result.finished_at >= result.last_attempted_at >= result.started_at
    assert len(result.errors) == 3
    for error in result.errors:
        assert isinstance(error, TaskError)
        assert error.exception_class is ValueError
        assert error.exception_class_path == "builtins.ValueError"
        assert isinstance(error.traceback, str)
        assert error.traceback.startswith("Traceback (most recent call last):")
        assert error.traceback.rstrip().endswith("ValueError: boom")
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018


def test_an_error_in_running_the_task_fails_it_too():
    # "raises an exception, either as part of the Task or as part of running
    # it": here the return value cannot be stored as JSON.
    result = tasks.returns_object.enqueue()
    run_jobs()
    result.refresh()
    assert result.status == FAILED
    # Reading it registered nothing: the path still names no task.
    with pytest.raises(TaskNotRegistered):
        registry.resolve("tests.tasks.plain_function")
    [error] = result.errors
    assert error.exception_class is InvalidReturnValue
    assert "InvalidReturnValue" in error.traceback
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018


def test_a_task_that_cannot_start_fails():
    # TaskResultStatus.FAILED: the Task raised an exception, "or was unable to
    # start": here its task is not (or no longer) a registered task.
    job = make_job(task_path="tests.tasks.plain_function", args=[])
    [ran] = run_jobs()
    assert (ran.id, ran.status, ran.is_finished) == (str(job.pk), FAILED, True)
    [error] = ran.errors
    assert error.exception_class is TaskNotRegistered
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED


def test_get_result_returns_the_result_of_a_job_whose_task_is_gone():
    job = make_job(task_path="tests.tasks.plain_function", args=[])
    run_jobs()
    result = backend().get_result(str(job.pk))
    assert result.status == FAILED
    assert result.task.module_path == "tests.tasks.plain_function"
    [error] = result.errors
    assert error.exception_class is TaskNotRegistered
    with pytest.raises(TaskNotRegistered):
        result.task.call()
    result.refresh()
    assert result.status == FAILED


def test_a_failed_attempt_with_attempts_left_is_ready_to_run_again():
    result = tasks.fails_until_attempt.enqueue(succeed_at=2)  # max_attempts=4
    run_jobs(limit=1)
    result.refresh()
    assert result.status == READY and result.is_finished is False
    assert result.attempts == 1 and result.finished_at is None
    [error] = result.errors
    assert error.exception_class is RuntimeError
    assert error.traceback.rstrip().endswith("RuntimeError: attempt 1 fails")
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018
    run_jobs()
    result.refresh()
    assert (result.status, result.return_value) == (SUCCESSFUL, 2)
    assert result.attempts == 2 and len(result.errors) == 1


def test_started_at_is_the_first_attempt_and_last_attempted_at_the_latest():
    start = timezone.now() + timedelta(minutes=1)
    moments = []

    def clock():
        moments.append(start + timedelta(minutes=len(moments)))
        return moments[-1]

    result = tasks.fails_until_attempt.enqueue(succeed_at=3)
    first, second, third = run_jobs(now=clock)
    result.refresh()
    assert result.enqueued_at < result.started_at == moments[0]
    assert result.started_at == first.last_attempted_at == third.started_at
    assert second.last_attempted_at > first.last_attempted_at
    assert result.last_attempted_at == third.last_attempted_at
    assert result.last_attempted_at > second.last_attempted_at
    assert result.finished_at > result.last_attempted_at
    assert result.status == SUCCESSFUL and result.attempts == 3


@pytest.mark.django_db(transaction=True)
def test_a_running_result_as_another_process_sees_it(workers, tmp_path):
    gate = tmp_path / "gate"
    result = tasks.wait_for_file.enqueue(str(gate))
    process = workers.start(
        "--burst", "--no-scheduler", "--no-maintenance", "--worker-id", "docs"
    )

    def running():
        current = tasks.wait_for_file.get_result(result.id)
        return current if current.status == RUNNING else None

    seen = wait_until(running, timeout=60, message="the job running")
    assert seen.is_finished is False
    assert seen.started_at is not None
    assert seen.last_attempted_at == seen.started_at
    assert seen.finished_at is None
    assert seen.worker_ids == ["docs"]
    with pytest.raises(ValueError):
        seen.return_value  # noqa: B018
    gate.touch()
    assert workers.wait(process) == 0, workers.output(process)
    result.refresh()
    assert (result.status, result.return_value) == (SUCCESSFUL, "released")
    assert result.worker_ids == ["docs"] and result.attempts == 1


def test_a_run_in_progress_counts_as_its_attempt():
    """ref/tasks says a run in progress is not counted in ``attempts``, yet
    documents ``TaskContext.attempt`` (the running result's ``attempts``) as
    starting at 1, and the framework's own ImmediateBackend counts it: so do
    we (``attempts`` is the number of claims, ``len(worker_ids)``)."""
    seen = []

    def on_started(sender, task_result, **kwargs):
        seen.append(backend().get_result(task_result.id).attempts)

    task_started.connect(on_started)
    try:
        tasks.add.enqueue(1, 2)
        run_jobs()
    finally:
        task_started.disconnect(on_started)
    assert seen == [1]


# Task context (ref/tasks "Task context", topics/tasks "Task context") ---------


def test_the_context_holds_the_running_result_and_the_attempt_from_1():
    at_once = tasks.fails_until_attempt.enqueue(succeed_at=1)
    at_third = tasks.fails_until_attempt.enqueue(succeed_at=3)
    recorded = tasks.record.enqueue(label="context")
    run_jobs()
    refreshed(at_once, at_third, recorded)
    # fails_until_attempt returns context.attempt once it reaches succeed_at.
    assert (at_once.return_value, at_third.return_value) == (1, 3)
    messages = [error.traceback.rstrip().splitlines()[-1] for error in at_third.errors]
    assert messages == [
        "RuntimeError: attempt 1 fails",
        "RuntimeError: attempt 2 fails",
    ]
    # record stores context.task_result's id and worker ids.
    execution = Execution.objects.get()
    assert execution.job_id == int(recorded.id)
    assert (execution.claim, execution.worker_id) == (1, TEST_WORKER_ID)
    assert recorded.return_value == "context"


# Signals (ref/signals "Tasks signals") ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_signals_are_sent_by_the_backend_class_with_the_result():
    seen = []

    def receiver(name):
        def receive(sender, task_result, **kwargs):
            try:
                value = task_result.return_value
            except ValueError:
                value = "no value"
            seen.append(
                (
                    name,
                    sender,
                    task_result.id,
                    task_result.status,
                    len(task_result.errors),
                    value,
                )
            )

        return receive

    receivers = [
        (task_enqueued, receiver("enqueued")),
        (task_started, receiver("started")),
        (task_finished, receiver("finished")),
    ]
    for signal, function in receivers:
        signal.connect(function)
    try:
        ok = tasks.add.enqueue(1, 2)
        bad = tasks.always_fails.using(max_attempts=2).enqueue()
        run_in_process()
    finally:
        for signal, function in receivers:
            signal.disconnect(function)

    assert {entry[1] for entry in seen} == {DatabaseBackend}

    def of(result):
        return [entry[:1] + entry[3:] for entry in seen if entry[2] == result.id]

    assert of(ok) == [
        ("enqueued", READY, 0, "no value"),
        ("started", RUNNING, 0, "no value"),
        ("finished", SUCCESSFUL, 0, 3),
    ]
    # task_finished once, when the job has finished: not after the retried
    # attempt.
    assert of(bad) == [
        ("enqueued", READY, 0, "no value"),
        ("started", RUNNING, 0, "no value"),
        ("started", RUNNING, 1, "no value"),
        ("finished", FAILED, 2, "no value"),
    ]
