"""Jobs: one enqueued run of a task, with its outcome.

A job's state changes are methods here (``Job.objects.claim``,
``job.mark_succeeded`` ...); the worker and the admin call these verbs and
never write job rows themselves. A finish is conditional on the caller still
holding the job (same status, worker and attempt), so a job taken away from a
worker (put back at shutdown, rescued from a dead worker) is never finished by
it twice.
"""

from __future__ import annotations

import traceback as traceback_module
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from ..base import DatabaseTaskResult, _set_field
from ..compat import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError, TaskResultStatus
from ..exceptions import JobCancelled


class JobStatus(models.TextChoices):
    """The framework's four statuses, plus CANCELLED (read as FAILED by it)."""

    READY = TaskResultStatus.READY.value, TaskResultStatus.READY.label
    RUNNING = TaskResultStatus.RUNNING.value, TaskResultStatus.RUNNING.label
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.SUCCESSFUL.label
    FAILED = TaskResultStatus.FAILED.value, TaskResultStatus.FAILED.label
    CANCELLED = "CANCELLED", pgettext_lazy("Task", "Cancelled")


FINISHED_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED)


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def storable_text(text: str) -> str:
    """``text`` as every supported database stores it in JSON: NUL characters
    and lone surrogates (which an exception message may hold) escaped."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_entry(
    exc: BaseException, *, attempt: int, worker_id: str | None, at: datetime
) -> dict[str, Any]:
    """One attempt's error, as stored in ``Job.errors``."""
    return {
        "exception_class_path": storable_text(class_path(type(exc))),
        "traceback": storable_text("".join(traceback_module.format_exception(exc))),
        "attempt": attempt,
        "worker_id": worker_id,
        "at": at.isoformat(),
    }


class StatusIndex(models.Index):
    """An index of the jobs in some statuses only (READY: the claims' index).

    PostgreSQL and SQLite get a partial index over the rows of those
    statuses, so it stays small however many rows the others hold, and a job
    in any other status costs it no write: a new job writes only the READY
    indexes. MySQL and MariaDB have no partial indexes (Django would drop the
    condition with a warning), so there the index leads with ``status``
    instead.
    """

    def __init__(self, *args, status: str | Sequence[str], **kwargs):
        self.status = status
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        path, args, kwargs = super().deconstruct()
        return path, args, {**kwargs, "status": self.status}

    def create_sql(self, model, schema_editor, using="", **kwargs):
        features = schema_editor.connection.features
        if features.supports_partial_indexes:
            statuses = [self.status] if isinstance(self.status, str) else self.status
            # "status = a OR status = b", not "status IN (a, b)": SQLite uses a
            # partial index only where a term of the query's WHERE is a term
            # of the index's (PostgreSQL proves either form).
            condition = Q(*[("status", s) for s in statuses], _connector=Q.OR)
            index = models.Index(
                fields=self.fields, name=self.name, condition=condition
            )
        else:
            fields = self.fields
            if fields[0] != "status":
                fields = ["status", *fields]
            index = models.Index(fields=fields, name=self.name)
        return index.create_sql(model, schema_editor, using=using, **kwargs)


class UniqueWhenSet(models.UniqueConstraint):
    """A unique constraint whose index holds only the rows where its first
    field is set, on the databases with partial indexes.

    Rows with a NULL never clash in a unique constraint anyway, so this is
    the same rule; the index just skips them (for ``schedule``, every job
    not enqueued by a schedule: one index write fewer per enqueue).
    """

    def _for(self, schema_editor) -> models.UniqueConstraint:
        """The plain constraint this is on ``schema_editor``'s database."""
        partial = schema_editor.connection.features.supports_partial_indexes
        condition = Q((f"{self.fields[0]}__isnull", False)) if partial else None
        return models.UniqueConstraint(
            fields=self.fields, name=self.name, condition=condition
        )

    def constraint_sql(self, model, schema_editor):
        return self._for(schema_editor).constraint_sql(model, schema_editor)

    def create_sql(self, model, schema_editor):
        return self._for(schema_editor).create_sql(model, schema_editor)

    def remove_sql(self, model, schema_editor):
        return self._for(schema_editor).remove_sql(model, schema_editor)


