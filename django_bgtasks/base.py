"""The task and result classes of the database backend, and ``@task``."""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from django.db import connections
from django.utils import timezone

from .backoff import Backoff
from .compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_PRIORITY,
    DEFAULT_TASK_QUEUE_NAME,
    InvalidTask,
    Task,
    TaskResult,
    task_backends,
)
from .limits import Limit
from .private_api import new_result, result_maker
from .steps import Step
from .unique import Unique


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseTask(Task):
    """A ``django.tasks`` Task with the database backend's options.

    ``max_attempts``: attempts before the job ends FAILED (1 = no retries);
    ``backoff``: the delay before each retry, a :class:`Backoff`;
    ``timeout``: seconds an attempt may run before its process is ended.
    ``None`` takes the ``BGTASKS`` setting when the job is enqueued.
    ``retry_on``: the exception classes that may be retried (``None``:
    every one); ``fail_on``: those that end the job FAILED at once, even
    if listed in ``retry_on``.
    ``expires``: a job not started by then never runs (a datetime, or a
    timedelta counted from each enqueue).
    ``unique``: at most one job with the same key (a :class:`Unique`, or
    True for its defaults); not part of the task's identity (results'
    tasks compare equal whatever it is).
    ``store_result``: False stores no return value (the job's result has
    None); ``delete_on_success``: True deletes the job's row once it has
    succeeded, in the transaction that records its success.
    ``atomic``: True runs the task inside a transaction on the job's
    database that also records its success: its writes there and the job's
    SUCCESSFUL commit together, or not at all (a synchronous function only).
    ``limit``: at most so many of its jobs running at once, or starting per
    period, across every worker (a :class:`Limit`, or a dict of its
    arguments); not part of the task's identity.
    """

    max_attempts: int | None = None
    backoff: Backoff | None = None
    timeout: float | None = None
    expires: datetime | timedelta | None = None
    unique: Unique | None = field(default=None, compare=False)
    retry_on: tuple[type[BaseException], ...] | None = None
    fail_on: tuple[type[BaseException], ...] = ()
    store_result: bool = True
    delete_on_success: bool = False
    atomic: bool = False
    limit: Limit | None = field(default=None, compare=False)
    # The options a call chose with using(): a route (routes.py) leaves
    # those alone.
    chosen_options: frozenset[str] = field(
        default=frozenset(), compare=False, repr=False
    )

    def __post_init__(self):
        # The framework's own @task passes its keywords through as they
        # are: a backoff given as seconds or a dict is made a Backoff here,
        # and one exception class a tuple of one.
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            object.__setattr__(self, "backoff", Backoff.coerce(self.backoff))
        object.__setattr__(self, "unique", Unique.coerce(self.unique))
        object.__setattr__(self, "limit", Limit.coerce(self.limit))
        if self.retry_on is not None:
            object.__setattr__(self, "retry_on", exception_classes(self.retry_on))
        object.__setattr__(self, "fail_on", exception_classes(self.fail_on))
        for name in ("store_result", "delete_on_success", "atomic"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidTask(f"{name} must be True or False.")
        if self.atomic and inspect.iscoroutinefunction(self.func):
            # Its queries would run on other threads' connections, outside
            # the transaction.
            raise InvalidTask("An atomic task must be a synchronous function.")
        Task.__post_init__(self)

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | timedelta | None = None,
        backend: str | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | dict | float | None = None,
        timeout: float | None = None,
        expires: datetime | timedelta | None = None,
        unique: Unique | bool | None = None,
    ) -> DatabaseTask:
        """Return a copy with other options; ``run_after`` and ``expires``
        may be timedeltas, counted from now (as given to ``@task``,
        ``expires`` counts from each enqueue)."""
        if isinstance(run_after, timedelta):
            run_after = _from_now(run_after, "run_after")
        changes: dict[str, Any] = {}
        if max_attempts is not None:
            changes["max_attempts"] = max_attempts
        if backoff is not None:
            changes["backoff"] = Backoff.coerce(backoff)
        if timeout is not None:
            changes["timeout"] = timeout
        if isinstance(expires, timedelta):
            if expires <= timedelta(0):
                raise InvalidTask(
                    f"expires must be a timedelta above 0, not {expires!r}."
                )
            expires = _from_now(expires, "expires")
        if expires is not None:
            changes["expires"] = expires
        if unique is not None:
            changes["unique"] = Unique.coerce(unique)
        task = Task.using(
            self,
            priority=priority,
            queue_name=queue_name,
            run_after=run_after,
            backend=backend,
        )
        chosen = {
            name
            for name, value in (
                ("priority", priority),
                ("queue_name", queue_name),
                ("backend", backend),
            )
            if value is not None
        }
        if not chosen <= self.chosen_options:
            changes["chosen_options"] = self.chosen_options | chosen
        return replace(task, **changes) if changes else task

    def step(self, *args: Any, **kwargs: Any) -> Step:
        """This task called with ``args`` and ``kwargs``, as a step of a
        workflow (``django_bgtasks.chain``, ``group``, ``chord``)."""
        return Step(self, args, kwargs)

    def enqueue_many(self, calls) -> list[DatabaseTaskResult]:
        """Enqueue this task once per ``(args, kwargs)`` pair in ``calls``,
        in one statement (and one transaction)::

            send_email.enqueue_many(((user.pk,), {}) for user in users)

        Every call is checked before anything is written; it returns the
        results in the order of ``calls``.
        """
        return self.get_backend().enqueue_many(self, calls)


