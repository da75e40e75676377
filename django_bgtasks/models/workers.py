"""Worker processes: one row per running ``runworker`` process, kept fresh by
its heartbeat."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, models, transaction
from django.utils.translation import gettext_lazy as _

from .. import notify
from ..conf import bgtasks_settings
from ..db import DatabaseNow, database_now
from ..exceptions import WorkerIdInUse, WorkerLost
from .jobs import Job
from .transitions import Interrupted, Lost, Verdict

logger = logging.getLogger("django_bgtasks.worker")


class WorkerState(models.TextChoices):
    RUNNING = "RUNNING", _("Running")
    STOPPING = "STOPPING", _("Stopping")


class WorkerProcessQuerySet(models.QuerySet):
    def alive(self, now: datetime | None = None):
        """Workers that beat within WORKER_TIMEOUT of ``now`` (the
        database's time, by default)."""
        return self.filter(last_heartbeat_at__gte=self._cutoff(now))

    def dead(self, now: datetime | None = None):
        return self.filter(last_heartbeat_at__lt=self._cutoff(now))

    def _cutoff(self, now: datetime | None) -> datetime:
        return _alive_cutoff(now or database_now(self.db))

    def register(
        self,
        *,
        worker_id: str,
        hostname: str,
        pid: int,
        queues: list[str] | None,
        concurrency: int,
        version: str,
    ) -> WorkerProcess:
        """Add the row of a starting worker process.

        A row left under the same id by a worker that is no longer alive is
        taken over, its RUNNING jobs put back to READY. A live one raises
        WorkerIdInUse.
        """
        now = database_now(self.db)
        fields = {
            "hostname": hostname,
            "pid": pid,
            "queues": queues or [],
            "concurrency": concurrency,
            "version": version,
            "started_at": now,
            "last_heartbeat_at": now,
            "state": WorkerState.RUNNING,
        }
        try:
            with transaction.atomic(using=self.db):
                return self.create(id=worker_id, **fields)
        except IntegrityError:
            pass
        with transaction.atomic(using=self.db):
            previous = self.select_for_update().filter(pk=worker_id).first()
            if previous is None:
                return self.create(id=worker_id, **fields)
            if previous.is_alive(now):
                raise WorkerIdInUse(
                    f"Worker id {worker_id!r} is in use by a live worker (pid "
                    f"{previous.pid} on {previous.hostname}, last heartbeat "
                    f"{previous.last_heartbeat_at:%Y-%m-%d %H:%M:%S})."
                )
            previous.rescue_jobs(
                WorkerLost(
                    f"Worker {worker_id} stopped heartbeating "
                    f"(last {previous.last_heartbeat_at:%Y-%m-%d %H:%M:%S}) "
                    f"while running the job."
                )
            )
            for name, value in fields.items():
                setattr(previous, name, value)
            previous.save(using=previous._state.db)
            return previous


def _alive_cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=bgtasks_settings.WORKER_TIMEOUT)


class WorkerProcess(models.Model):
    """A running ``runworker`` process, kept fresh by its heartbeat."""

    id = models.CharField(_("worker id"), max_length=100, primary_key=True)
    hostname = models.CharField(_("host"), max_length=255)
    pid = models.PositiveIntegerField(_("process id"))
    queues = models.JSONField(
        _("queues"), default=list, help_text=_("Empty: every queue.")
    )
    concurrency = models.PositiveIntegerField(_("concurrency"))
    version = models.CharField(_("django-bgtasks version"), max_length=32)
    state = models.CharField(
        _("state"), max_length=10, choices=WorkerState, default=WorkerState.RUNNING
    )
    started_at = models.DateTimeField(_("started at"))
    last_heartbeat_at = models.DateTimeField(_("last heartbeat"), db_index=True)

    objects = WorkerProcessQuerySet.as_manager()

    class Meta:
        verbose_name = _("worker process")
        verbose_name_plural = _("worker processes")

    def __str__(self):
        return self.id

    def is_alive(self, now: datetime | None = None) -> bool:
        """Whether it beat within WORKER_TIMEOUT of ``now`` (the database's
        time, by default)."""
        return self.last_heartbeat_at >= _alive_cutoff(
            now or database_now(self._state.db or "default")
        )

    def beat(self) -> bool:
        """Refresh the heartbeat, in the database's time. False if the row
        is gone."""
        return bool(
            WorkerProcess.objects.using(self._state.db)
            .filter(pk=self.pk)
            .update(last_heartbeat_at=DatabaseNow(), state=self.state)
        )

    def release_jobs(self, reason: BaseException | None = None) -> int:
        """Put the RUNNING jobs this worker holds back to READY, keeping
        their place (it is stopping). The attempt does not count;
        ``reason`` (if given) is recorded as the attempt's error. Returns
        how many were put back."""
        return self._each_job(Interrupted(reason))

    def rescue_jobs(self, reason: BaseException) -> int:
        """Give up the RUNNING jobs of this (dead) worker: READY again where
        attempts remain, else FAILED, with ``reason`` as the attempt's error.
        Returns how many jobs were changed. A job that ran beside others
        (this worker had more than one thread) gets the attempt back, and
        runs alone from then on: any of them may have crashed the process."""
        return self._each_job(Lost(reason, alone=self.concurrency == 1))

    def _each_job(self, outcome: Interrupted | Lost) -> int:
        """Apply ``outcome`` to each job this worker holds, one row at a
        time; wake the workers of the queues of the jobs put back (at
        commit)."""
        now = database_now(self._state.db)
        changed = 0
        woken = set()
        jobs = Job.objects.using(self._state.db).running().filter(worker=self)
        for job in jobs.for_transitions():
            try:
                with transaction.atomic(using=job._state.db):
                    change = job.record(outcome, now=now)
            except DatabaseError:
                # One row the database will not take must not keep the
                # others RUNNING.
                logger.exception("Job %s could not be put back", job.pk)
                continue
            if change is not None:
                changed += 1
                if change.verdict is Verdict.PUT_BACK:
                    woken.add(job.queue_name)
        if woken:
            notify.wake(self._state.db, woken)
        return changed