class JobQuerySet(models.QuerySet):
    def ready(self):
        return self.filter(status=JobStatus.READY)

    def running(self):
        return self.filter(status=JobStatus.RUNNING)

    def finished(self):
        return self.filter(status__in=FINISHED_STATUSES)

    def due(self, now: datetime | None = None):
        """READY jobs whose ``run_after`` has come."""
        return self.ready().filter(run_after__lte=now or timezone.now())

    def in_queues(self, queues: list[str] | None):
        """Jobs in these queues; ``None`` means every queue."""
        return self if queues is None else self.filter(queue_name__in=queues)

    def claim(
        self, *, worker_id: str, queues: list[str] | None, limit: int
    ) -> list[Job]:
        """Atomically move up to ``limit`` due jobs to RUNNING for this worker.

        Jobs come in claim order: priority (highest first), then ``run_after``,
        then id. No job is claimed by two workers; see ``claim.py``.
        """
        from ..sql.claim import claim_jobs

        if limit <= 0:
            return []
        return claim_jobs(self.db, worker_id=worker_id, queues=queues, limit=limit)

    # Operator actions (the admin's). Each changes only the jobs in the
    # statuses it applies to and returns how many it changed.

    def retry(self) -> int:
        """Put FAILED and CANCELLED jobs back to READY, due now.

        Attempts are extended, not reset: a job that used all its attempts
        gets one more (``max_attempts`` becomes ``attempts + 1``); its errors
        and worker ids stay as history.
        """
        return self._wake_after(
            self.filter(status__in=[JobStatus.FAILED, JobStatus.CANCELLED]),
            status=JobStatus.READY,
            run_after=timezone.now(),
            finished_at=None,
            return_value=None,
            progress=None,
            max_attempts=Greatest("max_attempts", F("attempts") + 1),
        )

    def cancel(self) -> int:
        """Cancel READY jobs (a RUNNING job cannot be cancelled)."""
        return self.filter(status=JobStatus.READY).update(
            status=JobStatus.CANCELLED, finished_at=timezone.now()
        )

    def run_now(self) -> int:
        """Make delayed READY jobs due now."""
        now = timezone.now()
        return self._wake_after(
            self.filter(status=JobStatus.READY, run_after__gt=now), run_after=now
        )

    def _wake_after(self, jobs, **changes) -> int:
        """Update ``jobs`` and wake the workers of their queues."""
        from .. import notify

        queues = set(jobs.values_list("queue_name", flat=True).distinct())
        count = jobs.update(**changes)
        if count:
            notify.wake(self.db, queues)
        return count


