"""Schedules declared in code (``BGTASKS["SCHEDULES"]``), kept in step with
their Schedule rows.

::

    BGTASKS = {
        "SCHEDULES": {
            "nightly-report": {
                "task": "reports.tasks.send_nightly_report",
                "cron": "0 2 * * *",
                "timezone": "Europe/Paris",
            },
            "poll-feeds": {"task": "feeds.tasks.poll", "interval": 300},
        }
    }

``sync_schedules()`` (``manage.py sync_schedules``, and every worker at
start) upserts one row per name, so any number of processes may sync at once
without making a second row; a declared schedule's definition overwrites its
row, its run state (next run, count) is kept unless its timing changed. Rows
declared earlier but gone from the setting are disabled, not deleted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .. import registry
from ..conf import bgtasks_settings
from ..databases import backend_database, default_database
from ..db import retry_until_done
from ..locking import lock_for_writing
from ..models import Schedule
from ..routes import routed_backend

logger = logging.getLogger("django_bgtasks.worker")

KEYS = {
    "task",
    "cron",
    "interval",
    "timezone",
    "args",
    "kwargs",
    "queue_name",
    "priority",
    "start_at",
    "end_at",
    "misfire_policy",
    "enabled",
}
# What a declaration sets on its row; TIMING fields reschedule when changed.
DEFINITION = [
    "task_path",
    "cron",
    "interval",
    "timezone",
    "args",
    "kwargs",
    "queue_name",
    "priority",
    "start_at",
    "end_at",
    "misfire_policy",
]
TIMING = {"cron", "interval", "timezone", "start_at", "end_at"}


class InvalidSchedule(ValueError):
    """A declared schedule with errors; ``messages`` lists them."""

    def __init__(self, name: str, messages: list[str]):
        self.name = name
        self.messages = messages
        super().__init__(f"Schedule {name!r}: " + " ".join(messages))


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


def declared_schedules() -> list[Schedule]:
    """The declared schedules as unsaved, validated Schedule rows; raises
    InvalidSchedule for the first one with errors."""
    declared = bgtasks_settings.SCHEDULES
    if not isinstance(declared, dict):
        raise InvalidSchedule("SCHEDULES", ["BGTASKS['SCHEDULES'] must be a dict."])
    registry.autodiscover()
    return [build_schedule(name, spec) for name, spec in declared.items()]


def build_schedule(name, spec) -> Schedule:
    """One declaration as an unsaved Schedule, or InvalidSchedule."""
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise InvalidSchedule(
            str(name), ["The name must be text of 1 to 200 characters."]
        )
    if not isinstance(spec, dict):
        raise InvalidSchedule(name, ["The declaration must be a dict."])
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise InvalidSchedule(
            name,
            [f"Unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}."],
        )
    if "task" not in spec:
        raise InvalidSchedule(name, ["'task' (the task's dotted path) is required."])
    values = {key: value for key, value in spec.items() if key != "task"}
    values["task_path"] = getattr(spec["task"], "module_path", spec["task"])
    values.setdefault("cron", "")
    if isinstance(values.get("interval"), int | float) and not isinstance(
        values.get("interval"), bool
    ):
        values["interval"] = timedelta(seconds=values["interval"])
    for key in ("start_at", "end_at"):
        if isinstance(values.get(key), str):
            values[key] = parse_datetime(values[key]) or values[key]
    schedule = Schedule(name=name, declared_in_code=True, **values)
    try:
        schedule.clean_fields(exclude=["name"])
        _make_aware(schedule)
        schedule.clean()
    except ValidationError as exc:
        raise InvalidSchedule(
            name,
            [
                f"{key}: {' '.join(messages)}"
                for key, messages in exc.message_dict.items()
            ],
        ) from None
    try:
        schedule.reschedule()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidSchedule(name, [f"its times cannot be computed: {exc}"]) from None
    return schedule


def _make_aware(schedule: Schedule) -> None:
    """Read naive start and end times in the schedule's time zone."""
    for key in ("start_at", "end_at"):
        moment = getattr(schedule, key)
        if moment is not None and timezone.is_naive(moment):
            try:
                setattr(schedule, key, timezone.make_aware(moment, schedule.zone))
            except ValueError:
                return  # an unknown zone: clean() says so


