"""Helpers for a project's own tests.

Running jobs in a test
----------------------

Keep ``TASKS`` on ``django_bgtasks.backend.DatabaseBackend`` and run the jobs
a test enqueued with :func:`run_jobs`: in the test's own thread and inside its
transaction (a plain ``django.test.TestCase``, or pytest-django's ``db``
fixture), with no worker process and nothing committed. Each due job is
claimed, run and recorded as a worker would: retries with their backoff,
``max_attempts``, errors, return values and the ``task_started`` /
``task_finished`` signals behave as in production. Check what was enqueued
with :func:`enqueued`, :func:`assert_enqueued` and :func:`assert_not_enqueued`::

    from django_bgtasks.testing import assert_enqueued, run_jobs

    def test_signup_sends_a_welcome(db):
        user = sign_up("ada@example.com")
        assert_enqueued(send_welcome, args=[user.pk])
        [result] = run_jobs()
        assert result.return_value == {"sent": True}

``BackgroundJobsTestMixin`` gives a ``TestCase`` the same as methods; with
pytest, ``pytest_plugins = ["django_bgtasks.pytest_plugin"]`` in the
project's root ``conftest.py`` gives a ``bgtasks`` fixture.

Other backends
--------------

``ImmediateBackend`` and ``DummyBackend`` are the framework's backends of the
same names whose tasks are ``DatabaseTask``: tasks declared with this
backend's options (``max_attempts``, ``backoff``, ``timeout``, through the
framework's ``@task`` or ours) work under them unchanged, the options kept
and ignored, and ``enqueue_many`` enqueues one by one. Put one in ``TASKS``
for tests that should run tasks at once, or only collect them::

    TASKS = {"default": {"BACKEND": "django_bgtasks.testing.ImmediateBackend"}}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from .backend import DatabaseBackend
from .base import DatabaseTask
from .compat import (
    BACKPORT,
    Task,
    TaskResult,
    task_backends,
    task_finished,
    task_started,
)
from .databases import backend_database, default_database
from .models import Job, JobStatus
from .private_api import Receivers
from .routes import routed_backend
from .rows import job_result, update_result
from .serialization import NotJSON, to_json
from .worker.attempt import Recorded, describe, run_attempt
from .worker.completer import Finished, not_stored, report
from .worker.ledger import Attempt

if BACKPORT:
    from django_tasks.backends.dummy import DummyBackend as _DummyBackend
    from django_tasks.backends.immediate import ImmediateBackend as _ImmediateBackend
else:
    from django.tasks.backends.dummy import DummyBackend as _DummyBackend
    from django.tasks.backends.immediate import ImmediateBackend as _ImmediateBackend

__all__ = [
    "RUN_JOBS_GUARD",
    "TEST_WORKER_ID",
    "BackgroundJobs",
    "BackgroundJobsTestMixin",
    "DummyBackend",
    "ImmediateBackend",
    "assert_enqueued",
    "assert_not_enqueued",
    "enqueued",
    "run_jobs",
]

logger = logging.getLogger("django_bgtasks.worker")

#: The worker id ``run_jobs`` claims jobs as (in ``worker_ids``, and
#: ``worker_id`` while a job runs). No worker row is made for it.
TEST_WORKER_ID = "test-runner"

#: Attempts one ``run_jobs()`` call (without ``limit``) runs before it gives
#: up with a RuntimeError: a task that keeps enqueueing due jobs would
#: otherwise never end.
RUN_JOBS_GUARD = 10_000

# How many jobs an assertion's message lists.
_LISTED = 50

# READY and WAITING (a workflow's step, waiting for the steps before it):
# jobs waiting to run.
_WAITING_TO_RUN = ("READY", "WAITING")


class _EnqueueMany:
    task_class = DatabaseTask

    def enqueue_many(self, task, calls):
        """``DatabaseTask.enqueue_many``: one ``enqueue`` per call."""
        return [self.enqueue(task, list(args), dict(kwargs)) for args, kwargs in calls]


class ImmediateBackend(_EnqueueMany, _ImmediateBackend):
    """The framework's ImmediateBackend (tasks run at enqueue, in the
    caller's thread), taking tasks with this backend's options."""


class DummyBackend(_EnqueueMany, _DummyBackend):
    """The framework's DummyBackend (tasks are collected in ``results``, never
    run), taking tasks with this backend's options."""


