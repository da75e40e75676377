"""Jobs: one enqueued run of a task, with its outcome.

A job's state changes are verbs here: ``job.record(outcome)`` for the worker
that holds it, ``JobQuerySet.retry()`` / ``.cancel()`` / ``.run_now()`` for an
operator; what each outcome writes is decided in ``transitions.py``. A
worker's outcome applies only if it still holds the job (same status, worker
and attempt), so a job taken away from a worker (put back at shutdown,
rescued from a dead worker) is never finished by it twice. The claim, the
worker's hottest statement, is per-database SQL in ``sql/claim.py``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import OperationalError, connections, models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .. import notify
from ..compat import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
from ..db import DatabaseNow, chunks, database_now, is_deadlock
from ..locking import lock_for_writing
from .dependencies import (
    Ended,
    JobDependency,
    handed,
    jobs_ended,
    jobs_reopened,
    steps_retried,
)
from .indexes import (
    IndexWhenSet,
    LimitedReadyIndex,
    LimitedRunningIndex,
    ListIndex,
    ReadyIndex,
    StatusIndex,
    UniqueWhenSet,
)
from .queues import Queue
from .status import AT_REST, FINISHED_STATUSES, NOT_STARTED, JobStatus
from .transitions import (
    Cancelled,
    Failed,
    MadeDue,
    OperatorOutcome,
    Retried,
    StopRequested,
    Transition,
    WorkerOutcome,
    transition,
)

# An operator's change rolled back by the database to break a deadlock is
# tried again this many times in all.
DEADLOCK_TRIES = 3

# What an outcome's transition reads of a job (models/transitions.py), and
# its queue (whose workers a job put back wakes).
TRANSITION_FIELDS = (
    "id",
    "queue_name",
    "status",
    "attempts",
    "max_attempts",
    "worker_id",
    "errors",
    "backoff",
    "runs_alone",
    "has_dependents",
    "cancel_requested_at",
    "cancel_requested_by",
)


# A job that workflow steps wait for, and that has not started.
AWAITED = Q(has_dependents=True, status__in=NOT_STARTED)


class JobQuerySet(models.QuerySet):
    def ready(self):
        """Jobs waiting to run (due or not)."""
        return self.filter(status=JobStatus.READY)

    def running(self):
        """Jobs claimed by a worker (running, or prefetched and about to)."""
        return self.filter(status=JobStatus.RUNNING)

    def finished(self):
        """SUCCESSFUL, FAILED and CANCELLED jobs."""
        return self.filter(status__in=FINISHED_STATUSES)

    def matching(self, **lookups):
        """The jobs of every status with ``lookups`` (on the columns of a
        ``ListIndex``: ``task_path``, ``queue_name``), their condition
        written status by status: the jobs at rest, READY, RUNNING. Each
        part is one an index holds (the list index, the claims' READY and
        RUNNING indexes), so a value few of millions of jobs have is found
        through them, not by reading the table."""
        every_status = (
            Q(status__in=AT_REST)
            | Q(status=JobStatus.READY)
            | Q(status=JobStatus.RUNNING)
        )
        return self.filter(every_status, **lookups)

    def due(self, now: datetime | None = None):
        """READY jobs whose ``run_after`` has come (by the database's clock,
        unless ``now`` is given)."""
        return self.ready().filter(run_after__lte=now or DatabaseNow())

    def claimable(self, now: datetime | None = None):
        """Due jobs that a claim may take: those of queues not paused."""
        paused = Queue.objects.using(self.db).paused().values("name")
        return self.due(now).exclude(queue_name__in=paused)

    def for_transitions(self) -> Iterator[Job]:
        """These jobs with only the columns an outcome's transition reads,
        so that no other column is decoded: a row written around the API
        with a time or payload that cannot be read can still be put back or
        failed. An error list or backoff that cannot be read is taken as
        empty."""
        lean = self.only(*TRANSITION_FIELDS)
        try:
            yield from list(lean)
            return
        except Exception:
            pass  # a row whose errors or backoff cannot be read: one by one
        rows = self.values_list(
            "pk",
            "queue_name",
            "attempts",
            "max_attempts",
            "worker_id",
            "runs_alone",
            "has_dependents",
            "cancel_requested_at",
            "cancel_requested_by",
        )
        for (
            pk, queue, attempts, max_attempts, worker_id, alone, dependents,
            cancel_at, cancel_by,
        ) in list(rows):  # fmt: skip
            try:
                yield lean.get(pk=pk)
                continue
            except Exception:
                pass
            job = self.model(
                pk=pk,
                queue_name=queue,
                attempts=attempts,
                max_attempts=max_attempts,
                worker_id=worker_id,
                errors=[],
                backoff={},
                runs_alone=alone,
                has_dependents=dependents,
                cancel_requested_at=cancel_at,
                cancel_requested_by=cancel_by,
            )
            job._state.adding = False
            job._state.db = self.db
            yield job

    def fail_unreadable(self, pk: int, *, worker_id: str, error: Exception) -> bool:
        """Fail for good the job ``pk`` that worker ``worker_id`` holds but
        cannot read whole; False if it no longer holds it."""
        for job in self.filter(pk=pk, worker_id=worker_id).for_transitions():
            return job.record(Failed(error, retryable=False)) is not None
        return False

    def cancel_requests(self, worker_id: str) -> list[tuple[int, datetime, str]]:
        """``(id, cancel_requested_at, cancel_requested_by)`` of the running
        jobs of worker ``worker_id`` asked to stop: a read of the running
        jobs' index (a worker holds a few)."""
        return list(
            self.running()
            .filter(worker_id=worker_id, cancel_requested_at__isnull=False)
            .values_list("pk", "cancel_requested_at", "cancel_requested_by")
        )

    def in_queues(self, queues: list[str] | None):
        """Jobs in these queues; ``None`` means every queue."""
        return self if queues is None else self.filter(queue_name__in=queues)

    # Operator actions (the admin's). Each changes only the jobs in the
    # statuses it applies to and returns how many it changed.

    def retry(self) -> int:
        """Put FAILED and CANCELLED jobs back to READY, due now.

        Attempts are extended, not reset: a job that used all its attempts
        gets one more (``max_attempts`` becomes ``attempts + 1``); its errors
        and worker ids stay as history.
        """
        return self.apply(Retried())

    def cancel(self, *, by: str | None = None) -> Cancellation:
        """Cancel READY and WAITING jobs (the workflow steps waiting for
        them are cancelled too), and ask RUNNING ones to stop: their worker
        hears of it within a second on PostgreSQL (else within its
        heartbeat), the task may check (``cancel_requested()``), and the job
        ends CANCELLED (``transitions.py``), stopped by its worker if it has
        not stopped within ``CANCEL_GRACE_PERIOD``. ``by``: who cancels
        (the admin's user), recorded with the request.

        Returns how many jobs changed (an int), with each count apart.
        """
        cancelled = self.apply(Cancelled())
        by = by[: Job._meta.get_field("cancel_requested_by").max_length] if by else None
        return Cancellation(cancelled, self.apply(StopRequested(by)))

    def run_now(self) -> int:
        """Make delayed READY jobs due now."""
        return self.apply(MadeDue())

    def applicable(self, *outcomes: OperatorOutcome):
        """Those of these jobs that one of ``outcomes`` would change now (by
        the database's clock): what an operator's action would act on."""
        now = DatabaseNow()
        return self.filter(
            functools.reduce(operator.or_, (o.condition(now) for o in outcomes))
        )

    def awaited(self):
        """Those of these jobs that workflow steps still wait for (they
        have not started): deleted, they would leave the steps waiting for
        ever; cancelled, they cancel them."""
        return self.filter(AWAITED)

    def deletable(self):
        """These jobs but those an operator may not delete: RUNNING ones
        (their worker's until they end) and those workflow steps wait for."""
        return self.exclude(status=JobStatus.RUNNING).exclude(AWAITED)

    def delete_jobs(self) -> int:
        """Delete those of these jobs that may be deleted (``deletable``),
        with the edges of the workflow steps among them (what each was
        handed), as pruning does. Returns how many jobs it deleted."""
        with transaction.atomic(using=self.db):
            lock_for_writing(Job, self.db)
            # Locked, as a claim locks: none of them starts meanwhile (a
            # claim passes over them), and none is deleted that has.
            ids = list(
                self.deletable().select_for_update().values_list("pk", flat=True)
            )
            edges = JobDependency.objects.using(self.db)
            deleted = 0
            for chunk in chunks(ids):
                edges.filter(job_id__in=chunk).delete()
                deleted += (
                    Job.objects.using(self.db)
                    .filter(pk__in=chunk)
                    .delete()[1]
                    .get(Job._meta.label, 0)
                )
        return deleted

    def apply(self, outcome: OperatorOutcome) -> int:
        """Apply an operator's outcome to the jobs it applies to among these;
        wake the workers of their queues if it makes jobs due. Returns how
        many jobs changed.

        A workflow's steps are locked first, in id order, and exactly those
        locked are changed, in the transaction that moves the steps after
        them (a cancel cancels them, a retry makes them wait for its new
        run); jobs of no workflow change in one statement. Outside a
        transaction of the caller's, a deadlock the database breaks by
        rolling this back is retried."""
        tries = 1 if connections[self.db].in_atomic_block else DEADLOCK_TRIES
        for attempt in range(1, tries + 1):
            try:
                return self._apply(outcome)
            except OperationalError as exc:
                if attempt == tries or not is_deadlock(exc):
                    raise

    def _apply(self, outcome: OperatorOutcome) -> int:
        now = database_now(self.db)
        jobs = self.filter(outcome.condition(now))
        changes = transition(None, outcome, now=now).changes
        if isinstance(outcome, StopRequested):
            return self._ask_to_stop(jobs, changes)
        with transaction.atomic(using=self.db):
            lock_for_writing(Job, self.db)
            # The steps' locks first, before any plain read: under
            # REPEATABLE READ that read fixes what the rest sees, and it
            # must see the ends committed before the locks were had.
            locked = list(
                jobs.filter(workflow_id__isnull=False)
                .select_for_update()
                .order_by("pk")
                .values_list("pk", "queue_name", "has_dependents", "waiting_for")
            )
            # Never a workflow's step, whatever happens meanwhile: its
            # workflow_id is set when it is written, or never.
            alone = jobs.filter(workflow_id__isnull=True)
            woken = set()
            if outcome.wakes_workers:
                woken = set(alone.values_list("queue_name", flat=True).distinct())
            count = alone.update(**changes)
            if not count:
                woken = set()
            if locked:
                if isinstance(outcome, Retried):
                    changed = self._retry_steps(locked, changes, now)
                else:
                    changed = self._apply_to_steps(locked, changes, now)
                count += len(changed)
                if outcome.wakes_workers:
                    woken |= {queue for pk, queue, *_ in locked if pk in changed}
            if woken:
                notify.wake(self.db, woken)
        return count

    def _ask_to_stop(self, jobs, changes: dict) -> int:
        """Write a stop request on the running ``jobs`` (one statement) and
        tell the workers that hold them (at commit): read in the same
        transaction, after the write, so they are the holders. A step's
        request changes nothing of its workflow until its job ends."""
        with transaction.atomic(using=self.db):
            count = jobs.update(**changes)
            if count:
                asked = self.running().filter(
                    cancel_requested_at=changes["cancel_requested_at"]
                )
                workers = asked.values_list("worker_id", flat=True).distinct()
                notify.ask_to_stop(self.db, set(workers) - {None})
        return count

    def _apply_to_steps(self, locked, changes: dict, now: datetime) -> set[int]:
        """Apply ``changes`` to the workflow steps ``locked``; end the steps
        waiting for them if it ends them."""
        ids = [pk for pk, *_ in locked]
        steps = Job.objects.using(self.db)
        for chunk in chunks(ids):
            steps.filter(pk__in=chunk).update(**changes)
        if changes.get("status") in FINISHED_STATUSES:
            ended = [
                Ended(pk, changes["status"]) for pk, _, dependents, _ in locked
                if dependents
            ]  # fmt: skip
            jobs_ended(self.db, ended, now)
        return set(ids)

    def _retry_steps(self, locked, changes: dict, now: datetime) -> set[int]:
        """Retry the workflow steps ``locked`` (``changes``: what Retried
        writes). A step never released waits again for what it still needs
        (or runs now with what it is handed; if a job it needs failed, it is
        not retried: retry that one), and the steps after a retried job wait
        for its new run. Returns the ids retried."""
        steps = steps_retried(self.db, [pk for pk, _, _, waiting in locked if waiting])
        retried = {pk for pk, *_ in locked if pk not in steps}
        jobs = Job.objects.using(self.db)
        for chunk in chunks(sorted(retried)):
            jobs.filter(pk__in=chunk).update(**changes)
        for pk, pending in steps.items():
            if pending is None:
                continue  # a job it needs failed: retry that one
            step = jobs.filter(pk=pk)
            if pending:
                waits = {"status": JobStatus.WAITING, "waiting_for": pending}
                step.update(**{**changes, **waits})
            else:
                step.update(**changes, waiting_for=0, args=handed(self.db, pk))
            retried.add(pk)
        jobs_reopened(
            self.db,
            [pk for pk, _, dependents, _ in locked if dependents and pk in retried],
            now,
        )
        return retried


