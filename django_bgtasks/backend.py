"""The ``django.tasks`` backend: jobs are rows in the project's database.

::

    TASKS = {
        "default": {
            "BACKEND": "django_bgtasks.backend.DatabaseBackend",
            "QUEUES": ["default", "emails"],
        }
    }

``enqueue`` writes the job with the ORM on the current connection, so inside
``transaction.atomic()`` (or ``ATOMIC_REQUESTS``) the job exists only if the
transaction commits. Everything that can be wrong with a job is refused here,
before any row is written.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import IntegrityError, router, transaction
from django.utils import timezone

from . import notify, registry, tracing
from .backoff import Backoff
from .base import DatabaseTask, DatabaseTaskResult
from .compat import (
    BaseTaskBackend,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from .conf import bgtasks_settings, settings_generation
from .db import DatabaseNow, database_now
from .exceptions import DuplicateJob, InvalidTaskArguments, TaskNotRegistered
from .limits import task_limit_name
from .models import Job, JobDependency, JobStatus
from .private_api import send_to_each
from .routes import route_for, routed_backend
from .rows import job_result, task_for_job, unregistered_task
from .serialization import NotJSON, check_size, to_json, to_json_sized
from .sql.insert import (
    CHUNK,
    EncodedJSON,
    insert_job_chunks,
    insert_jobs,
    insert_rows,
)
from .steps import Node
from .unique import held_while
from .workflows import WorkflowResult, plan

MAX_ATTEMPTS_LIMIT = 1000
MIN_RUN_AFTER = datetime(1, 1, 2)
MAX_RUN_AFTER = datetime(9999, 12, 30)
MAX_TIMEOUT = 7 * 24 * 3600  # a week
MAX_EXPIRES = timedelta(days=3653)  # ten years
# Inserts of a unique job whose duplicate left its span between the
# refused insert and the look-up, before giving up.
UNIQUE_TRIES = 5
QUEUE_NAME_MAX_LENGTH = Job._meta.get_field("queue_name").max_length


class DatabaseBackend(BaseTaskBackend):
    """Store jobs in the database; ``manage.py runworker`` runs them."""

    task_class = DatabaseTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias, params):
        super().__init__(alias, params)
        # OPTIONS["DATABASE"]: the alias of the database that keeps this
        # backend's jobs (``databases.py``); None: the routers' choice.
        self._database_option = self.options.get("DATABASE")
        # id(task): (task, settings generation, columns); see _validated_columns.
        self._validated: dict[int, tuple[Any, int, dict[str, Any]]] = {}
        # (id(task), *options): (task, the task as routed); _copy_of.
        self._routed_tasks: dict[tuple, tuple[Any, Any]] = {}

    @property
    def database(self) -> str:
        """The alias of the database that keeps this backend's jobs: its
        ``OPTIONS["DATABASE"]``, else ``router.db_for_write(Job,
        backend=<this alias>)``. Reads use it too: a result read right
        after an enqueue must see the job."""
        if self._database_option is not None:
            return self._database_option
        return router.db_for_write(Job, backend=self.alias)

    def validate_task(self, task) -> None:
        """Refuse a task this backend cannot run; register the ones it can."""
        # Types first: the framework's own checks assume them.
        if type(task.priority) is not int:
            raise InvalidTask(
                f"priority must be a whole number between -100 and 100, not "
                f"{task.priority!r}."
            )
        if task.run_after is not None:
            _check_run_after(task.run_after)
        _check_queue_name(task.queue_name)
        super().validate_task(task)
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None:
            _check_max_attempts(max_attempts)
        backoff = getattr(task, "backoff", None)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise InvalidTask(f"backoff must be a Backoff, not {backoff!r}.")
        _check_timeout(getattr(task, "timeout", None))
        _check_expires(getattr(task, "expires", None))
        unique = getattr(task, "unique", None)
        if unique is not None and unique.period and task.delete_on_success:
            raise InvalidTask(
                "A unique period and delete_on_success cannot go together: "
                "deleting the job would release the period's key."
            )
        registry.register(task)

    def enqueue(self, task, args, kwargs) -> DatabaseTaskResult:
        """Write a READY job for ``task`` and return its result handle.

        Raises InvalidTask (or its subclass InvalidTaskArguments) before
        writing anything if the task, its options or its arguments are
        invalid.
        """
        routed = self._routed_elsewhere(task)
        if routed is not None:
            return routed.get_backend().enqueue(routed, args, kwargs)
        return self._enqueue_one(task, self._validated_columns(task), args, kwargs)

    def enqueue_job(self, task, args, kwargs, **job_fields) -> DatabaseTaskResult:
        """Enqueue a validated ``task``; ``job_fields`` set other Job fields
        (the scheduler's ``schedule_id`` and ``scheduled_for``)."""
        routed = self._routed_elsewhere(task)
        if routed is not None:
            return routed.get_backend().enqueue_job(routed, args, kwargs, **job_fields)
        columns = {**self._task_columns(task), **job_fields}
        return self._enqueue_one(task, columns, args, kwargs)

    def _routed_elsewhere(self, task):
        """``task`` as a route moves it to another backend (``routes.py``),
        or None if it stays here: made once per task and backend."""
        alias = routed_backend(task)
        if alias == self.alias:
            return None
        return self._copy_of(task, (alias,), lambda: self._moved(task, alias))

    @staticmethod
    def _moved(task, alias: str):
        routed = replace(task, backend=alias)  # checks that alias exists
        if not isinstance(routed.get_backend(), DatabaseBackend):
            raise InvalidTask(
                f"A route sends {task.module_path} to backend {alias!r}, which "
                f"is not a django_bgtasks DatabaseBackend."
            )
        return routed

    def _copy_of(self, task, options: tuple, make):
        """The copy of ``task`` with other ``options`` that ``make()``
        makes: once per task and options (a copy is checked again as it is
        made)."""
        key = (id(task), *options)
        cached = self._routed_tasks.get(key)
        # The task is held in the entry, so its id is not reused meanwhile.
        if cached is not None and cached[0] is task:
            return cached[1]
        if len(self._routed_tasks) >= VALIDATED_TASKS_KEPT:
            self._routed_tasks.clear()
        copy = make()
        self._routed_tasks[key] = (task, copy)
        return copy

    def _enqueue_one(self, task, columns, args, kwargs) -> DatabaseTaskResult:
        with tracing.enqueued(
            columns["task_path"], columns["queue_name"], self.alias
        ) as trace_context:
            return self._insert_one(task, columns, args, kwargs, trace_context)

    def _insert_one(
        self, task, columns, args, kwargs, trace_context
    ) -> DatabaseTaskResult:
        common = self._with_times(columns, timezone.now(), trace_context)
        arguments = [_json_arguments(args, kwargs, bgtasks_settings.MAX_PAYLOAD_BYTES)]
        if _keyed_limit(task):
            common = _with_limit_key(task, common, arguments[0])
        if task.unique is not None:
            return self._enqueue_unique(task, common, arguments[0])
        [pk] = insert_jobs(self.database, common, arguments)
        [result] = self._results(task, common, [pk], arguments)
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue_many(self, task, calls) -> list[DatabaseTaskResult]:
        """Enqueue ``task`` once per ``(args, kwargs)`` in ``calls``, in one
        transaction (one statement per ``CHUNK`` jobs); nothing is written
        if any call is invalid."""
        routed = self._routed_elsewhere(task)
        if routed is not None:
            return routed.get_backend().enqueue_many(routed, calls)
        columns = self._validated_columns(task)
        with collection_paused():
            calls = list(calls)
            return self._enqueue_many(task, columns, calls)

    def _enqueue_many(self, task, columns, calls) -> list[DatabaseTaskResult]:
        with tracing.enqueued(
            columns["task_path"], columns["queue_name"], self.alias, len(calls)
        ) as trace_context:
            common = self._with_times(columns, timezone.now(), trace_context)
            return self._insert_many(task, common, calls)

    def _insert_many(self, task, common, calls) -> list[DatabaseTaskResult]:
        limit = bgtasks_settings.MAX_PAYLOAD_BYTES

        def checked(start: int) -> list[tuple[list, dict]]:
            return [
                _call_arguments(number, call, limit)
                for number, call in enumerate(calls[start : start + CHUNK], start)
            ]

        using = self.database
        if task.unique is not None:
            # One job at a time, each checked against the unique index
            # (a duplicate within the calls gets the first one's result).
            everything = [
                argument
                for start in range(0, len(calls), CHUNK)
                for argument in checked(start)
            ]
            now = database_now(using) if task.unique.period else None
            keys = [self._unique_key(task, common, a, using, now) for a in everything]
            results = [None] * len(everything)
            with transaction.atomic(using=using):
                # In key order: two such calls wait on each other's keys in
                # one order, and cannot deadlock.
                for n in sorted(range(len(everything)), key=keys.__getitem__):
                    columns = common
                    if _keyed_limit(task):
                        columns = _with_limit_key(task, common, everything[n])
                    results[n] = self._enqueue_unique(
                        task, columns, everything[n], keys[n]
                    )
            return results
        if _keyed_limit(task):
            # Jobs of one limit key share their columns: a statement per key.
            everything = [
                argument
                for start in range(0, len(calls), CHUNK)
                for argument in checked(start)
            ]
            by_key: dict[str, list[int]] = {}
            rows = [_with_limit_key(task, common, a) for a in everything]
            for n, row in enumerate(rows):
                by_key.setdefault(row["limit_key"], []).append(n)
            results = [None] * len(everything)
            with transaction.atomic(using=using):
                for numbers in by_key.values():
                    arguments = [everything[n] for n in numbers]
                    row = rows[numbers[0]]
                    ids = insert_jobs(using, row, arguments)
                    made = self._results(task, row, ids, arguments)
                    for n, result in zip(numbers, made, strict=True):
                        results[n] = result
            send_to_each(task_enqueued, type(self), results)
            return results
        if len(calls) <= CHUNK:
            arguments = checked(0)
            ids = insert_jobs(using, common, arguments)
            results = self._results(task, common, ids, arguments)
        else:
            # Each chunk is checked while the database inserts the last one.
            chunks = (checked(start) for start in range(0, len(calls), CHUNK))
            results = []

            def inserted(ids, arguments):
                results.extend(self._results(task, common, ids, arguments))

            insert_job_chunks(using, common, chunks, inserted)
        send_to_each(task_enqueued, type(self), results)
        return results

    def enqueue_workflow(self, workflow: Node) -> WorkflowResult:
        """Write every job of ``workflow`` (``django_bgtasks.steps``) and
        its edges, in one transaction (the caller's, if one is open): one
        statement for the jobs (MySQL: one per job), one for the edges.
        Every step is checked first, as ``enqueue`` checks a job: nothing
        is written if one is invalid."""
        laid = plan(workflow)
        first = laid.steps[0].task
        with tracing.enqueued(
            f"workflow of {first.module_path}",
            first.queue_name,
            self.alias,
            len(laid.steps),
        ) as trace_context:
            return self._insert_workflow(laid, trace_context)

    def _insert_workflow(self, laid, trace_context) -> WorkflowResult:
        waiting_for = Counter(edge.job for edge in laid.edges)
        with_dependents = {edge.waits_for for edge in laid.edges}
        workflow_id = uuid.uuid4()
        now = timezone.now()
        limit = bgtasks_settings.MAX_PAYLOAD_BYTES
        jobs = []
        for n, step in enumerate(laid.steps):
            task = step.task
            where = f"Step {n} ({task.module_path})"
            if task.backend != self.alias:
                raise InvalidTask(
                    f"{where} uses backend {task.backend!r}: every step of a "
                    f"workflow must use the workflow's, {self.alias!r}."
                )
            columns = self._validated_columns(task)
            if getattr(task, "unique", None) is not None:
                raise InvalidTask(f"{where} is unique: a workflow's steps cannot be.")
            if getattr(task, "delete_on_success", False):
                raise InvalidTask(
                    f"{where} deletes its job on success: a workflow's steps "
                    f"cannot (its result reads them)."
                )
            try:
                args, kwargs = _json_arguments(step.args, step.kwargs, limit)
            except InvalidTaskArguments as exc:
                raise InvalidTaskArguments(f"{where}: {exc}") from None
            waits = waiting_for[n]
            if _keyed_limit(task):
                columns = _with_limit_key(task, columns, (args, kwargs))
            row = {
                **self._with_times(columns, now, trace_context),
                "status": JobStatus.WAITING if waits else JobStatus.READY,
                "workflow_id": workflow_id,
                "waiting_for": waits,
                "has_dependents": n in with_dependents,
            }
            jobs.append({**row, "args": args, "kwargs": kwargs})
        using = self.database
        with transaction.atomic(using=using):
            ids = insert_rows(using, Job, jobs)
            insert_rows(
                using,
                JobDependency,
                [
                    {
                        "job_id": ids[edge.job],
                        "waits_for_id": ids[edge.waits_for],
                        "position": edge.position,
                        "passes": edge.passes,
                        "needs_success": edge.needs_success,
                        "ended_as": "",
                    }
                    for edge in laid.edges
                ],
            )
            notify.wake(
                using, {j["queue_name"] for j in jobs if j["status"] == "READY"}
            )
        jobs = [Job(pk=pk, **row) for pk, row in zip(ids, jobs, strict=True)]
        result = WorkflowResult(str(workflow_id), [], self.alias)
        result._set(jobs)
        send_to_each(task_enqueued, type(self), result.members)
        return result

    def _unique_key(self, task, common, arguments, using: str, now=None) -> str:
        """The unique key of a job of ``task`` with ``arguments``."""
        unique = task.unique
        # A period's number by the database's clock, as every time two
        # hosts compare.
        if unique.period and now is None:
            now = database_now(using)
        args, kwargs = arguments
        return unique.key_for(f"{self.alias}:{common['task_path']}", args, kwargs, now)

    def _enqueue_unique(
        self, task, common, arguments, key: str | None = None
    ) -> DatabaseTaskResult:
        """Enqueue one job of ``task`` (whose ``unique`` is set) unless a job
        holds its key: then that job's result, or DuplicateJob. A holder
        that has left the span of its key (``unique.held_while``) gives it
        up here."""
        using = self.database
        key = key or self._unique_key(task, common, arguments, using)
        row = {**common, "unique_key": key}
        jobs = Job.objects.using(using)
        error = None
        for _ in range(UNIQUE_TRIES):
            try:
                # A savepoint: a duplicate leaves the caller's transaction
                # usable.
                with transaction.atomic(using=using):
                    [pk] = insert_jobs(using, row, [arguments])
            except IntegrityError as exc:
                error = exc
                holder = jobs.filter(unique_key=key).first()
                if holder is None:
                    continue  # released meanwhile (or another constraint)
                # Releases are conditional, so two enqueues releasing one
                # key at once release it once.
                held = jobs.filter(pk=holder.pk, unique_key=key)
                statuses = held_while(key)
                if statuses is not None and holder.status not in statuses:
                    # Out of its span: the key is free.
                    held.exclude(status__in=statuses).update(unique_key=None)
                    continue
                if (
                    holder.status == JobStatus.READY
                    and holder.expires_at is not None
                    and held.filter(
                        status=JobStatus.READY, expires_at__lte=DatabaseNow()
                    ).update(unique_key=None)
                ):
                    # Expired, not judged yet (a worker will cancel it): it
                    # will never run, so it held nothing.
                    continue
                result = self._result_of(holder)
                if task.unique.on_duplicate == "error":
                    raise DuplicateJob(
                        f"Job {holder.pk} holds the same unique key (task "
                        f"{common['task_path']!r}).",
                        result,
                    ) from None
                return result
            [result] = self._results(task, row, [pk], [arguments])
            task_enqueued.send(type(self), task_result=result)
            return result
        raise error

    def _validated_columns(self, task) -> dict[str, Any]:
        """``validate_task(task)``, then the columns of a new job of
        ``task`` but its arguments and times; both once per Task object
        (Tasks are immutable) while the settings stay the same: they took
        about a tenth of an enqueue's Python."""
        generation = settings_generation.value
        cached = self._validated.get(id(task))
        # The Task is held in the entry, so its id is not reused meanwhile.
        if cached is not None and cached[0] is task and cached[1] == generation:
            return cached[2]
        self.validate_task(task)
        columns = self._task_columns(task)
        if len(self._validated) >= VALIDATED_TASKS_KEPT:
            self._validated.clear()  # using() variants made on the fly
        self._validated[id(task)] = (task, generation, columns)
        return columns

    def _task_columns(self, task) -> dict[str, Any]:
        """The columns of a new job of ``task``, but its arguments and times
        (``run_after`` is None unless the task sets it: see ``_with_times``)."""
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is None:
            max_attempts = bgtasks_settings.MAX_ATTEMPTS
        backoff = getattr(task, "backoff", None) or Backoff.coerce(
            bgtasks_settings.BACKOFF
        )
        run_after = task.run_after.astimezone(UTC) if task.run_after else None
        queue_name, priority, route = self._routed(task)
        return {
            "task_path": task.module_path,
            "backend": self.alias,
            "queue_name": queue_name,
            "priority": priority,
            "route": route,
            "status": JobStatus.READY.value,
            "run_after": run_after,
            "task_run_after": run_after,
            # A timedelta until _with_times makes it a time.
            "expires_at": getattr(task, "expires", None),
            "unique_key": None,  # per job, where the task asks (_enqueue_unique)
            # Per job where the limit has a key (_with_limit_key).
            "limit_key": task_limit_name(task),
            "enqueued_at": None,
            "attempts": 0,
            "max_attempts": max_attempts,
            "timeout": getattr(task, "timeout", None) or bgtasks_settings.TIMEOUT,
            "backoff": EncodedJSON(backoff.as_dict()),
            "worker_ids": [],
            "errors": [],
            "schedule_id": None,
            "scheduled_for": None,
        }

    def _routed(self, task) -> tuple[str, int, str]:
        """The queue and priority of a new job of ``task``, as the first
        route that matches its path sets them (``routes.py``), but those
        the call chose (``.using()``); and the route's pattern, if it set
        any ('' if none). A route to another backend does not apply here
        (the call or a workflow kept the job on this one)."""
        route = route_for(task.module_path)
        if route is None or route.backend not in (None, self.alias):
            return task.queue_name, task.priority, ""
        chosen = getattr(task, "chosen_options", frozenset())
        queue_name, priority, applied = task.queue_name, task.priority, False
        if route.queue_name is not None and "queue_name" not in chosen:
            queue_name, applied = route.queue_name, True
        if route.priority is not None and "priority" not in chosen:
            priority, applied = route.priority, True
        if route.backend == self.alias and "backend" not in chosen:
            applied = True  # here by the route (or it names where it is)
        if self.queues and queue_name not in self.queues:
            raise InvalidTask(
                f"Route {route.pattern!r} sends {task.module_path} to queue "
                f"{queue_name!r}, which backend {self.alias!r} does not accept "
                f"(its QUEUES: {', '.join(sorted(self.queues))})."
            )
        return queue_name, priority, route.pattern if applied else ""

    @staticmethod
    def _with_times(
        columns: dict[str, Any], now, trace_context: dict | None = None
    ) -> dict[str, Any]:
        """``columns`` of jobs enqueued ``now`` (due now unless the task has
        a ``run_after``; expiring ``expires`` after now if that is a
        timedelta), in the trace of ``trace_context``."""
        expires = columns["expires_at"]
        if isinstance(expires, timedelta):
            expires = now + expires
        elif expires is not None:
            expires = expires.astimezone(UTC) if timezone.is_aware(expires) else expires
        return {
            **columns,
            "run_after": columns["run_after"] or now,
            "expires_at": expires,
            "enqueued_at": now,
            "trace_context": trace_context,
        }

    def _results(self, task, row: dict, ids, arguments) -> list[DatabaseTaskResult]:
        """The results of new jobs of ``task`` (with the columns ``row``),
        one per id and ``(args, kwargs)``. A routed job's task is the task
        as routed (its queue and priority are the row's)."""
        if (row["queue_name"], row["priority"]) != (task.queue_name, task.priority):
            task = self._as_routed(task, row["queue_name"], row["priority"])
        return DatabaseTaskResult.new_jobs(
            ids,
            arguments,
            task=task,
            status=TaskResultStatus.READY,
            enqueued_at=row["enqueued_at"],
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            backend=self.alias,
        )

    def _as_routed(self, task, queue_name: str, priority: int):
        """``task`` with the queue and priority a route gave its jobs: made
        once per task and route (a copy is checked again as it is made)."""
        return self._copy_of(
            task,
            (queue_name, priority),
            lambda: replace(task, queue_name=queue_name, priority=priority),
        )

    def get_result(self, result_id: str) -> DatabaseTaskResult:
        """The result of job ``result_id`` enqueued on this backend;
        TaskResultDoesNotExist if none. Its task is the task as enqueued,
        ``run_after`` included (None if it had none). A job whose task is
        no longer registered still has its result, with a stand-in task
        that raises TaskNotRegistered when called."""
        try:
            job = Job.objects.using(self.database).get(
                pk=int(result_id), backend=self.alias
            )
        except (TypeError, ValueError, OverflowError, Job.DoesNotExist):
            raise TaskResultDoesNotExist(result_id) from None
        return self._result_of(job)

    def _result_of(self, job: Job) -> DatabaseTaskResult:
        """``job`` as the result of the task it was enqueued with."""
        try:
            task = task_for_job(job)
        except TaskNotRegistered:
            return job_result(job, unregistered_task(job))
        if task.run_after != job.task_run_after:
            with contextlib.suppress(InvalidTask):
                task = replace(task, run_after=job.task_run_after)
        expires = getattr(task, "expires", None)
        if isinstance(expires, timedelta) and job.expires_at is not None:
            expires = job.enqueued_at + expires  # as the task's own gives it
        if job.expires_at != expires:
            with contextlib.suppress(InvalidTask):
                task = replace(task, expires=job.expires_at)
        return job_result(job, task)

    def check(self, **kwargs):
        if not apps.is_installed("django_bgtasks"):
            yield checks.Error(
                f"Task backend {self.alias!r} needs 'django_bgtasks' in "
                f"INSTALLED_APPS.",
                id="bgtasks.E010",
            )
        for queue in self.queues:
            if not isinstance(queue, str) or not 0 < len(queue) <= (
                QUEUE_NAME_MAX_LENGTH
            ):
                yield checks.Error(
                    f"Task backend {self.alias!r} has an invalid queue name {queue!r}.",
                    hint=f"Queue names are strings of 1 to "
                    f"{QUEUE_NAME_MAX_LENGTH} characters.",
                    id="bgtasks.E011",
                )


class _CollectionPause:
    """Python's cyclic garbage collector off while any bulk enqueue runs.
    Its tens of thousands of new objects (results, arguments) set off
    collections that walk every object of the process, again and again:
    30-40% of an ``enqueue_many`` of 50,000 jobs. They hold no reference
    cycles, so reference counting frees what they drop. The collector is
    process-wide: the first of overlapping pauses (threads) turns it off,
    the last turns it on again, unless it was off before the first."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pauses = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._pauses == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._pauses += 1
        try:
            yield
        finally:
            with self._lock:
                self._pauses -= 1
                if self._pauses == 0 and self._was_enabled:
                    gc.enable()


collection_paused = _CollectionPause()


def _keyed_limit(task) -> bool:
    limit = getattr(task, "limit", None)
    return limit is not None and limit.key is not None


def _with_limit_key(task, columns: dict[str, Any], arguments) -> dict[str, Any]:
    """``columns`` with the limit key of a job of ``task`` (whose limit has
    a key) called with ``arguments``."""
    args, kwargs = arguments
    key = task.limit.key_for(task_limit_name(task), task.func, args, kwargs)
    return {**columns, "limit_key": key}


def _check_max_attempts(value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_ATTEMPTS_LIMIT
    ):
        raise InvalidTask(
            f"max_attempts must be a whole number from 1 to {MAX_ATTEMPTS_LIMIT}, "
            f"not {value!r}."
        )


def _check_queue_name(name: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= QUEUE_NAME_MAX_LENGTH:
        raise InvalidTask(
            f"A queue name is text of 1 to {QUEUE_NAME_MAX_LENGTH} characters, "
            f"not {name!r}."
        )
    try:
        to_json(name, "queue name")
    except NotJSON as exc:
        raise InvalidTask(f"Invalid queue name: {exc}") from None


def _check_run_after(value: Any) -> None:
    if not isinstance(value, datetime):
        raise InvalidTask(
            f"run_after must be a datetime (or, with using(), a timedelta), not "
            f"{value!r}."
        )
    if timezone.is_aware(value):
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            raise InvalidTask(f"run_after {value} is out of range.") from None
        if not MIN_RUN_AFTER <= utc.replace(tzinfo=None) <= MAX_RUN_AFTER:
            raise InvalidTask(f"run_after {value} is out of range.")


def _check_expires(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, timedelta):
        if not timedelta(0) < value <= MAX_EXPIRES:
            raise InvalidTask(
                f"expires must be a timedelta above 0 and at most ten years, not "
                f"{value!r}."
            )
        return
    if not isinstance(value, datetime):
        raise InvalidTask(f"expires must be a datetime or a timedelta, not {value!r}.")
    if settings.USE_TZ and timezone.is_naive(value):
        raise InvalidTask(f"expires must be an aware datetime under USE_TZ: {value}.")
    try:
        _check_run_after(value)
    except InvalidTask:
        raise InvalidTask(f"expires {value} is out of range.") from None


def _check_timeout(value: Any) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT
    ):
        raise InvalidTask(
            f"timeout must be a number of seconds above 0 (at most {MAX_TIMEOUT}), "
            f"not {value!r}."
        )


# Tasks whose validation and columns _validated_columns keeps: the module's
# tasks, and a few using() variants between two clears.
VALIDATED_TASKS_KEPT = 256


def _call_arguments(number: int, call, limit: int) -> tuple[list, dict]:
    """The stored arguments of call ``number`` of an ``enqueue_many``."""
    try:
        args, kwargs = call
    except (TypeError, ValueError):
        raise InvalidTaskArguments(
            f"Call {number} is not an (args, kwargs) pair: {call!r}."
        ) from None
    if isinstance(args, str | bytes) or not isinstance(kwargs, dict):
        raise InvalidTaskArguments(
            f"Call {number}: args must be a sequence and kwargs a dict."
        )
    try:
        return _json_arguments(args, kwargs, limit)
    except InvalidTaskArguments as exc:
        raise InvalidTaskArguments(f"Call {number}: {exc}") from None


def _json_arguments(args, kwargs, limit: int) -> tuple[list, dict]:
    """Arguments as stored; refused unless JSON brings them back unchanged and
    they fit in ``limit`` bytes (``BGTASKS["MAX_PAYLOAD_BYTES"]``)."""
    try:
        args, args_size = to_json_sized(args, "args")
        if kwargs or type(kwargs) is not dict:
            kwargs, kwargs_size = to_json_sized(kwargs, "kwargs")
        else:  # none, the usual case: a tenth of a bulk enqueue's checks
            kwargs, kwargs_size = {}, 2
    except NotJSON as exc:
        raise InvalidTaskArguments(f"Task arguments must be JSON: {exc}") from None
    try:
        check_size(
            [args, kwargs],
            "Task arguments",
            limit,
            bound=args_size + kwargs_size + 3,
        )
    except NotJSON as exc:
        raise InvalidTaskArguments(str(exc)) from None
    return args, kwargs