# Running jobs ---------------------------------------------------------------


def run_jobs(
    *,
    queues: Iterable[str] | str | None = None,
    now: datetime | Callable[[], datetime] | None = None,
    limit: int | None = None,
    using: str | None = None,
) -> list[TaskResult]:
    """Run the due jobs now, in this thread, as a worker would; return the
    result of each attempt run, in run order.

    For a project's tests, with ``TASKS`` on ``DatabaseBackend``: it runs
    inside the caller's transaction (``django.test.TestCase``,
    pytest-django's ``db`` fixture), so the jobs the test enqueued are seen
    and nothing is committed. Jobs run one at a time, best first (highest
    priority, then earliest ``run_after``, then oldest). Each is claimed
    (RUNNING, its attempt counted, worker id ``"test-runner"``), run once
    with ``task_started`` sent, and its outcome recorded: a failure is
    retried after the job's backoff until ``max_attempts`` and then ends
    FAILED with every attempt's error, and ``task_finished`` is sent when the
    job ends, as in production.

    Jobs that become due meanwhile run in the same call, until none is due:
    a retry whose backoff is zero, a job a task enqueued. A call that has
    run ``RUN_JOBS_GUARD`` (10,000) attempts and still finds a job due
    raises RuntimeError.

    ``queues``: the queues to take jobs from (None: every queue).
    ``now``: the clock, a datetime or a function returning one (None:
    ``timezone.now()``). A job is due when its ``run_after`` is at or before
    it; it also dates the attempts (start, finish, the next retry's
    ``run_after``). Pass a later time to run jobs delayed by ``run_after``
    or by a retry's backoff::

        run_jobs(now=timezone.now() + timedelta(minutes=5))

    ``limit``: run at most this many attempts. ``using``: the database
    (default: the ``default`` task backend's, ``default_database()``).

    Each result is the job as its attempt left it (a retried attempt's
    status is READY, with the error so far). For a job whose task is not
    registered (a row made by hand), the result's ``task`` is None.

    Unlike a worker, it does not enforce ``timeout``. A task whose
    database error breaks the transaction (PostgreSQL) has its writes rolled
    back to where its attempt began, so the test can go on; its job fails
    as the exception says.
    """

    using = _database(using)
    if isinstance(queues, str):
        queues = [queues]
    elif queues is not None:
        queues = list(queues)
    clock = _clock(now)
    run: list[TaskResult] = []
    while limit is None or len(run) < limit:
        moment = clock()
        due = (
            Job.objects.using(using)
            .claimable(moment)
            .in_queues(queues)
            .order_by("-priority", "run_after", "id")
            .first()
        )
        if due is None:
            break
        if limit is None and len(run) >= RUN_JOBS_GUARD:
            raise RuntimeError(
                f"run_jobs() ran {len(run)} attempts and jobs are still due "
                f"(next: job {due.pk}, {due.task_path}): does a task keep "
                f"enqueueing jobs? Pass limit= to run fewer."
            )
        job = _claim(using, due, moment)
        if job is not None:
            run.append(_run_one(using, job, clock))
    return run


def _clock(now) -> Callable[[], datetime]:
    """``now`` as a function returning an aware datetime (under USE_TZ)."""
    if now is None:
        return timezone.now
    if isinstance(now, datetime):
        _check_moment(now)
        return lambda: now
    if callable(now):

        def checked() -> datetime:
            moment = now()
            _check_moment(moment)
            return moment

        return checked
    raise TypeError(f"now must be a datetime or a function returning one, not {now!r}.")


def _check_moment(moment) -> None:
    if not isinstance(moment, datetime):
        raise TypeError(f"now must give a datetime, not {moment!r}.")
    if settings.USE_TZ and timezone.is_naive(moment):
        raise ValueError(f"now must be an aware datetime under USE_TZ, not {moment}.")


