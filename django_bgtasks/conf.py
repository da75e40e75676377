"""django_bgtasks settings: one ``BGTASKS`` dict, defaults in one place.

Values are read from ``settings.BGTASKS`` once, and again whenever it changes
(``setting_changed``), so ``override_settings(BGTASKS=...)`` works in tests.
``checks.py`` validates them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Attempts a job gets before it ends FAILED (1 = never retried).
    "MAX_ATTEMPTS": 3,
    # Delay before a retry: Backoff(**BACKOFF); see django_bgtasks.backoff.
    "BACKOFF": {"initial": 10.0, "factor": 2.0, "maximum": 3600.0, "jitter": 0.1},
    # Largest JSON-encoded args + kwargs accepted at enqueue, in bytes.
    "MAX_PAYLOAD_BYTES": 1024 * 1024,
    # PostgreSQL: enqueue sends NOTIFY and idle workers LISTEN, so they start
    # new jobs at once.
    "NOTIFY": True,
    # The alias in DATABASES whose connection the workers LISTEN on (None:
    # the one they claim through). Behind a pooler in transaction mode, such
    # as PgBouncer, name one that reaches PostgreSQL directly: a pooled
    # connection does not receive notifications (a worker checks at start
    # and falls back to polling, with a warning).
    "LISTEN_DATABASE": None,
    # Seconds an idle worker waits before looking for due jobs again.
    "POLL_INTERVAL": 1.0,
    # Seconds between a worker's heartbeats (and its checks for dead workers).
    "HEARTBEAT_INTERVAL": 5.0,
    # A worker silent for this many seconds is dead: its running jobs are
    # put back (READY, or FAILED without attempts left). At least twice the
    # heartbeat interval. With the heartbeat's 5 s, a dead worker's jobs are
    # back within about 25 s (docs/topics/guarantees.rst): four beats missed in a
    # row, not one slow moment, make a worker dead.
    "WORKER_TIMEOUT": 20.0,
    # Seconds an attempt may run (None: no limit); per task with timeout=.
    "TIMEOUT": None,
    # Seconds a running job asked to stop (an operator's cancel) has, once
    # its worker hears of it, to stop by itself; then its process is ended
    # as for a timeout (its other jobs go back to READY) and it ends
    # CANCELLED.
    "CANCEL_GRACE_PERIOD": 10.0,
    # How long finished jobs are kept, per status: days, a timedelta, or None
    # to keep them forever. Pruned by the workers and by prune_jobs.
    "PRUNE_AFTER": {"SUCCESSFUL": 7, "FAILED": 30, "CANCELLED": 7},
    # Seconds between two pruning passes of a worker.
    "PRUNE_INTERVAL": 300.0,
    # PostgreSQL with autovacuum off: seconds between a worker's checks of
    # whether the job table needs a VACUUM, which it then runs (None: never).
    "VACUUM_INTERVAL": 10.0,
    # Periodic schedules declared in code: {name: {"task": "app.tasks.f",
    # "cron": "0 2 * * *" or "interval": seconds or timedelta, ...}}; synced
    # to Schedule rows by sync_schedules and at worker start.
    "SCHEDULES": {},
    # Seconds between a worker's scheduler passes.
    "SCHEDULER_INTERVAL": 1.0,
    # A planned time more than this many seconds past counts as missed (it
    # fell in an outage) and follows the schedule's misfire policy.
    "MISFIRE_GRACE_TIME": 60.0,
    # Modules the worker imports at start, besides each installed app's
    # ``tasks`` module, so the tasks they define are registered.
    "TASK_MODULES": [],
    # Limits per queue, across every worker: {queue: {"concurrency": n,
    # "rate": "100/m"}} (or a django_bgtasks.Limit); see docs/topics/limits.
    "QUEUE_LIMITS": {},
    # Routes: {pattern: {"queue_name": q, "priority": n}}: the jobs of the
    # tasks whose path matches the first pattern that does go there, over
    # the task's own options (not over a call's .using()); see
    # django_bgtasks.routes.
    "ROUTES": {},
}


class _Generation:
    """Counts changes of ``settings.BGTASKS`` (``override_settings`` in
    tests): what was worked out from its old values must be worked out
    again."""

    value = 0


settings_generation = _Generation()


class BgTasksSettings:
    """Attribute access to ``settings.BGTASKS`` with defaults filled in.

    A value read is kept as an attribute of this object, so that reading it
    again (the worker does for every job) costs no lookup through Django's
    settings. The values kept are forgotten when ``setting_changed`` says
    ``BGTASKS`` changed (``override_settings`` and pytest-django's
    ``settings`` fixture send it); a ``BGTASKS`` assigned or edited in place
    without it is not seen."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown django_bgtasks setting: {name!r}")
        generation = settings_generation.value
        value = getattr(settings, "BGTASKS", {}).get(name, DEFAULTS[name])
        self.__dict__[name] = value
        if settings_generation.value != generation:
            # The setting changed while it was read (on another thread): the
            # value kept may be the old one.
            self.__dict__.pop(name, None)
        return value

    def forget(self) -> None:
        """Read every value from the settings again."""
        self.__dict__.clear()


bgtasks_settings = BgTasksSettings()


def _bgtasks_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "BGTASKS":
        settings_generation.value += 1  # first: see BgTasksSettings.__getattr__
        bgtasks_settings.forget()


setting_changed.connect(_bgtasks_setting_changed)


def cleared_when_settings_change(cached):
    """Decorate an ``functools.lru_cache``'d function worked out from the
    ``TASKS`` or ``BGTASKS`` setting: its cache is cleared when either
    changes (``override_settings`` in tests)."""

    def clear(*, setting: str, **kwargs: Any) -> None:
        if setting in ("TASKS", "BGTASKS"):
            cached.cache_clear()

    setting_changed.connect(clear, weak=False)
    return cached