class Job(models.Model):
    """One enqueued run of a task, with its outcome and every attempt's error."""

    id = models.BigAutoField(primary_key=True)
    task_path = models.CharField(_("task"), max_length=255)
    backend = models.CharField(_("backend"), max_length=64, default="default")
    queue_name = models.CharField(_("queue"), max_length=64, default="default")
    priority = models.SmallIntegerField(_("priority"), default=0)
    status = models.CharField(
        _("status"), max_length=10, choices=JobStatus, default=JobStatus.READY
    )
    args = models.JSONField(_("positional arguments"), default=list)
    kwargs = models.JSONField(_("keyword arguments"), default=dict)

    run_after = models.DateTimeField(_("run after"))
    enqueued_at = models.DateTimeField(_("enqueued at"))
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    last_attempted_at = models.DateTimeField(
        _("last attempted at"), null=True, blank=True
    )
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    max_attempts = models.PositiveIntegerField(_("max attempts"), default=1)
    timeout = models.FloatField(
        _("timeout"),
        null=True,
        blank=True,
        help_text=_("Seconds an attempt may run before its process is ended."),
    )
    backoff = models.JSONField(
        _("backoff"), default=dict, help_text=_("Delay before each retry.")
    )
    # The worker holding the job while it is RUNNING; cleared when it ends.
    # No database constraint: a claim should not take locks on worker rows.
    # Deleting a worker row leaves this as it is: the id still says who
    # holds the job, for the worker to finish it or for a rescue.
    worker = models.ForeignKey(
        "WorkerProcess",
        verbose_name=_("worker"),
        related_name="jobs",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,  # bgtasks_job_running_idx: only RUNNING jobs have one
        null=True,
        blank=True,
    )
    worker_ids = models.JSONField(
        _("worker ids"), default=list, help_text=_("The worker of each attempt.")
    )
    # The schedule that made the job, and for which planned time; unique
    # together, so a schedule fires once per planned time.
    schedule = models.ForeignKey(
        "Schedule",
        verbose_name=_("schedule"),
        related_name="jobs",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,  # bgtasks_job_schedule_once leads with it
    )
    scheduled_for = models.DateTimeField(_("scheduled for"), null=True, blank=True)
    return_value = models.JSONField(_("return value"), null=True, blank=True)
    # What a running task last reported: {"current", "total", "message", "at"}.
    progress = models.JSONField(_("progress"), null=True, blank=True)
    errors = models.JSONField(
        _("errors"), default=list, help_text=_("The error of each failed attempt.")
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        permissions = [
            ("retry_job", _("Can retry a failed or cancelled job")),
            ("cancel_job", _("Can cancel a ready job")),
            ("run_job", _("Can run a delayed job now")),
        ]
        indexes = [
            # Claims from some queues, and from every queue (runworker's
            # default): each walks its index in claim order.
            StatusIndex(
                fields=["queue_name", "-priority", "run_after", "id"],
                name="bgtasks_job_ready_idx",
                status=JobStatus.READY,
            ),
            StatusIndex(
                fields=["-priority", "run_after", "id"],
                name="bgtasks_job_ready_any_idx",
                status=JobStatus.READY,
            ),
            # The jobs each worker runs now (rescue, the dashboard).
            StatusIndex(
                fields=["worker"], name="bgtasks_job_running_idx", status="RUNNING"
            ),
            # Finished jobs: counts by status, recent ones (the dashboard),
            # pruning old ones.
            StatusIndex(
                fields=["status", "finished_at"],
                name="bgtasks_job_status_idx",
                status=[status.value for status in FINISHED_STATUSES],
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=TASK_MIN_PRIORITY)
                & Q(priority__lte=TASK_MAX_PRIORITY),
                name="bgtasks_job_priority_range",
            ),
            models.CheckConstraint(
                condition=Q(status__in=JobStatus.values),
                name="bgtasks_job_status_valid",
            ),
            UniqueWhenSet(
                fields=["schedule", "scheduled_for"],
                name="bgtasks_job_schedule_once",
            ),
        ]

    def __str__(self):
        return f"Job {self.pk} ({self.task_path}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def error_list(self) -> list[dict]:
        """``errors``, or what can be read of it if it was corrupted behind
        the ORM's back (a lost history must not block the job)."""
        if not isinstance(self.errors, list):
            return []
        return [
            {
                "exception_class_path": str(e.get("exception_class_path", "")),
                "traceback": str(e.get("traceback", "")),
                **e,
            }
            for e in self.errors
            if isinstance(e, dict)
        ]

    @property
    def duration(self) -> timedelta | None:
        """Time from the last attempt's start to the finish."""
        if self.finished_at and self.last_attempted_at:
            return self.finished_at - self.last_attempted_at
        return None

    # State changes of a job held by a worker ------------------------------

    def _update_if_held(self, **changes: Any) -> bool:
        """Apply ``changes`` only if this worker still holds the job."""
        updated = Job.objects.filter(
            pk=self.pk,
            status=JobStatus.RUNNING,
            worker_id=self.worker_id,
            attempts=self.attempts,
        ).update(**changes)
        if updated:
            for name, value in changes.items():
                setattr(self, name, value)
        return bool(updated)

    def mark_succeeded(self, return_value: Any, *, now: datetime | None = None) -> bool:
        """Record success. False if the job was taken away from this worker."""
        return self._update_if_held(
            status=JobStatus.SUCCESSFUL,
            return_value=return_value,
            finished_at=now or timezone.now(),
            worker=None,
        )

    def mark_failed(self, error: dict, *, now: datetime | None = None) -> bool:
        """Record a final failure. False if the job was taken away."""
        return self._update_if_held(
            status=JobStatus.FAILED,
            errors=[*self.error_list, error],
            finished_at=now or timezone.now(),
            worker=None,
        )

    def mark_lost(self, error: dict, *, now: datetime | None = None) -> bool:
        """The worker running the job died or gave up on it: READY again,
        due now, if attempts remain (the attempt counts), else FAILED."""
        if self.attempts < self.max_attempts:
            return self.mark_for_retry(error, run_after=now or timezone.now())
        return self.mark_failed(error, now=now)

    def mark_for_retry(self, error: dict | None, *, run_after: datetime) -> bool:
        """Put the job back to READY, due at ``run_after``, recording ``error``.

        Used after a failed attempt with attempts left, and for a job the
        worker gives back unfinished. False if the job was taken away.
        """
        return self._update_if_held(
            status=JobStatus.READY,
            run_after=run_after,
            errors=[*self.error_list, error] if error else self.error_list,
            worker=None,
        )

    def set_progress(
        self, current: float, total: float | None = None, message: str = ""
    ) -> bool:
        """Record how far the running job has got. False if it was taken
        from this worker."""
        return self._update_if_held(
            progress={
                "current": current,
                "total": total,
                "message": message,
                "at": timezone.now().isoformat(),
            }
        )

    # Reading ----------------------------------------------------------------

    def to_task_result(self, task):
        """This job as a ``django.tasks`` TaskResult of ``task``.

        CANCELLED reads as FAILED, with a JobCancelled error, since the
        framework has four statuses.
        """
        status, errors = self._task_status_and_errors()
        return DatabaseTaskResult.from_stored(
            task=task,
            id=str(self.pk),
            status=status,
            enqueued_at=self.enqueued_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            last_attempted_at=self.last_attempted_at,
            args=self.args,
            kwargs=self.kwargs,
            backend=self.backend,
            errors=errors,
            worker_ids=list(self.worker_ids),
            return_value=self.return_value,
        )

    def update_task_result(self, task_result) -> None:
        """Bring ``task_result``, made by ``to_task_result`` when the attempt
        started, up to date with how it ended (status, errors, finish, return
        value), in place: the worker sends ``task_finished`` with the result
        ``task_started`` was sent with, as the framework's own backends do,
        and is spared building it twice."""
        status, errors = self._task_status_and_errors()
        _set_field(task_result, "status", status)
        _set_field(task_result, "errors", errors)
        _set_field(task_result, "finished_at", self.finished_at)
        _set_field(task_result, "_return_value", self.return_value)

    def _task_status_and_errors(self) -> tuple[TaskResultStatus, list[TaskError]]:
        errors = (
            [
                TaskError(
                    exception_class_path=error["exception_class_path"],
                    traceback=error["traceback"],
                )
                for error in self.error_list
            ]
            if self.errors  # most jobs have none: spare the worker the rest
            else []
        )
        status = self.status
        if status == JobStatus.CANCELLED:
            status = JobStatus.FAILED
            errors.append(
                TaskError(
                    exception_class_path=class_path(JobCancelled),
                    traceback="The job was cancelled before it ran.",
                )
            )
        return TaskResultStatus(status), errors


class JobDashboard(Job):
    """The admin's dashboard page (a proxy, so it appears in the admin index);
    viewing it takes the permission to view jobs."""

    class Meta:
        proxy = True
        default_permissions = ()
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