def _claim(using: str, job: Job, now: datetime) -> Job | None:
    """Claim ``job`` (READY) for ``TEST_WORKER_ID``, as the worker's claim
    does; the claimed job, or None if it was no longer READY."""

    worker_ids = job.worker_ids if isinstance(job.worker_ids, list) else []
    claimed = (
        Job.objects.using(using)
        .filter(pk=job.pk, status=JobStatus.READY, attempts=job.attempts)
        .update(
            status=JobStatus.RUNNING,
            attempts=job.attempts + 1,
            started_at=job.started_at or now,
            last_attempted_at=now,
            worker_id=TEST_WORKER_ID,
            worker_ids=[*worker_ids, TEST_WORKER_ID],
        )
    )
    return Job.objects.using(using).get(pk=job.pk) if claimed else None


def _run_one(using: str, job: Job, clock: Callable[[], datetime]) -> TaskResult:
    """Run one attempt of the claimed ``job``, record its outcome, send
    ``task_finished`` if the job ended; the attempt's result."""

    if logger.isEnabledFor(logging.INFO):
        logger.info("Job %s started: %s", job.pk, describe(job))
    started = time.monotonic()
    savepoint = _savepoint_create(using=using)
    outcome, task, task_result = run_attempt(
        job, Receivers(task_started, DatabaseBackend), clock
    )
    _end_savepoint(using, savepoint)
    elapsed_ms = (time.monotonic() - started) * 1000
    if isinstance(outcome, Recorded):  # an atomic task's, written already
        change, outcome = outcome.change, outcome.outcome
    else:
        change, outcome = _record(using, job, outcome, clock())
    report(
        Finished(Attempt(job), task, outcome, change, task_result, elapsed_ms),
        change,
        Receivers(task_finished, DatabaseBackend),
        robust=False,  # a test's receiver that raises fails the test
    )
    if task_result is None:
        return job_result(job, task)
    # Sent with task_finished if the job ended; brought up to date if not.
    update_result(task_result, job)
    return task_result


# Django 6.1 renamed transaction.savepoint() savepoint_create().
_savepoint_create = getattr(transaction, "savepoint_create", None) or (
    transaction.savepoint
)


def _end_savepoint(using: str, savepoint) -> None:
    """Keep what the attempt wrote, unless it broke the transaction (a
    database error on PostgreSQL): then roll back to before the attempt."""
    if savepoint is None:  # autocommit: nothing to keep or undo
        return
    try:
        transaction.savepoint_commit(savepoint, using=using)
    except DatabaseError:
        transaction.savepoint_rollback(savepoint, using=using)


def _record(using: str, job: Job, outcome, now: datetime):
    """Record ``outcome`` with ``Job.record``, as the worker's one-row path
    does: an outcome the database refuses fails the job with
    OutcomeNotStored. Returns the transition (None if the job was not held)
    and the outcome recorded."""

    try:
        with transaction.atomic(using=using):
            return job.record(outcome, now=now), outcome
    except DatabaseError as exc:
        outcome = not_stored(job, exc)
        with transaction.atomic(using=using):
            return job.record(outcome, now=now), outcome


# What was enqueued ------------------------------------------------------------


def enqueued(
    task: Task | str | None = None,
    *,
    args: list | tuple | None = None,
    kwargs: dict | None = None,
    queue: str | None = None,
    priority: int | None = None,
    status: str | tuple[str, ...] | None = _WAITING_TO_RUN,
    using: str | None = None,
) -> list[Job]:
    """The jobs enqueued that match, oldest first.

    ``task``: a Task or its dotted path (only the path is compared: pass
    ``queue`` or ``priority`` for those); None matches every task.
    ``args`` and ``kwargs`` are compared as stored: normalised as at enqueue
    (tuples become lists), the whole of them. ``status``: READY or WAITING
    (waiting to run; WAITING: a workflow's step) by default, any status or
    tuple of statuses, or None for every status. Each
    criterion left None matches anything. ``using``: the database (default:
    that of the task's backend if ``task`` is a Task, else the ``default``
    task backend's).
    """

    jobs = Job.objects.using(_database(using, task))
    if task is not None:
        jobs = jobs.filter(task_path=_task_path(task))
    if queue is not None:
        jobs = jobs.filter(queue_name=queue)
    if priority is not None:
        jobs = jobs.filter(priority=priority)
    if isinstance(status, tuple):
        jobs = jobs.filter(status__in=[getattr(s, "value", s) for s in status])
    elif status is not None:
        jobs = jobs.filter(status=getattr(status, "value", status))
    found = list(jobs.order_by("id"))
    if args is not None:
        expected_args = _as_stored(args, "args")
        found = [job for job in found if _same(job.args, expected_args)]
    if kwargs is not None:
        expected_kwargs = _as_stored(kwargs, "kwargs")
        found = [job for job in found if _same(job.kwargs, expected_kwargs)]
    return found


