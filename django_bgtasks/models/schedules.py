"""Schedules: periodic jobs as rows, by cron expression or fixed interval.

A schedule fires once per planned time: each job it creates carries the
planned time in ``scheduled_for``, and ``(schedule, scheduled_for)`` is unique
among jobs, so however many schedulers run, a second job for the same time
cannot be written. See ``scheduler.py`` for the firing and ``cron.py`` for the
times.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .. import registry
from ..compat import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, InvalidTask, task_backends
from ..conf import bgtasks_settings
from ..cron import CronTimes, IntervalTimes, PlannedTimes, normalize_cron, zone
from ..exceptions import TaskNotRegistered
from ..routes import routed_backend
from ..serialization import NotJSON, check_size, to_json

MAX_INTERVAL = timedelta(days=3660)


class PriorityField(models.SmallIntegerField):
    """A SmallIntegerField that refuses infinities as invalid: Django's
    IntegerField lets ``int(inf)`` raise OverflowError from ``clean()``."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except OverflowError:
            raise ValidationError(
                self.error_messages["invalid"], code="invalid", params={"value": value}
            ) from None


def _dumps_as_is(value) -> bool:
    """Whether the JSONField takes ``value`` as it is (no bytes, tuples...)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class MisfirePolicy(models.TextChoices):
    """What a schedule does about planned times missed while no scheduler ran."""

    RUN_ONCE = "run_once", _("Run once for all missed times")
    SKIP = "skip", _("Skip missed times")


def default_timezone() -> str:
    return settings.TIME_ZONE or "UTC"


class ScheduleQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)

    def due(self, now: datetime | None = None):
        return self.enabled().filter(next_run_at__lte=now or timezone.now())


class Schedule(models.Model):
    """Run a task periodically: at the times of a cron expression in a time
    zone, or every ``interval``."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    task_path = models.CharField(_("task"), max_length=255)
    cron = models.CharField(
        _("cron expression"),
        max_length=200,
        blank=True,
        help_text=_(
            "Minute hour day month weekday, e.g. '30 2 * * *'; a sixth field "
            "is seconds; or @hourly, @daily, @weekly, @monthly, @yearly."
        ),
    )
    interval = models.DurationField(
        _("interval"),
        null=True,
        blank=True,
        help_text=_("Instead of a cron expression: run every so often."),
    )
    timezone = models.CharField(
        _("time zone"),
        max_length=64,
        default=default_timezone,
        help_text=_("The IANA zone the cron expression is read in."),
    )
    args = models.JSONField(_("positional arguments"), default=list, blank=True)
    kwargs = models.JSONField(_("keyword arguments"), default=dict, blank=True)
    queue_name = models.CharField(_("queue"), max_length=64, default="default")
    priority = PriorityField(_("priority"), default=0)
    enabled = models.BooleanField(_("enabled"), default=True)
    start_at = models.DateTimeField(
        _("start at"), null=True, blank=True, help_text=_("No run before this.")
    )
    end_at = models.DateTimeField(
        _("end at"), null=True, blank=True, help_text=_("No run after this.")
    )
    misfire_policy = models.CharField(
        _("missed runs"),
        max_length=10,
        choices=MisfirePolicy,
        default=MisfirePolicy.RUN_ONCE,
        help_text=_("What to do about times missed while no worker ran."),
    )
    next_run_at = models.DateTimeField(_("next run"), null=True, blank=True)
    last_run_at = models.DateTimeField(_("last run"), null=True, blank=True)
    total_run_count = models.PositiveIntegerField(_("runs"), default=0)
    declared_in_code = models.BooleanField(
        _("declared in code"),
        default=False,
        editable=False,
        help_text=_("Kept in step with BGTASKS['SCHEDULES'] by sync_schedules."),
    )
    last_error = models.TextField(_("last error"), blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = ScheduleQuerySet.as_manager()
    _rescheduled = False  # reschedule() ran on this instance

    class Meta:
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        permissions = [("run_schedule", _("Can run a schedule now"))]
        indexes = [
            models.Index(
                fields=["enabled", "next_run_at"], name="bgtasks_schedule_due_idx"
            )
        ]
        constraints = [
            models.CheckConstraint(
                condition=(Q(cron="") & Q(interval__isnull=False))
                | (~Q(cron="") & Q(interval__isnull=True)),
                name="bgtasks_schedule_cron_xor_interval",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=TASK_MIN_PRIORITY)
                & Q(priority__lte=TASK_MAX_PRIORITY),
                name="bgtasks_schedule_priority_range",
            ),
        ]

    def __str__(self):
        return self.name

    # Validation --------------------------------------------------------------

    def save(self, *args, **kwargs):
        """Save; a new enabled schedule without a next run (made with the
        ORM, say) gets one first, so that it fires."""
        if (
            self._state.adding
            and self.enabled
            and self.next_run_at is None
            and not self._rescheduled
        ):
            self.reschedule(keep_phase=True)
        super().save(*args, **kwargs)

    def clean(self):
        """Check the definition: timing, zone, task, queue, priority, arguments.

        Used by model forms (the admin), and by the system check and
        ``sync_schedules`` for schedules declared in code.
        """
        errors = self.timing_errors()

        def refuse(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        self._clean_task(refuse)
        if errors:
            raise ValidationError(errors)

    def timing_errors(self) -> dict[str, list[str]]:
        """What is wrong with the timing (cron or interval, zone, start and
        end), by field; normalises the cron expression."""
        errors: dict[str, list[str]] = {}

        def refuse(field: str, message: str) -> None:
            errors.setdefault(field, []).append(str(message))

        if bool(self.cron) == (self.interval is not None):
            refuse("cron", _("Give either a cron expression or an interval."))
        elif self.cron:
            try:
                self.cron = normalize_cron(self.cron)
            except ValueError as exc:
                refuse("cron", str(exc))
        elif not timedelta(0) < self.interval <= MAX_INTERVAL:
            refuse(
                "interval",
                _("The interval must be longer than zero and at most %d days.")
                % MAX_INTERVAL.days,
            )
        try:
            zone(self.timezone)
        except ValueError as exc:
            refuse("timezone", str(exc))
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            refuse("end_at", _("The end must come after the start."))
        return errors

    def _clean_task(self, refuse) -> None:
        try:
            task = registry.resolve(self.task_path)
        except TaskNotRegistered as exc:
            refuse("task_path", str(exc))
            task = None
        priority_ok = (
            type(self.priority) is int
            and TASK_MIN_PRIORITY <= self.priority <= TASK_MAX_PRIORITY
        )
        if not priority_ok:
            refuse(
                "priority",
                _("The priority must be a whole number from %(min)d to %(max)d.")
                % {"min": TASK_MIN_PRIORITY, "max": TASK_MAX_PRIORITY},
            )
        if task is not None and priority_ok:
            # The queues of the backend its jobs go to (routes included).
            alias = routed_backend(task)
            queues = task_backends[alias].queues
            if not isinstance(self.queue_name, str) or (
                queues and self.queue_name not in queues
            ):
                refuse(
                    "queue_name",
                    _("Queue %(queue)r is not one of the backend's QUEUES.")
                    % {"queue": self.queue_name},
                )
            else:
                try:
                    task.using(
                        backend=alias,
                        queue_name=self.queue_name,
                        priority=self.priority,
                    )
                except InvalidTask as exc:
                    refuse("queue_name", str(exc))
        arguments = {}
        for field, kind, message in (
            ("args", list, _("Positional arguments must be a JSON list.")),
            ("kwargs", dict, _("Keyword arguments must be a JSON object.")),
        ):
            value = getattr(self, field)
            if not isinstance(value, kind):
                refuse(field, message)
                continue
            try:
                arguments[field] = to_json(value, field)
            except NotJSON as exc:
                refuse(field, str(exc))
        if len(arguments) == 2:
            limit = bgtasks_settings.MAX_PAYLOAD_BYTES
            alone = {
                "args": [arguments["args"], {}],
                "kwargs": [[], arguments["kwargs"]],
            }
            too_large = False
            for field, payload in alone.items():  # name the one to blame
                try:
                    check_size(payload, "The arguments", limit)
                except NotJSON as exc:
                    refuse(field, str(exc))
                    too_large = True
            if not too_large and _dumps_as_is(self.args) and _dumps_as_is(self.kwargs):
                try:
                    check_size(list(arguments.values()), "The arguments", limit)
                except NotJSON as exc:
                    refuse("args", str(exc))

    # Times -------------------------------------------------------------------

    @property
    def zone(self):
        return zone(self.timezone)

    def planned_times(self, *, now: datetime | None = None) -> PlannedTimes:
        """The schedule's planned times. Intervals count from ``start_at``, or
        from the current ``next_run_at``, or else from ``now``."""
        if self.cron:
            times = CronTimes(self.cron, self.zone)
        else:
            anchor = self.start_at or self.next_run_at
            if anchor is None:
                anchor = (now or timezone.now()) + self.interval
            times = IntervalTimes(self.interval, anchor)
        return PlannedTimes(times, self.start_at, self.end_at)

    def upcoming(self, count: int = 5, *, now: datetime | None = None) -> list:
        """The next ``count`` planned times after now."""
        now = now or timezone.now()
        return self.planned_times(now=now).upcoming(now - timedelta.resolution, count)

    # State changes -----------------------------------------------------------

    def reschedule(self, *, now: datetime | None = None, keep_phase=False) -> None:
        """Set ``next_run_at`` to the first planned time from now (None when
        disabled or past its end). Call after changing the timing; save after.

        An interval without ``start_at`` counts from now, unless
        ``keep_phase``: then its times stay where they were (an edit of the
        end, say, does not move them).
        """
        now = now or timezone.now()
        self._rescheduled = True  # a next run of None is then meant
        if not self.enabled:
            self.next_run_at = None
            return
        if self.interval is not None and not self.start_at and not keep_phase:
            self.next_run_at = None  # count the interval from now
        self.next_run_at = self.planned_times(now=now).next_after(
            now - timedelta.resolution
        )

    def enable(self) -> None:
        """Turn the schedule on; it fires next at its next planned time
        from now (missed times while it was off are not made up)."""
        self.enabled = True
        self.reschedule()
        self.save(
            using=self._state.db,
            update_fields=["enabled", "next_run_at", "updated_at"],
        )

    def disable(self) -> None:
        """Turn the schedule off: no more jobs until it is enabled again
        (jobs it already made are left alone)."""
        self.enabled = False
        self.next_run_at = None
        self.save(
            using=self._state.db,
            update_fields=["enabled", "next_run_at", "updated_at"],
        )

    def run_now(self):
        """Enqueue one job of this schedule now, without moving its next run.

        Returns the job's result; raises InvalidTask if the task is gone.
        """
        return self.enqueue(scheduled_for=None)

    def enqueue(self, *, scheduled_for: datetime | None):
        """Enqueue the schedule's task with its arguments and options, linked
        to it (``scheduled_for``: the planned time, or None for a "run now").
        The scheduler calls it for each planned time that has come."""
        declared = registry.resolve(self.task_path)
        task = declared.using(
            # Where a route sends its jobs, as the schedule's row is there.
            backend=routed_backend(declared),
            queue_name=self.queue_name,
            priority=self.priority,
            run_after=scheduled_for,
        )
        # The backend's own verb, which also links the job to the schedule.
        enqueue_job = getattr(task.get_backend(), "enqueue_job", None)
        if enqueue_job is None:
            raise TypeError(
                f"Task {self.task_path} uses backend {task.backend!r}, not a "
                f"django_bgtasks DatabaseBackend."
            )
        database = getattr(task.get_backend(), "database", None)
        if None not in (database, self._state.db) and database != self._state.db:
            raise ValueError(
                f"Task {self.task_path} uses backend {task.backend!r}, which "
                f"keeps its jobs in database {database!r}; this schedule is "
                f"in {self._state.db!r}. A schedule lives beside its jobs: "
                f"declared ones are synced there."
            )
        return enqueue_job(
            task,
            self.args,
            self.kwargs,
            schedule_id=self.pk,
            scheduled_for=scheduled_for,
        )