def schedule_database(schedule: Schedule) -> str:
    """The database a schedule's rows and jobs are kept in: that of its
    task's backend (``databases.py``), as routes give it."""
    return backend_database(routed_backend(registry.resolve(schedule.task_path)))


def sync_schedules(*, using: str | None = None) -> SyncResult:
    """Make the Schedule rows of database ``using`` (default: the default
    backend's) match the schedules of ``BGTASKS["SCHEDULES"]`` whose tasks
    keep their jobs there: a schedule lives beside its jobs."""
    using = using or default_database()
    declared = {
        schedule.name: schedule
        for schedule in declared_schedules()
        if schedule_database(schedule) == using
    }
    result = SyncResult()
    now = timezone.now()
    rows = Schedule.objects.using(using)
    with transaction.atomic(using=using):
        lock_for_writing(Schedule, using)
        existing = {
            schedule.name: schedule
            # In name order, so concurrent syncs lock rows in one order.
            for schedule in rows.select_for_update()
            .filter(name__in=list(declared))
            .order_by("name")
        }
        new = [declared[name] for name in sorted(declared) if name not in existing]
        for schedule in new:
            schedule.reschedule(now=now)
        # Another process syncing at the same moment may insert the same
        # names first: its rows win, ours are skipped (same definitions).
        rows.bulk_create(new, ignore_conflicts=True)
        result.created = [schedule.name for schedule in new]

        for name, row in existing.items():
            if _update(row, declared[name], now):
                result.updated.append(name)

        gone = rows.filter(declared_in_code=True).exclude(name__in=list(declared))
        result.disabled = sorted(gone.values_list("name", flat=True))
        gone.update(
            declared_in_code=False, enabled=False, next_run_at=None, updated_at=now
        )
    return result


def sync_at_start(*, using: str, give_up: threading.Event) -> None:
    """``sync_schedules()`` as a worker starts: retried while the database
    is unreachable (until ``give_up``), what changed logged. An invalid
    declaration raises InvalidSchedule."""
    synced = retry_until_done(
        lambda: sync_schedules(using=using),
        using=using,
        what="syncing declared schedules",
        give_up=give_up,
    )
    if synced is not None:
        log_synced(synced, using)


def log_synced(synced: SyncResult, using: str) -> None:
    """Say what a worker's sync of database ``using`` changed, if anything."""
    if synced.created or synced.updated or synced.disabled:
        logger.info(
            "Declared schedules synced in %s: %d created, %d updated, %d disabled",
            using,
            len(synced.created),
            len(synced.updated),
            len(synced.disabled),
        )


def _update(row: Schedule, declared: Schedule, now) -> bool:
    changed = [f for f in DEFINITION if getattr(row, f) != getattr(declared, f)]
    readded = not row.declared_in_code
    if not changed and not readded:
        return False
    for name in changed:
        setattr(row, name, getattr(declared, name))
    fields = [*changed, "updated_at"]
    if readded:  # declared again after being removed: back in service
        row.declared_in_code = True
        row.enabled = declared.enabled
        fields += ["declared_in_code", "enabled"]
    if readded or TIMING & set(changed):
        row.reschedule(
            now=now,
            keep_phase=not readded and not {"interval", "start_at"} & set(changed),
        )
        fields.append("next_run_at")
    row.save(using=row._state.db, update_fields=fields)
    return True


__all__ = [
    "InvalidSchedule",
    "SyncResult",
    "build_schedule",
    "declared_schedules",
    "sync_at_start",
    "sync_schedules",
]