def assert_enqueued(
    task: Task | str | None = None,
    *,
    args: list | tuple | None = None,
    kwargs: dict | None = None,
    queue: str | None = None,
    priority: int | None = None,
    count: int | None = None,
    status: str | tuple[str, ...] | None = _WAITING_TO_RUN,
    using: str | None = None,
) -> list[Job]:
    """Assert that jobs matching were enqueued (READY or WAITING, by
    default): at least one, or exactly ``count``. Returns them, oldest
    first.

    The criteria are :func:`enqueued`'s. The AssertionError lists every job
    there is (task, arguments, queue, priority, status), so a failure shows
    what was enqueued instead.
    """
    found = enqueued(
        task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        status=status,
        using=using,
    )
    if (len(found) >= 1) if count is None else (len(found) == count):
        return found
    what = _criteria(task, args, kwargs, queue, priority, status)
    expected = "at least one job" if count is None else _jobs(count)
    raise AssertionError(
        f"Expected {expected} {what}; found {len(found)}.\n"
        f"{_listing(_database(using, task))}"
    )


def assert_not_enqueued(
    task: Task | str | None = None,
    *,
    args: list | tuple | None = None,
    kwargs: dict | None = None,
    queue: str | None = None,
    priority: int | None = None,
    status: str | tuple[str, ...] | None = _WAITING_TO_RUN,
    using: str | None = None,
) -> None:
    """Assert that no job matching was enqueued (READY or WAITING, by
    default); with no criteria, that no job is waiting at all. The criteria are
    :func:`enqueued`'s; the AssertionError lists the jobs that match."""
    found = enqueued(
        task,
        args=args,
        kwargs=kwargs,
        queue=queue,
        priority=priority,
        status=status,
        using=using,
    )
    if found:
        what = _criteria(task, args, kwargs, queue, priority, status)
        lines = [_describe_job(job) for job in found[:_LISTED]]
        if len(found) > _LISTED:
            lines.append(f"... and {len(found) - _LISTED} more")
        raise AssertionError(
            f"Expected no job {what}; found {len(found)}:\n" + "\n".join(lines)
        )


def _task_path(task) -> str:
    if isinstance(task, str):
        return task
    path = getattr(task, "module_path", None)
    if not isinstance(path, str):
        raise TypeError(f"task must be a Task or a dotted path, not {task!r}.")
    return path


def _as_stored(value, where: str):
    """``value`` as enqueue stores it (tuples as lists, and so on); as it is
    if it could not be stored."""
    try:
        return to_json(value, where)
    except NotJSON:
        return value


def _same(stored, expected) -> bool:
    """Equal as JSON: True is not 1 (Python's ``==`` says it is)."""
    if isinstance(stored, bool) or isinstance(expected, bool):
        return type(stored) is type(expected) and stored == expected
    if isinstance(stored, list) and isinstance(expected, list):
        return len(stored) == len(expected) and all(
            _same(a, b) for a, b in zip(stored, expected, strict=True)
        )
    if isinstance(stored, dict) and isinstance(expected, dict):
        return stored.keys() == expected.keys() and all(
            _same(value, expected[key]) for key, value in stored.items()
        )
    return stored == expected


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _criteria(task, args, kwargs, queue, priority, status) -> str:
    """What an assertion looked for, in words."""
    parts = [
        "of any task" if task is None else f"of {_task_path(task)}",
        "in any status" if status is None else f"with status {_statuses(status)}",
    ]
    if args is not None:
        parts.append(f"with args {_as_stored(args, 'args')!r}")
    if kwargs is not None:
        parts.append(f"with kwargs {_as_stored(kwargs, 'kwargs')!r}")
    if queue is not None:
        parts.append(f"in queue {queue!r}")
    if priority is not None:
        parts.append(f"with priority {priority}")
    return " ".join(parts)


