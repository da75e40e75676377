"""Claiming jobs for a worker: the main loop's claims, and the urgent claims
the listener makes on its own thread (on a connection readied for them
while the main loop claims a backlog).

Each claim reserves its slots in the ledger, runs the claim statement
(``sql/claim.py``, the one place that says which rows may be claimed) on the
calling thread's connection, and hands the jobs to the ledger. A failed
claim gives its slots back and leaves an urgent job for the main loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from django.db import DatabaseError, connections, transaction

from ..backend import DatabaseBackend
from ..compat import task_started
from ..db import (
    CONNECTION_ERRORS,
    IDLE_CONNECTION_SECONDS,
    cancel_query,
    cancel_statement,
    close_if_unusable,
    discard_connection,
)
from ..models import Job
from ..private_api import Receivers
from ..sql.claim import claim_jobs, prepare_claim
from .hooks import Hooks
from .ledger import Ledger
from .slots import Notice, Reservation

logger = logging.getLogger("django_bgtasks.worker")

# Seconds a burst worker waits for due jobs that another transaction holds
# locked before it ends without them (``Claimer.due_left``).
LOCKED_GRACE = 5.0
# Seconds between the main loop's requests, while its claims come back
# full, that the listener's thread get its connection ready
# (``Claimer.warm_listeners_connection``).
WARM_EVERY = 1.0


class Claimer:
    """Claims jobs of ``queues`` (None: every queue) on database ``using``
    for worker ``worker_id``, into ``ledger``."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        using: str,
        worker_id: str,
        queues: list[str] | None,
        hooks: Hooks,
    ):
        # Read-only but started_receivers, _listeners_claim,
        # ask_listener_to_warm and the warming's state below. Claims run on
        # the main loop's thread and the listener's, each on its own
        # connection.
        self.ledger = ledger
        self.using = using
        self.worker_id = worker_id
        self.queues = queues
        self.hooks = hooks
        # task_started's receivers, looked up once per claim; read by the
        # job threads (a reference swap: no lock needed).
        self.started_receivers = Receivers(task_started, DatabaseBackend)
        # Since when ``due_left`` has found only locked due jobs (the main
        # loop's thread alone).
        self._locked_since: float | None = None
        # The connection of the listener's claim under way (set and cleared
        # on its thread, read on the main thread as the worker exits), for
        # ``cancel_listeners_claim``.
        self._listeners_claim = None
        # Asks the listener's thread to call ``warm_listeners_connection``:
        # set by the worker once the listener (or the supervisor's reader)
        # is made, where one listens.
        self.ask_listener_to_warm: Callable[[], None] | None = None
        # When the main loop last asked (its thread alone); the link of the
        # listener's thread's connection that has claimed or been readied,
        # and when that thread last failed to ready one (its thread alone).
        self._warm_asked_at = -math.inf
        self._ready_link = None
        self._warm_failed_at = -math.inf

    def claim_for_loop(self) -> list[Job] | None:
        """The main loop's claim, if the ledger says to claim now: the jobs
        claimed ([] when it says to wait), or None if the database failed
        (logged)."""
        reservation = self.ledger.reserve_for_loop()
        if reservation is None:
            return []
        jobs = self._claim(reservation)
        if jobs:
            self._locked_since = None  # work came: ``due_left``'s wait anew
        return jobs

    def due_left(self) -> bool:
        """Whether due jobs that this worker could claim remain in its
        queues (a burst worker ends when none do): a claim may come back
        empty while such a job is being written. A due job another
        transaction holds locked (another worker's claim under way, or on
        MariaDB its lock on the index record just past its range; an
        operator's open transaction) counts for ``LOCKED_GRACE`` seconds
        from when only such jobs were seen since the last claim: a lock
        held for a moment does not end the burst with the job unrun, and
        one held for long does not keep the worker. True if the database
        cannot say."""
        due = (
            Job.objects.using(self.using).claimable().in_queues(self.queues)
        ).values_list("pk", flat=True)
        try:
            with transaction.atomic(using=self.using):
                if list(due.select_for_update(skip_locked=True)[:1]):
                    self._locked_since = None
                    return True
            held = due.exists()
        except CONNECTION_ERRORS:
            discard_connection(self.using)
            return True
        if not held:
            self._locked_since = None
            return False
        now = time.monotonic()
        if self._locked_since is None:
            self._locked_since = now
        return now - self._locked_since < LOCKED_GRACE

    def notified(self, priority: int | None) -> None:
        """A NOTIFY (on the listener's thread): wake the main loop; while
        jobs run, claim an urgent one here and now (see ``Slots``)."""
        if self.ledger.notified(priority) is Notice.CLAIM_HERE:
            self.claim_urgent()

    def claim_urgent(self) -> None:
        """Claim the best due job alone, on this (the listener's) thread.

        Under load the main loop is often inside a large claim of its own,
        which takes milliseconds to tens of them; the urgent job would wait
        for it. The job threads are paused meanwhile: a thread hands the GIL
        on only when it blocks or every 5 ms, so behind a dozen threads busy
        with short jobs this thread would wait for it for tens of
        milliseconds more, before the claim and again when its reply is in.
        """
        reservation = self.ledger.reserve_urgent()
        if reservation is None:
            return  # the main loop claims it once a slot frees
        self.ledger.pause_starts()
        try:
            self._claim(reservation)
        except Exception:
            logger.exception("Claiming an urgent job failed")
        finally:
            self.ledger.resume_starts()

    def warm_listeners_connection(self) -> None:
        """On the listener's thread, asked by the main loop while its claims
        come back full (a backlog: an urgent job may come): open this
        thread's connection and prepare the claim on it, unless it has
        claimed or been readied already.
        Its first urgent claim of a busy spell would otherwise do both
        itself: 15-40 ms on 2 cores busy with a backlog, against 5 ms on an
        open connection (measured). After a failure, not again for
        IDLE_CONNECTION_SECONDS: an urgent claim then connects itself.
        (Where limits are declared, or the worker serves several queues,
        the claim is not prepared: the connection is only opened.)"""
        connection = connections[self.using]
        now = time.monotonic()
        if (
            self._ready_link is not None and connection.connection is self._ready_link
        ) or now - self._warm_failed_at < IDLE_CONNECTION_SECONDS:
            return
        try:
            connection.ensure_connection()
            prepare_claim(self.using, worker_id=self.worker_id, queues=self.queues)
        except Exception as exc:  # a bug too must not come back every second
            self._warm_failed_at = now
            logger.info(
                "The listener's thread could not get its connection ready for "
                "urgent claims (%s); they connect themselves",
                exc,
            )
        else:
            self._ready_link = connection.connection

    def cancel_listeners_claim(self) -> None:
        """Ask the server to cancel the listener's urgent claim, if one is
        under way (from the main thread, as the worker exits): one blocked
        in the database (behind a migration's lock, say) would otherwise run
        once the lock is free, for a worker gone by then. Best effort: one
        still connecting, or between its statements, is not cancelled. The
        main loop's own claim is cancelled on its thread (``_claim``)."""
        connection = self._listeners_claim
        if connection is not None:
            cancel_statement(connection)

    def _claim(self, reservation: Reservation) -> list[Job] | None:
        """Claim with ``reservation``; the ledger hears exactly one of
        ``claimed`` and ``claim_failed``."""
        started = time.monotonic()
        try:
            if not reservation.by_loop:
                # The listener's connection waits unused between claims: not
                # one an error left unusable. No health check: its round
                # trip would delay the urgent job (by a millisecond or more
                # under load); a connection broken meanwhile fails the
                # claim, and the main loop makes it instead.
                close_if_unusable(self.using)
                self._listeners_claim = connections[self.using]
            jobs = claim_jobs(
                self.using,
                worker_id=self.worker_id,
                queues=self.queues,
                limit=reservation.count,
            )
        except DatabaseError as exc:
            where = "" if reservation.by_loop else " (urgent, left to the main loop)"
            logger.warning("Database error while claiming jobs%s: %s", where, exc)
            discard_connection(self.using)
            self.ledger.claim_failed(reservation)
            return None
        except BaseException:
            # Cut short (a second stop request), or a bug: the statement may
            # still run in the database, and the connection is in no state
            # to be used again.
            try:
                cancel_query(self.using)
            finally:
                self.ledger.claim_failed(reservation)
            raise
        finally:
            if not reservation.by_loop:  # the main loop's may run meanwhile
                self._listeners_claim = None
        if not reservation.by_loop:  # its statement is prepared on it now
            self._ready_link = connections[self.using].connection
        ended = time.monotonic()
        if jobs:
            self.started_receivers = Receivers(task_started, DatabaseBackend)
        self.ledger.claimed(reservation, jobs, ended - started)
        self.hooks.claimed(len(jobs), urgent=not reservation.by_loop)
        if (
            reservation.by_loop
            and 1 < len(jobs) == reservation.count  # a backlog
            and self.ask_listener_to_warm is not None
            and ended - self._warm_asked_at >= WARM_EVERY
        ):
            self._warm_asked_at = ended
            self.ask_listener_to_warm()
        return jobs
