"""The worker's lease: its row, which its heartbeat keeps fresh, and the jobs
the database says it holds. Registered at start; checked when the row goes
missing (another worker judged this one dead, or it was deleted by hand);
the jobs it holds nowhere put back (``put_back_strays``); given back at the
end."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction

from .. import __version__, notify
from ..db import retry_until_done
from ..exceptions import JobInterrupted
from ..models import Job, WorkerProcess
from ..models.transitions import Interrupted, Verdict
from .ledger import Ledger

logger = logging.getLogger("django_bgtasks.worker")

# A job RUNNING for a worker that holds it nowhere is put back once its
# claim is this old (seconds, by the database's clock): no claim takes that
# long to reach the worker's ledger.
STRAY_AGE = 60.0
# How often a worker looks for them, at most (after a heartbeat).
STRAY_CHECK_SECONDS = 60.0


class Lease:
    """The row of worker ``worker_id`` on database ``using``."""

    def __init__(
        self,
        *,
        worker_id: str,
        using: str,
        queues: list[str] | None,
        concurrency: int,
        ledger: Ledger,
    ):
        self.worker_id = worker_id
        self.using = using
        self.queues = queues
        self.concurrency = concurrency
        self.ledger = ledger
        # Written by the main thread before the heartbeat starts, then by
        # the heartbeat's thread alone (registering again).
        self.row: WorkerProcess | None = None

    def register(self) -> WorkerProcess:
        """Add the worker's row (a dead worker's under the same id is taken
        over; a live one's raises WorkerIdInUse)."""
        self.row = WorkerProcess.objects.db_manager(self.using).register(
            worker_id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            version=__version__,
        )
        return self.row

    def row_lost(self) -> WorkerProcess | None:
        """The heartbeat found the row gone. If the jobs the worker holds
        are still its own (the row was deleted by hand), register again and
        return the row; if they were rescued, return None: the process must
        end before they run twice."""
        held = self.ledger.unfinished_ids()
        still_held = (
            Job.objects.using(self.using)
            .running()
            .filter(pk__in=held, worker_id=self.worker_id)
        )
        if still_held.count() == len(held):
            return self.register()
        logger.error(
            "Worker %s was judged dead and its jobs were rescued: ending this "
            "process so they do not run twice",
            self.worker_id,
        )
        return None

    def put_back_strays(self, now: datetime) -> int:
        """Put back to READY the jobs the database says this worker holds
        but that it holds nowhere (its ledger knows nothing of them), claimed
        STRAY_AGE seconds or more before ``now`` (the database's time): a
        claim whose answer was lost with its connection after its commit
        (``sql/claimed.py``'s ``claimed_after_all`` reads back what it can),
        or a bug. Otherwise they would stay RUNNING until the worker stops:
        its heartbeat goes on, so no one rescues them. The attempt does not
        count. An indexed read (RUNNING jobs by worker); each put back only
        if still held (an outcome written meanwhile wins). Returns how many
        were put back."""
        held = self.ledger.held_ids()  # first: a claim since is too young
        strays = (
            Job.objects.using(self.using)
            .running()
            .filter(
                worker_id=self.worker_id,
                last_attempted_at__lt=now - timedelta(seconds=STRAY_AGE),
            )
            .exclude(pk__in=held)
        )
        put_back = 0
        woken = set()
        for job in strays.for_transitions():
            logger.error(
                "Job %s is RUNNING for worker %s, which holds it nowhere (a "
                "claim's lost answer?): putting it back",
                job.pk,
                self.worker_id,
            )
            reason = JobInterrupted(
                "Its worker held it nowhere (its claim's answer was lost?)."
            )
            try:
                with transaction.atomic(using=self.using):
                    change = job.record(Interrupted(reason), now=now)
            except DatabaseError:
                # One row the database will not take must not keep the
                # others RUNNING.
                logger.exception("Job %s could not be put back", job.pk)
                continue
            if change is not None and change.verdict is Verdict.PUT_BACK:
                put_back += 1
                woken.add(job.queue_name)
        notify.wake(self.using, woken)
        return put_back

    def give_back(self, *, within: float = 10.0) -> None:
        """Put the jobs the database says the worker holds back to READY
        (asked of the database, not of the ledger: a stop can land between
        a claim's commit and its return), and remove the row; for at most
        ``within`` seconds, so a database that stays down does not keep the
        worker alive."""
        give_up = threading.Event()
        timer = threading.Timer(within, give_up.set)
        timer.daemon = True
        timer.start()
        steps = [
            ("putting unfinished jobs back", self._release_unfinished),
            ("unregistering the worker", self._unregister),
        ]
        for what, step in steps:
            try:
                retry_until_done(step, using=self.using, what=what, give_up=give_up)
            except Exception:
                logger.exception("Failed %s", what)
        timer.cancel()

    def _release_unfinished(self) -> None:
        released = self.row.release_jobs(
            JobInterrupted("The worker stopped before the job finished.")
        )
        if released:
            logger.warning("Put %d unfinished job(s) back to READY", released)

    def _unregister(self) -> None:
        WorkerProcess.objects.db_manager(self.using).filter(pk=self.worker_id).delete()