def _statuses(status) -> str:
    if isinstance(status, tuple):
        return " or ".join(getattr(one, "value", one) for one in status)
    return getattr(status, "value", status)


def _database(using: str | None, task=None) -> str:
    """``using``, else the database of the backend ``task``'s jobs go to
    (routes included; a Task of a DatabaseBackend), else the ``default``
    backend's (``default_database()``)."""
    if using is not None:
        return using
    if isinstance(task, Task):
        alias = routed_backend(task)
        if isinstance(task_backends[alias], DatabaseBackend):
            return backend_database(alias)
    return default_database()


def _listing(using: str) -> str:
    """Every job there is in database ``using``, oldest first (the first
    ``_LISTED``), for an assertion's message."""

    jobs = Job.objects.using(using).order_by("id")
    total = jobs.count()
    if not total:
        return "No job was enqueued."
    lines = [f"Jobs enqueued ({total}, oldest first):"]
    lines += [_describe_job(job) for job in jobs[:_LISTED]]
    if total > _LISTED:
        lines.append(f"  ... and {total - _LISTED} more")
    return "\n".join(lines)


def _describe_job(job: Job) -> str:
    return (
        f"  #{job.pk} {job.task_path} args={job.args!r} kwargs={job.kwargs!r} "
        f"queue={job.queue_name!r} priority={job.priority} status={job.status} "
        f"attempts={job.attempts}/{job.max_attempts}"
    )


# For test classes and fixtures ------------------------------------------------


class BackgroundJobs:
    """:func:`run_jobs`, :func:`enqueued`, :func:`assert_enqueued` and
    :func:`assert_not_enqueued` on one database (``using``; None: as each
    function's own default): what the pytest fixture ``bgtasks`` gives."""

    def __init__(self, using: str | None = None):
        self.using = using

    def run_jobs(self, **options: Any) -> list[TaskResult]:
        """:func:`run_jobs` (``queues``, ``now``, ``limit``)."""
        return run_jobs(**{"using": self.using, **options})

    def enqueued(self, task=None, **criteria: Any) -> list[Job]:
        """:func:`enqueued`."""
        return enqueued(task, **{"using": self.using, **criteria})

    def assert_enqueued(self, task=None, **criteria: Any) -> list[Job]:
        """:func:`assert_enqueued`."""
        return assert_enqueued(task, **{"using": self.using, **criteria})

    def assert_not_enqueued(self, task=None, **criteria: Any) -> None:
        """:func:`assert_not_enqueued`."""
        assert_not_enqueued(task, **{"using": self.using, **criteria})


class BackgroundJobsTestMixin:
    """For a ``django.test.TestCase`` (or ``TransactionTestCase``) of a
    project whose ``TASKS`` use ``DatabaseBackend``: run the jobs a test
    enqueued and check what it enqueued::

        class SignupTests(BackgroundJobsTestMixin, TestCase):
            def test_welcome(self):
                sign_up("ada@example.com")
                self.assert_enqueued(send_welcome)
                [result] = self.run_jobs()
                self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
    """

    def run_jobs(self, **options: Any) -> list[TaskResult]:
        """:func:`run_jobs`."""
        return run_jobs(**options)

    def enqueued(self, task=None, **criteria: Any) -> list[Job]:
        """:func:`enqueued`."""
        return enqueued(task, **criteria)

    def assert_enqueued(self, task=None, **criteria: Any) -> list[Job]:
        """:func:`assert_enqueued`."""
        return assert_enqueued(task, **criteria)

    def assert_not_enqueued(self, task=None, **criteria: Any) -> None:
        """:func:`assert_not_enqueued`."""
        assert_not_enqueued(task, **criteria)
