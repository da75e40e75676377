"""Requests to stop a worker: signals, and a supervisor's messages.

The first request stops it gracefully, a second makes it exit at once. They
arrive as SIGTERM/SIGINT, or, for a child of ``runworker --processes``, as
the supervisor's messages ("stop", "now"; the end of the stream, when the
supervisor is gone, means "stop": ``pipe.py``), each sent as a signal too
(SIGUSR1, SIGUSR2: ``SUPERVISOR_SIGNALS``), so that it is heard at once
however busy the thread that reads the messages is. Children listen to
their supervisor rather than to the terminal, so one Ctrl-C is one request.
A child that gets SIGTERM itself as well as its supervisor's "stop" (a
signal sent to the whole process group, as systemd's default KillMode
does) has had one request, not two: each source's requests are counted
apart, and the worker goes by the larger count.

A process forked from the worker without exec (a task's ``multiprocessing``
pool, with the "fork" start method) starts with the handlers there were
before the worker's, and without its wake-up fd: a signal to it (the SIGTERM
that ``Pool.terminate`` sends) is its own, not a request to the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

logger = logging.getLogger("django_bgtasks.worker")

# A supervisor's stop requests as signals, with the count each makes. The
# supervisor ignores them before it starts a child, which inherits that
# until it handles them: one sent earlier is lost, not fatal (its message
# says the same).
SUPERVISOR_SIGNALS = {signal.SIGUSR1: 1, signal.SIGUSR2: 2}
# The byte that ends the thread reading the wake-up fd (no signal is 0).
_LAST = 0


class ForcedExit(Exception):
    """A second stop signal: leave without waiting for running jobs."""


class StopRequests:
    """Call ``on_request(source, count)`` for each stop request, from a
    thread of its own (never from a signal handler).

    ``may_interrupt()`` says whether a second request may interrupt the
    main thread (raise ForcedExit there), for instance to cut a blocking call
    short. The handler in the main thread counts the signals it runs for,
    but two signals close together may reach it as one (the interpreter
    runs a handler once for a signal that came again before it ran), and a
    supervisor's "now" comes as a line or SIGUSR2, which it does not count:
    so the thread that counts every request interrupts the main thread
    itself at the second one (``_interrupt_main``).
    """

    def __init__(self, on_request: Callable[[str, int], None], may_interrupt):
        self.on_request = on_request
        self.may_interrupt = may_interrupt
        self.count = 0
        self._lock = threading.Lock()
        self._from = {"signals": 0, "supervisor": 0}
        # The main thread's handler's own: the signals it ran for, and
        # whether it raised ForcedExit (set once).
        self._signals_seen = 0
        self._raised = False
        # Set by the counting thread for the main thread's handler: the
        # next SIGTERM it runs for is this thread's, to raise ForcedExit
        # (``poke_pending``), and the wake-up fd's bytes of such SIGTERMs
        # are not requests (``pokes_unread``).
        self._poke_pending = False
        self._pokes_unread = 0
        self._main_thread: int | None = None  # while the handlers are ours
        # Held while a SIGTERM is sent to the main thread, and by restore():
        # none is sent once the handlers are no longer ours.
        self._poking = threading.Lock()

    def _request(self, kind: str, source: str, *, up_to: int | None = None) -> None:
        """One more request from ``kind`` (or as many as make ``up_to``)."""
        with self._lock:
            made = self._from[kind] + 1 if up_to is None else up_to
            self._from[kind] = max(self._from[kind], made)
            before, self.count = self.count, max(self.count, *self._from.values())
            counts = range(before + 1, self.count + 1)
        if kind == "signals" and self._from["signals"] >= 3:
            # The third signal: at once, whatever the main thread's handler
            # counted (``_on_signal``).
            os._exit(1)
        if not counts and kind == "signals":
            logger.info("%s received: already stopping, as asked", source)
        for count in counts:
            self.on_request(source, count)
            if count == 2:
                self._interrupt_main()

    def _interrupt_main(self) -> None:
        """Raise ForcedExit in the main thread, which may be waiting in a
        call it would not otherwise leave (a claim behind a lock): a SIGTERM
        sent to that thread runs its handler (psycopg's wait lets handlers
        run at least every 0.1 s), which, told it is this one, raises."""
        with self._poking:
            main = self._main_thread
            if main is None or self._raised or not self.may_interrupt():
                return
            self._pokes_unread += 1
            self._poke_pending = True
            signal.pthread_kill(main, signal.SIGTERM)

    # Signals -------------------------------------------------------------------

    def install_signal_handlers(self, *, supervised=False) -> Callable[[], None]:
        """Handle SIGTERM/SIGINT (and, ``supervised``, the supervisor's
        signals); return a function that restores the previous handlers.
        Call from the main thread."""
        # A Python signal handler runs between two bytecodes of the main
        # thread, which may hold a lock at that moment (an Event's, a
        # stream's): the handler only counts, and may raise. The requests are
        # made on a thread woken through the interpreter's wake-up fd.
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        if supervised:
            # Counted on the watching thread, from the wake-up fd.
            previous.update(
                (signum, signal.signal(signum, _no_op)) for signum in SUPERVISOR_SIGNALS
            )
        self._main_thread = threading.get_ident()
        global _installed
        _installed = _Installed(
            {
                signum: (handler, signal.getsignal(signum))
                for signum, handler in previous.items()
            },
            previous_fd,
            (read_end, write_end),
        )
        watching = threading.Thread(
            target=self._watch_signals,
            args=(read_end,),
            name="bgtasks-signals",
            daemon=True,
        )
        watching.start()

        def restore():
            self._main_thread = None  # nothing is raised from now on
            with self._poking:  # and no SIGTERM of ours is on its way
                pass
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            global _installed
            _installed = None  # the pipe's ends stay open until it is
            # The watching thread ends at the last byte, once it has heard
            # the ones before: a signal that came just before is a request
            # the caller acts on (a worker about to start a fresh program in
            # its place stops instead). Not at the pipe's end, which a
            # task's forked child may hold open.
            with contextlib.suppress(OSError):
                os.write(write_end, bytes([_LAST]))
            os.close(write_end)
            watching.join(timeout=5)
            if not watching.is_alive():
                os.close(read_end)

        return restore

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM and self._poke_pending:
            self._poke_pending = False  # the counting thread's: not counted
            forced = not self._raised
        else:
            self._signals_seen += 1
            if self._signals_seen >= 3:
                os._exit(1)
            forced = self._signals_seen == 2 and not self._raised
        if forced and self._main_thread is not None and self.may_interrupt():
            self._raised = True
            raise ForcedExit(signal.Signals(signum).name)

    def _watch_signals(self, read_end: int) -> None:
        """Read the wake-up fd until its last byte (``restore``, which then
        closes it)."""
        while data := os.read(read_end, 64):
            for signum in data:
                if signum == _LAST:
                    return
                if signum == signal.SIGTERM and self._pokes_unread:
                    self._pokes_unread -= 1  # sent by _interrupt_main
                elif signum in (signal.SIGTERM, signal.SIGINT):
                    self._request("signals", signal.Signals(signum).name)
                elif signum in SUPERVISOR_SIGNALS:
                    self.from_supervisor(SUPERVISOR_SIGNALS[signum], "the supervisor")

    # A supervisor's messages ----------------------------------------------------

    def from_supervisor(self, count: int, source: str) -> None:
        """The supervisor's requests come to ``count`` (``pipe.py``)."""
        self._request("supervisor", source, up_to=count)