def _from_now(delta: timedelta, option: str) -> datetime:
    """An option given as a timedelta, counted from now."""
    try:
        return timezone.now() + delta
    except OverflowError:
        raise InvalidTask(f"{option} {delta!r} is too far away.") from None


# The database backend's options and their defaults (the framework's Task
# has the others).
_OPTION_DEFAULTS = {
    option.name: option.default
    for option in fields(DatabaseTask)
    if option.name not in {f.name for f in fields(Task)}
}


def exception_classes(value) -> tuple:
    """``value`` (an exception class, or several) as a tuple of classes;
    InvalidTask if it is anything else."""
    classes = value if isinstance(value, tuple | list) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise InvalidTask(
                f"retry_on and fail_on take exception classes, not {cls!r}."
            )
    return tuple(classes)


def task(
    function=None,
    *,
    priority: int = DEFAULT_TASK_PRIORITY,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    max_attempts: int | None = None,
    backoff: Backoff | dict | float | None = None,
    timeout: float | None = None,
    expires: timedelta | None = None,
    unique: Unique | bool | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    fail_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    store_result: bool = True,
    delete_on_success: bool = False,
    atomic: bool = False,
    limit: Limit | dict | None = None,
):
    """Make a function a task, like ``django.tasks.task``, with our options.

    Works on every supported Django; Django 6.1's own ``@task`` forwards
    ``max_attempts`` and ``backoff`` the same way, Django 6.0's does not.
    Under a backend whose tasks are the framework's plain ``Task`` (its
    ``ImmediateBackend`` and ``DummyBackend``, say, in a project's tests) the
    task is a ``DatabaseTask`` still: the options are kept, and that backend
    ignores them.
    """

    def wrapper(func):
        task_class = task_backends[backend].task_class
        if task_class is Task:
            task_class = DatabaseTask
        given = {
            "max_attempts": max_attempts,
            "backoff": backoff,
            "timeout": timeout,
            "expires": expires,
            "unique": unique or None,
            "retry_on": retry_on,
            "fail_on": fail_on,
            "store_result": store_result,
            "delete_on_success": delete_on_success,
            "atomic": atomic,
            "limit": limit,
        }
        # Only the options given (DatabaseTask checks and coerces them).
        options = {
            name: value
            for name, value in given.items()
            if value != _OPTION_DEFAULTS[name]
        }
        if options and not issubclass(task_class, DatabaseTask):
            raise InvalidTask(
                f"Task backend {backend!r} does not take the options of "
                f"django_bgtasks.backend.DatabaseBackend ({', '.join(options)})."
            )
        return task_class(
            func=func,
            priority=priority,
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            run_after=None,
            **options,
        )

    if function is not None:
        return wrapper(function)
    return wrapper


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseTaskResult(TaskResult):
    """A ``django.tasks`` TaskResult that can wait for its job to finish."""

    @classmethod
    def from_stored(cls, *, return_value=None, **fields):
        """A result from stored values (every field), without ``__init__``:
        stored arguments are JSON already, and normalising them again would
        cost the worker time on every job."""
        return new_result(cls, fields.items(), [("_return_value", return_value)])

    @classmethod
    def new_jobs(cls, ids, arguments, **shared) -> list[DatabaseTaskResult]:
        """The results of new jobs, one per id and ``(args, kwargs)``, with
        the ``shared`` fields; like ``from_stored``, made quickly for bulk
        enqueues."""
        make = result_maker(
            cls,
            [*shared.items(), ("_return_value", None)],
            ("id", "args", "kwargs", "errors", "worker_ids"),
        )
        return [
            make(str(pk), args, kwargs, [], [])
            for pk, (args, kwargs) in zip(ids, arguments, strict=True)
        ]

    def wait(self, timeout: float | None = None, *, poll_interval: float = 0.05):
        """Refresh until the job has finished, for at most ``timeout`` seconds.

        Return the result (refreshed in place); raise ``TimeoutError`` if the
        job is still unfinished when the time is up. Polls the database,
        starting every ``poll_interval`` seconds and slowing down to one
        second. Waiting inside a transaction is refused: the worker cannot
        see a job the transaction has not committed, and on MySQL the
        transaction would not see the worker's result either.
        """
        self._check_not_in_transaction()
        for pause in _pauses(timeout, poll_interval):
            self.refresh()
            if self.is_finished:
                return self
            time.sleep(pause)
        self.refresh()
        if self.is_finished:
            return self
        raise self._timeout_error()

    async def async_wait(
        self, timeout: float | None = None, *, poll_interval: float = 0.05
    ):
        """``wait()`` for async code: ``await result.async_wait(timeout=5)``."""
        for pause in _pauses(timeout, poll_interval):
            await self.arefresh()
            if self.is_finished:
                return self
            await asyncio.sleep(pause)
        await self.arefresh()
        if self.is_finished:
            return self
        raise self._timeout_error()

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(
            f"Job {self.id} ({self.task.module_path}) has not finished: "
            f"its status is {self.status}."
        )

    def _check_not_in_transaction(self) -> None:
        if connections[task_backends[self.backend].database].in_atomic_block:
            raise RuntimeError(
                "DatabaseTaskResult.wait() cannot run inside a transaction: the "
                "worker does not see jobs the transaction has not committed. "
                "Wait after the transaction (e.g. in transaction.on_commit)."
            )


def _pauses(timeout: float | None, first: float):
    """Yield pauses between polls: growing from ``first`` to one second, and
    ending when ``timeout`` seconds have passed (never, for None)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = first
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            pause = min(pause, left)
        yield pause
        pause = min(pause * 1.5, 1.0)
