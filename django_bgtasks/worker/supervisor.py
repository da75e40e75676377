"""``runworker --processes N``: a supervisor running N worker processes
(N for each database it serves: a process serves one).

Each child is an ordinary ``runworker`` (its own row, heartbeat and threads)
started with ``--supervised``: it takes its stop requests from the
supervisor, through its standard input, not from the terminal, so one Ctrl-C
is one request. The supervisor does for all its children what needs one
connection to the database (``pipe.py``): it holds the one LISTEN
connection (per database), passing wake-ups and jobs' stop requests on to
that database's children, and runs the scheduler and the maintenance
(rescue, pruning) of each database, which its restarts of a child do not
interrupt. The supervisor restarts a child that ends while it runs: at
once after a planned exit (``--max-jobs-per-child``,
``--max-memory-per-child``, a job past its timeout), after a growing pause
(1 s doubling to 30 s) after a crash. On SIGTERM/SIGINT it asks every child
to stop, waits for them and exits 0; a second signal makes the children exit
at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace

from django.db import connections

from .. import metrics, notify
from ..databases import served_databases
from ..maintenance.duties import Maintenance
from ..maintenance.schedule_sync import declared_schedules
from .listener import Listener
from .options import WorkerOptions
from .pipe import NOW, STOP, ChildPipe, jobs_stop, wake
from .runner import WorkerExit
from .stopping import SUPERVISOR_SIGNALS, StopRequests

logger = logging.getLogger("django_bgtasks.supervisor")

MAX_RESTART_DELAY = 30.0
# A child that ran this long before crashing starts its back-off afresh.
STABLE_AFTER = 60.0
# The signal that carries each stop request (stopping.py).
STOP_SIGNALS = {STOP: signal.SIGUSR1, NOW: signal.SIGUSR2}
PLANNED_EXITS = {
    WorkerExit.STOPPED: "stopped (max jobs or memory reached)",
    WorkerExit.RECYCLE: "ended itself (a job timed out, or it was judged dead)",
}


@dataclass
class Slot:
    number: int
    database: str  # the alias of the database its process serves
    process: subprocess.Popen | None = None
    pipe: ChildPipe | None = None  # to its standard input
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float = 0.0
    done: bool = False


class Supervisor:
    """Keep ``options.processes`` children running, each started as
    ``program`` (the command that runs ``runworker``) with its options
    (``WorkerOptions.for_child``). In burst mode, children that finish stay
    finished."""

    def __init__(
        self,
        options: WorkerOptions,
        *,
        program: list[str],
        metrics_folder: str | None = None,
    ):
        self.options = options
        self.program = program
        # Where the children write their metrics' counts (metrics.py).
        self.metrics_folder = metrics_folder
        # A set of processes per database served, each serving one.
        self.databases = served_databases(options.databases)
        per_database = options.processes or 1
        self.slots = [
            Slot(number, database)
            for number, database in enumerate(
                (d for d in self.databases for _ in range(per_database)), 1
            )
        ]
        self.restart = not options.burst
        self.stop_requests = StopRequests(self._on_stop_request, lambda: False)
        self._stopping = False
        self._forced = False
        self._wake = threading.Event()
        # The threads serving the children (_start_parts), stopped at the end.
        self._parts: list = []

    def listens_to(self, using: str) -> bool:
        """Whether it listens for its children of database ``using``
        (PostgreSQL, NOTIFY on)."""
        return notify.notify_enabled(connections[using])

    @property
    def uses_notify(self) -> bool:
        """Whether it listens for any of its children."""
        return any(self.listens_to(using) for using in self.databases)

    def run(self) -> int:
        restore = self.stop_requests.install_signal_handlers()
        # Inherited by the children until they handle them (stopping.py).
        ignored = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in SUPERVISOR_SIGNALS
        }
        try:
            self._start_parts()
            for slot in self.slots:
                self._start(slot)
            while not all(slot.done for slot in self.slots):
                for slot in self.slots:
                    self._tend(slot)
                self._wake.wait(0.2)
                self._wake.clear()
        finally:
            restore()
            for signum, handler in ignored.items():
                signal.signal(signum, handler)
            for part in self._parts:
                part.stop()
            deadline = time.monotonic() + 10
            for part in self._parts:
                if part.is_alive():
                    part.join(timeout=max(0.0, deadline - time.monotonic()))
            connections.close_all()
        return int(WorkerExit.FORCED if self._forced else WorkerExit.STOPPED)

    def _start_parts(self) -> None:
        """Start the threads that serve the children, for each database: the
        listener, on PostgreSQL with NOTIFY on, and the scheduler and
        maintenance, unless off. The scheduler fires the schedules of this
        code, synced first; an invalid declaration raises InvalidSchedule
        here."""
        if self.options.scheduler:
            # Refused here, before any process starts; synced by each
            # database's maintenance thread.
            declared_schedules()
        for using in self.databases:
            self._parts += self._parts_of(using)
        for part in self._parts:
            part.start()

    def _parts_of(self, using: str) -> list:
        """The threads that serve the children of database ``using``."""
        parts: list = []
        if self.listens_to(using):

            def tell(message: str) -> None:
                self._tell_children(message, using=using)

            parts.append(
                Listener(
                    using,
                    self.options.queue_list,
                    lambda priority: tell(wake(priority)),
                    on_stop_request=lambda worker: tell(jobs_stop(worker)),
                )
            )
        if self.options.scheduler or self.options.maintenance:
            parts.append(
                Maintenance(
                    using=using,
                    scheduler=self.options.scheduler,
                    housekeeping=self.options.maintenance,
                    sync_first=True,
                )
            )
        return parts

    def command(self, number: int) -> list[str]:
        """The command line of child ``number`` (1-based)."""
        database = self.slots[number - 1].database
        options = replace(self.options.for_child(number), databases=(database,))
        return [*self.program, *options.argv()]

    def _on_stop_request(self, source: str, count: int) -> None:
        if count == 1:
            logger.info("%s received: stopping the worker processes", source)
            self._stopping = True
            self._tell_children(STOP)
        else:
            logger.warning(
                "%s received again: the worker processes exit at once", source
            )
            self._forced = True
            self._tell_children(NOW)
        self._wake.set()

    def _tell_children(self, message: str, *, using: str | None = None) -> None:
        """Send ``message`` to every child (of database ``using``, if given;
        from any thread). A stop request goes as a signal too, heard at once
        however busy the child's reader is, and by a child that does not
        read (stopped, stuck, or its pipe full); the child counts the two as
        one request. A notice a full pipe will not take is dropped: the
        child's polling and the next notice make up for it."""
        for slot in self.slots:
            if using is not None and slot.database != using:
                continue
            pipe, process = slot.pipe, slot.process
            if pipe is None or process is None:
                continue
            if message in STOP_SIGNALS:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(STOP_SIGNALS[message])
            pipe.send(message)

    def _start(self, slot: Slot) -> None:
        try:
            slot.process = subprocess.Popen(
                self.command(slot.number), stdin=subprocess.PIPE
            )
        except OSError as exc:  # out of processes or memory, say
            slot.started_at = time.monotonic()
            self._restart_later(slot, f"could not be started ({exc})")
            return
        slot.pipe = ChildPipe(slot.process.stdin)
        slot.started_at = time.monotonic()
        logger.info("Worker process %d started (pid %d)", slot.number, slot.process.pid)
        if self._stopping:  # a stop came while it started
            self._tell_children(NOW if self._forced else STOP)

    def _tend(self, slot: Slot) -> None:
        if slot.done:
            return
        if slot.process is None:  # waiting to restart after a crash
            if self._stopping:
                slot.done = True
            elif time.monotonic() >= slot.restart_at:
                self._start(slot)
            return
        code = slot.process.poll()
        if code is None:
            return
        if self.metrics_folder is not None:
            metrics.child_ended(slot.process.pid, self.metrics_folder)
        slot.pipe, pipe = None, slot.pipe
        pipe.close()
        slot.process = None
        if self._stopping or (not self.restart and code == WorkerExit.STOPPED):
            slot.done = True
            return
        if code in PLANNED_EXITS:
            logger.info(
                "Worker process %d %s; starting a new one",
                slot.number,
                PLANNED_EXITS[code],
            )
            slot.crashes = 0
            self._start(slot)
            return
        reason = f"signal {-code}" if code < 0 else f"exit status {code}"
        if code == WorkerExit.FAILED:
            reason += ": an unexpected error, logged by the process"
        elif code == -signal.SIGALRM:
            reason += ": it stalled past its stall limit and ended as it resumed"
        self._restart_later(slot, f"died ({reason})")

    def _restart_later(self, slot: Slot, what: str) -> None:
        """Start the process of ``slot`` again after the crash pause;
        ``what`` happened to it, for the log."""
        lived = time.monotonic() - slot.started_at
        slot.crashes = 1 if lived > STABLE_AFTER else slot.crashes + 1
        delay = min(MAX_RESTART_DELAY, 2.0 ** (slot.crashes - 1))
        logger.error(
            "Worker process %d %s; restarting it in %.0f s", slot.number, what, delay
        )
        slot.restart_at = time.monotonic() + delay