def _no_op(signum, frame) -> None:
    """A handler that leaves the work to the wake-up fd's reader."""


class _Installed(NamedTuple):
    """A StopRequests' signal handling, while it is installed."""

    handlers: dict[int, tuple[Any, Any]]  # by signal: before, and its own
    previous_fd: int  # the wake-up fd before its own
    pipe_ends: tuple[int, int]  # the wake-up pipe's


_installed: _Installed | None = None
# The forking thread's signal mask before the fork, while it is blocked.
_forking = threading.local()


def _block_until_forked() -> None:
    """Before a fork: block the worker's signals in the forking thread, whose
    mask the child inherits, so that one sent to the child before it has
    undone the worker's handling (at once, as a pool's terminate may) waits
    until it has. The worker's other threads hear them meanwhile."""
    if _installed is not None:
        # The mask kept first: blocking runs the handlers of signals due,
        # which may raise (ForcedExit, on the main thread).
        _forking.mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        signal.pthread_sigmask(signal.SIG_BLOCK, _installed.handlers)


def _unblock_after_fork() -> None:
    mask = getattr(_forking, "mask", None)
    if mask is not None:
        _forking.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _undo_in_forked_child() -> None:
    """In a child forked without exec: the signal handling there was before
    the worker's (see the module), for each signal still handled as the
    worker handles it (a supervised child ignores SIGINT: so do its
    tasks' processes); then a signal sent to it meanwhile is delivered."""
    global _installed
    installed, _installed = _installed, None  # and none in its own children
    if installed is not None:
        signal.set_wakeup_fd(installed.previous_fd)
        for signum, (before, own) in installed.handlers.items():
            if signal.getsignal(signum) == own:
                signal.signal(signum, before)
        for end in installed.pipe_ends:
            with contextlib.suppress(OSError):
                os.close(end)
    _unblock_after_fork()


os.register_at_fork(
    before=_block_until_forked,
    after_in_parent=_unblock_after_fork,
    after_in_child=_undo_in_forked_child,
)
