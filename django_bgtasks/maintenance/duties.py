"""A worker's periodic duties, on one thread: fire due schedules, rescue the
jobs of dead workers, prune old finished jobs, vacuum the job table where
PostgreSQL's autovacuum is off. Each duty is a module of this package and
runs at its own interval; an error in one is logged and never stops the
others."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connections

from ..conf import bgtasks_settings
from ..db import CONNECTION_ERRORS, database_now, discard_connection
from .prune import BATCH_SIZE, prune_finished_jobs
from .rescue import Steadiness, rescue_dead_workers
from .schedule_sync import log_synced, sync_schedules
from .scheduler import fire_due_schedules
from .vacuum import vacuum_if_needed

logger = logging.getLogger("django_bgtasks.worker")

# One pruning pass deletes at most this many batches; if it found that many,
# the next pass comes after PRUNE_CATCH_UP seconds (the other duties run in
# between) rather than after the interval, so pruning keeps up with any flow.
PRUNE_BATCH_SIZE = BATCH_SIZE
PRUNE_BATCHES_PER_PASS = 20
PRUNE_CATCH_UP = 0.5


@dataclass
class Duty:
    name: str
    interval: float
    # Returns None, or how many seconds to wait before the next pass instead
    # of the interval.
    run: Callable[[], float | None]
    due_at: float = 0.0


class Maintenance(threading.Thread):
    """The duties of a worker process, or of a supervisor for its children.

    ``steadiness``: the heartbeat's, in a worker (see ``Steadiness``): the
    rescue waits until it says this process may judge others dead. Without
    it (a supervisor, which has no heartbeat), the passes' own round trips
    make it: every pass, the rescue's included, reads the database, at
    least every HEARTBEAT_INTERVAL."""

    def __init__(
        self,
        *,
        using: str,
        scheduler: bool,
        housekeeping: bool,
        steadiness: Steadiness | None = None,
        sync_first: bool = False,
    ):
        super().__init__(name="bgtasks-maintenance", daemon=True)
        self.using = using
        self.feeds_steadiness = steadiness is None
        self.steadiness = steadiness or Steadiness(went_through=False)
        self.duties: list[Duty] = []
        # The scheduler's first pass syncs the declared schedules first (a
        # supervisor's, one thread per database: a database that is down
        # holds up only its own).
        self._sync_pending = scheduler and sync_first
        if scheduler:
            self.duties.append(
                Duty("scheduler", bgtasks_settings.SCHEDULER_INTERVAL, self._schedule)
            )
        if housekeeping:
            self.duties.append(
                Duty("rescue", bgtasks_settings.HEARTBEAT_INTERVAL, self._rescue)
            )
            self.duties.append(
                Duty("prune", bgtasks_settings.PRUNE_INTERVAL, self._prune)
            )
            vacuum_interval = bgtasks_settings.VACUUM_INTERVAL
            if vacuum_interval is not None:
                self.duties.append(Duty("vacuum", vacuum_interval, self._vacuum))
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            while self.duties and not self._stop_event.is_set():
                now = time.monotonic()
                for duty in self.duties:
                    if duty.due_at <= now:
                        wait = self._perform(duty)
                        duty.due_at = time.monotonic() + (
                            duty.interval if wait is None else wait
                        )
                next_due = min(duty.due_at for duty in self.duties)
                self._stop_event.wait(max(0.0, next_due - time.monotonic()))
        finally:
            connections.close_all()

    def _perform(self, duty: Duty) -> float | None:
        try:
            wait = duty.run()
        except CONNECTION_ERRORS as exc:
            self._broke()
            logger.warning("%s pass failed (%s); retrying", duty.name.title(), exc)
            discard_connection(self.using)
        except Exception:  # the duty's own error, not a broken connection
            logger.exception("%s pass failed", duty.name.title())
        else:
            if self.feeds_steadiness:
                self.steadiness.went_through()
            return wait
        return None

    def _broke(self) -> None:
        if self.feeds_steadiness:
            self.steadiness.broke()

    def _schedule(self) -> None:
        if self._sync_pending:
            log_synced(sync_schedules(using=self.using), self.using)
            self._sync_pending = False
        fired = fire_due_schedules(using=self.using)
        if fired:
            logger.info("Scheduler enqueued %d job(s)", fired)

    def _rescue(self) -> None:
        # The database's time first: a judgement is made on a time read
        # after it knew it may judge, never on one read before an outage
        # that this read sat through.
        now = database_now(self.using)
        if self.steadiness.may_judge_others():
            rescue_dead_workers(using=self.using, now=now)

    def _prune(self) -> float | None:
        deleted = prune_finished_jobs(
            using=self.using,
            batch_size=PRUNE_BATCH_SIZE,
            max_batches=PRUNE_BATCHES_PER_PASS,
        )
        if any(deleted.values()):
            logger.info(
                "Pruned old jobs: %s",
                ", ".join(f"{count} {status}" for status, count in deleted.items()),
            )
        if sum(deleted.values()) >= PRUNE_BATCHES_PER_PASS * PRUNE_BATCH_SIZE:
            return PRUNE_CATCH_UP  # there may be more
        return None

    def _vacuum(self) -> None:
        vacuum_if_needed(using=self.using)