class Cancellation(int):
    """What ``JobQuerySet.cancel()`` did: how many jobs it changed, with
    how many were ``cancelled`` (not started) and how many ``asked_to_stop``
    (running)."""

    cancelled: int
    asked_to_stop: int

    def __new__(cls, cancelled: int, asked_to_stop: int):
        count = super().__new__(cls, cancelled + asked_to_stop)
        count.cancelled = cancelled
        count.asked_to_stop = asked_to_stop
        return count


class Job(models.Model):
    """One enqueued run of a task, with its outcome and every attempt's error."""

    id = models.BigAutoField(primary_key=True)
    task_path = models.CharField(_("task"), max_length=255)
    backend = models.CharField(_("backend"), max_length=64, default="default")
    queue_name = models.CharField(_("queue"), max_length=64, default="default")
    priority = models.SmallIntegerField(_("priority"), default=0)
    # The pattern of the route (BGTASKS["ROUTES"]) that set its queue or
    # priority at enqueue; '' if none. A default in the database too: code
    # of before routes, still running during a deploy, inserts no value.
    route = models.CharField(_("route"), max_length=200, default="", db_default="")
    # The OpenTelemetry context of the enqueue (tracing.py): each attempt's
    # span is its child. NULL without tracing.
    trace_context = models.JSONField(
        _("trace context"), null=True, blank=True, editable=False
    )
    status = models.CharField(
        _("status"), max_length=10, choices=JobStatus, default=JobStatus.READY
    )
    args = models.JSONField(_("positional arguments"), default=list)
    kwargs = models.JSONField(_("keyword arguments"), default=dict)

    run_after = models.DateTimeField(_("run after"))
    # The task's own run_after at enqueue (None: as soon as possible), for
    # the TaskResult's task; run_after above is when the job is due now.
    task_run_after = models.DateTimeField(
        _("run after, as enqueued"), null=True, blank=True
    )
    # The job's key if it was enqueued ``unique`` (django_bgtasks.unique):
    # the unique index refuses a duplicate; an enqueue releases the key of
    # a job out of its span. NULL, not "", when unset: NULLs never clash.
    unique_key = models.CharField(  # noqa: DJ001
        _("unique key"), max_length=100, null=True, blank=True
    )
    # The limit the job counts against (django_bgtasks.limits): its name,
    # with the value of the argument it is kept per, if any.
    limit_key = models.CharField(  # noqa: DJ001
        _("limit key"), max_length=210, null=True, blank=True
    )
    # A job not started by then never runs: it ends CANCELLED with a
    # JobExpired error when a worker takes it.
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    # Workflows (django_bgtasks.workflows, models/dependencies.py): the
    # workflow the job is a step of; how many jobs it still waits for
    # (while WAITING); whether jobs wait for it (its end is then recorded
    # with theirs, in one transaction).
    workflow_id = models.UUIDField(_("workflow"), null=True, blank=True)
    waiting_for = models.PositiveIntegerField(_("waiting for"), default=0, db_default=0)
    has_dependents = models.BooleanField(
        _("has dependents"), default=False, db_default=False
    )
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
    # Set when the job's process died while it ran beside other jobs: any of
    # them may have crashed it, so that attempt was not counted, and from
    # then on the job runs with nothing beside it, where a crash is its own.
    # A default in the database too: rows inserted by hand may leave it out.
    runs_alone = models.BooleanField(
        _("runs alone"),
        default=False,
        db_default=False,
        help_text=_(
            "Its process died while it ran beside other jobs: it now runs with "
            "none beside it."
        ),
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
    # An operator asked the running job to stop (JobQuerySet.cancel): when,
    # by the database's clock, and who. Never set on a READY job: whatever
    # way the job leaves RUNNING, it ends (transitions.py); a retry clears
    # them.
    cancel_requested_at = models.DateTimeField(
        _("cancel requested at"), null=True, blank=True
    )
    cancel_requested_by = models.CharField(  # noqa: DJ001
        _("cancel requested by"), max_length=150, null=True, blank=True
    )
    errors = models.JSONField(
        _("errors"), default=list, help_text=_("The error of each failed attempt.")
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        permissions = [
            ("retry_job", _("Can retry a failed or cancelled job")),
            ("cancel_job", _("Can cancel a job, or ask a running one to stop")),
            ("run_job", _("Can run a delayed job now")),
        ]
        indexes = [
            # Claims from some queues, and from every queue (runworker's
            # default): each walks its index in claim order.
            ReadyIndex(
                fields=["queue_name", "-priority", "run_after", "id"],
                name="bgtasks_job_ready_idx",
            ),
            ReadyIndex(
                fields=["-priority", "run_after", "id"],
                name="bgtasks_job_ready_any_idx",
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
            IndexWhenSet(fields=["workflow_id"], name="bgtasks_job_workflow_idx"),
            # The admin's list of one task's or one queue's jobs (with
            # ``JobQuerySet.matching``), newest first.
            ListIndex(fields=["task_path", "id"], name="bgtasks_job_task_idx"),
            ListIndex(fields=["queue_name", "id"], name="bgtasks_job_queue_idx"),
            # The READY jobs of limits, for the limited claim (sql/limited.py).
            LimitedReadyIndex(
                fields=["-priority", "run_after", "id"],
                name="bgtasks_job_limited_ready_idx",
            ),
            # The RUNNING jobs of limits, which each limited claim counts.
            LimitedRunningIndex(fields=["limit_key"], name="bgtasks_job_limit_run_idx"),
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
            UniqueWhenSet(fields=["unique_key"], name="bgtasks_job_unique_key"),
        ]

    def __str__(self):
        return f"Job {self.pk} ({self.task_path}, {self.status})"

    @property
    def is_finished(self) -> bool:
        """Whether the job has ended: SUCCESSFUL, FAILED or CANCELLED."""
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
        """Time from the last attempt's claim to the finish: it includes any
        wait for a thread after the claim, so it may be longer than the time
        the worker logs for the attempt (its time on a thread)."""
        if self.finished_at and self.last_attempted_at:
            return self.finished_at - self.last_attempted_at
        return None

    # State changes of a job held by a worker ------------------------------

    def record(
        self, outcome: WorkerOutcome, *, now: datetime | None = None
    ) -> Transition | None:
        """Record how the attempt ended, if this job's worker still holds it;
        returns the transition made, or None if the job was taken away (put
        back, rescued) and the outcome was discarded."""
        now = now or database_now(self._state.db or "default")
        change = transition(self, outcome, now=now)
        unasked = change.void_if_asked_to_stop
        recorded = self._record(change, now, unasked=unasked)
        if recorded is None and unasked and self.heard_stop_request():
            change = transition(self, outcome, now=now)
            return self._record(change, now, unasked=False)
        return recorded

    def heard_stop_request(self) -> bool:
        """Whether an operator asked this job to stop, while its worker holds
        it: the request read from its row (one query), and kept here."""
        request = (
            self._held()
            .filter(cancel_requested_at__isnull=False)
            .values_list("cancel_requested_at", "cancel_requested_by")
            .first()
        )
        if request is None:
            return False
        self.cancel_requested_at, self.cancel_requested_by = request
        return True

    def _record(
        self, change: Transition, now: datetime, *, unasked: bool
    ) -> Transition | None:
        if change.finishes and self.has_dependents:
            # The steps waiting for it move in the same transaction.
            with transaction.atomic(using=self._state.db):
                if not self._update_if_held(change.changes, unasked=unasked):
                    return None
                ended = Ended(self.pk, self.status, change.changes.get("return_value"))
                jobs_ended(self._state.db, [ended], now)
            return change
        if not change.deletes:
            held = self._update_if_held(change.changes, unasked=unasked)
            return change if held else None
        # delete_on_success: the row goes; this object keeps its last state
        # (its success) for the signals sent after.
        deleted, _ = self._held().delete()
        if not deleted:
            return None
        for name, value in change.changes.items():
            setattr(self, name, value)
        return change

    def _held(self, *, unasked: bool = False) -> models.QuerySet:
        """This job, if its worker still holds it (on this attempt);
        ``unasked``: and no operator has asked it to stop."""
        held = Job.objects.using(self._state.db).filter(
            pk=self.pk,
            status=JobStatus.RUNNING,
            worker_id=self.worker_id,
            attempts=self.attempts,
        )
        return held.filter(cancel_requested_at__isnull=True) if unasked else held

    def set_progress(
        self, current: float, total: float | None = None, message: str = ""
    ) -> bool:
        """Record how far the running job has got. False if it was taken
        from this worker, or if an operator has asked it to stop (then
        ``cancel_requested_at`` is set here: see ``heard_stop_request``)."""
        progress = {
            "current": current,
            "total": total,
            "message": message,
            "at": timezone.now().isoformat(),
        }
        if self._update_if_held({"progress": progress}, unasked=True):
            return True
        if self.cancel_requested_at is None:
            self.heard_stop_request()
        return False

    def _update_if_held(
        self, changes: dict[str, Any], *, unasked: bool = False
    ) -> bool:
        """Apply ``changes`` only if this job's worker still holds it (and,
        if ``unasked``, no operator has asked it to stop)."""
        updated = self._held(unasked=unasked).update(**changes)
        if updated:
            for name, value in changes.items():
                setattr(self, name, value)
        return bool(updated)


class JobDashboard(Job):
    """The admin's dashboard page (a proxy, so it appears in the admin index);
    viewing it takes the permission to view jobs."""

    class Meta:
        proxy = True
        default_permissions = ()
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
