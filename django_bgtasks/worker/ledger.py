"""The one owner of a worker process's bookkeeping: the jobs it has claimed,
from their claim to their written outcome, and what to claim next.

Every other part of the worker reports events to it and asks it questions;
none keeps state of its own about claimed jobs:

=================  =====================================  ===================
thread             reports                                asks
=================  =====================================  ===================
main loop          claim reserved / returned / failed,    ``wait``, what is
                   stop                                   overdue, ``idle``
listener           notified; its own claims, as above     claim here?
job threads        an attempt taken, finished, dropped    the next attempt
completer          outcomes written
heartbeat,         stop requests heard                    the unfinished jobs
listener
=================  =====================================  ===================

Every field is private to the ledger and read or written only under its
lock, but the two events (which are thread-safe) and the token queue the job
threads block on. The policy (how many to claim, when, what is urgent)
is ``Slots``, called under the lock; the ledger keeps the jobs themselves:
the ones waiting for a thread in start order (best first, so an urgent job
claimed late starts next), the running ones with their deadlines, the ones
whose outcome is being written.

A job that must run alone (``Job.runs_alone``: its last process died while
it ran beside others, and any of them may have crashed it) starts once the
running jobs have ended, and nothing starts beside it: the threads wait
their turn (``_turn``). As it starts, the jobs still waiting are set aside,
for its thread to put back: the process holds no other job while it runs,
so a crash while it runs is its own.
"""

from __future__ import annotations

import enum
import heapq
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..db import IDLE_CONNECTION_SECONDS
from ..models import Job
from .slots import Notice, Reservation, Slots


class Stage(enum.Enum):
    WAITING = "waiting"  # claimed, waiting for a thread
    RUNNING = "running"  # on a thread
    WRITING = "writing"  # ended; its outcome is being written
    SET_ASIDE = "set aside"  # put back unstarted, for a job that runs alone


@dataclass(slots=True, eq=False)
class Attempt:
    """One claimed job's attempt, from its claim to its written outcome."""

    job: Job
    stage: Stage = Stage.WAITING
    started: float = 0.0  # time.monotonic() when a thread took it
    thread_id: int = 0  # that thread's ident
    deadline: float = math.inf  # when it has run past its timeout (or grace)
    seconds: float = 0.0  # how long it ran, once ended
    # For a job that runs alone: the jobs it was held with, unstarted, which
    # its thread puts back before it starts (see Ledger.next_attempt).
    set_aside: list[Job] | None = None


class Ledger:
    """The jobs one worker process holds, and its claim policy's state."""

    # The longest pause of the job threads (``pause_starts``): a claim that
    # takes longer must not stall the rest.
    MAX_PAUSE = 0.05

    def __init__(self, slots: Slots):
        self._lock = threading.Lock()
        self._claim_landed = threading.Condition(self._lock)
        # Job threads held back by a job that runs alone (rule 7 of Slots).
        self._turn = threading.Condition(self._lock)
        self._held_back = 0  # threads waiting on _turn
        self._alone: Attempt | None = None  # running alone
        # Jobs that run alone, waiting or running, and entries set aside
        # still in the queue: while none, a thread takes the best waiting
        # attempt without looking (the common case, kept cheap).
        self._isolating = 0
        self._slots = slots
        # Waiting attempts, best first: (order, -priority, run_after, id,
        # attempt); order 1 entries (attempt None) tell a thread to exit.
        self._waiting: list[tuple] = []
        self._running: dict[int, Attempt] = {}
        # Attempts, not job ids: the completer commits an outcome before it
        # reports it written, and meanwhile the same job (READY again, with
        # no backoff) may be claimed and end once more.
        self._writing: set[Attempt] = set()
        self._timed: dict[int, Attempt] = {}  # running, with a timeout
        self._looks_at = 0.0  # when the main loop looks at deadlines next
        # One token per waiting attempt: a thread takes a token, then the
        # best attempt. While attempts wait, a thread takes the next without
        # blocking, where a Condition would cost a thread switch per job.
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        # Thread-safe; see pause_starts() and wait().
        self._may_start = threading.Event()
        self._may_start.set()
        self._wake = threading.Event()

    # The main loop and the listener: claims ------------------------------------

    def reserve_for_loop(self) -> Reservation | None:
        with self._lock:
            return self._slots.reserve_for_loop()

    def reserve_urgent(self) -> Reservation | None:
        with self._lock:
            return self._slots.reserve_urgent()

    def claimed(
        self, reservation: Reservation, jobs: list[Job], seconds: float | None = None
    ) -> None:
        """The claim made with ``reservation`` returned ``jobs`` (in claim
        order); they wait for a thread."""
        entries = [
            (0, -job.priority, job.run_after, job.id, Attempt(job)) for job in jobs
        ]
        with self._lock:
            alone = sum(job.runs_alone for job in jobs)
            self._isolating += alone
            look_again = self._slots.claim_returned(
                reservation, [job.priority for job in jobs], seconds, alone=alone
            )
            for entry in entries:
                heapq.heappush(self._waiting, entry)
            self._claim_landed.notify_all()
            self._next_turn()
        for _ in entries:
            self._tokens.put(None)
        if look_again:
            self._wake.set()

    def claim_failed(self, reservation: Reservation) -> None:
        """The claim made with ``reservation`` failed; an urgent job it was
        for is left to the main loop, which is woken for it."""
        with self._lock:
            look_again = self._slots.claim_failed(reservation)
            self._claim_landed.notify_all()
        if look_again:
            self._wake.set()

    def close(self, *, wait: float = 0.0, loop_done: bool = False) -> bool:
        """Claim nothing more; wait up to ``wait`` seconds for the claims
        under way to land (their jobs are then held like the others).
        ``loop_done``: called by the main loop once out of its loop (none of
        its own claims is under way). Returns whether none is under way."""
        deadline = time.monotonic() + wait
        self._wake.set()
        with self._lock:
            self._slots.close(loop_done=loop_done)
            while self._slots.reserved > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._claim_landed.wait(left)
        return True

    def notified(self, priority: int | None) -> Notice:
        """New jobs of ``priority`` were enqueued; the main loop is woken."""
        with self._lock:
            notice = self._slots.notified(priority)
        self._wake.set()
        return notice

    def pause_starts(self) -> None:
        """Hold back the job threads from starting more jobs until
        ``resume_starts()`` (or for at most ``MAX_PAUSE``), leaving the GIL to
        an urgent claim: behind busy threads its claim would wait for it
        before the query and again when the reply is in."""
        self._may_start.clear()

    def resume_starts(self) -> None:
        self._may_start.set()

    # The main loop: waiting, deadlines --------------------------------------------

    def clear_wake(self) -> None:
        """At the top of the main loop's round: events from now on wake it."""
        self._wake.clear()

    def wait(self, seconds: float) -> bool:
        """Sleep until an event gives the main loop work, or ``seconds``;
        returns whether it was woken (``wait(0)``: whether it would be)."""
        return self._wake.wait(seconds)

    def overdue(self, now: float, longest: float) -> tuple[Attempt | None, float]:
        """A running attempt past its deadline (or None), and how long the
        main loop may wait before it must look again (at most ``longest``)."""
        with self._lock:
            wait = longest
            for attempt in self._timed.values():
                left = attempt.deadline - now
                if left <= 0:
                    return attempt, 0.0
                wait = min(wait, left)
            self._looks_at = now + wait
        return None, wait

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._slots.idle

    @property
    def limit_reached(self) -> bool:
        with self._lock:
            return self._slots.limit_reached

    @property
    def backlog(self) -> bool:
        """Whether the main loop's last claim came back full: there may be
        more to claim at once."""
        with self._lock:
            return self._slots.backlog

    @property
    def claimed_count(self) -> int:
        """Jobs claimed since the start."""
        with self._lock:
            return self._slots.claimed

    def counts(self) -> dict[str, int]:
        """How many jobs are waiting, running and writing, and slots
        reserved: for logs, tests and the shutdown message."""
        with self._lock:
            slots = self._slots
            return {
                "waiting": slots.waiting,
                "running": slots.running,
                "writing": slots.writing,
                "reserved": slots.reserved,
            }

    def stop_requested(
        self, requests: list[tuple[int, datetime, str | None]], grace: float
    ) -> list[Attempt]:
        """Operators asked these jobs (``(id, at, by)``) to stop. Each held
        job not yet told learns it (its ``cancel_requested_at`` and ``_by``,
        which the task reads and its outcome is decided with); one running
        must stop within ``grace`` seconds, or it is overdue as if past its
        timeout. Returns the attempts told."""
        told = []
        now = time.monotonic()
        wake = False
        with self._lock:
            waiting = {
                entry[3]: entry[-1]
                for entry in self._waiting
                if entry[0] == 0 and entry[-1].stage is Stage.WAITING
            }
            for pk, at, by in requests:
                attempt = self._running.get(pk) or waiting.get(pk)
                if attempt is None or attempt.job.cancel_requested_at is not None:
                    continue
                job = attempt.job
                job.cancel_requested_by = by
                job.cancel_requested_at = at  # last: the flag the task reads
                told.append(attempt)
                if attempt.stage is Stage.RUNNING:
                    attempt.deadline = min(attempt.deadline, now + grace)
                    self._timed[pk] = attempt
                    wake = wake or attempt.deadline < self._looks_at
        if wake:
            self._wake.set()
        return told

    def unfinished_ids(self) -> set[int]:
        """The ids of the jobs claimed that wait for a thread or run: the
        ones that would run twice if the database gave them to another
        worker (an attempt that has ended cannot)."""
        with self._lock:
            return self._unfinished_ids()

    def _unfinished_ids(self) -> set[int]:
        waiting = {
            entry[3]
            for entry in self._waiting
            if entry[0] == 0 and entry[-1].stage is Stage.WAITING
        }
        return waiting | self._running.keys()

    def held_ids(self) -> set[int]:
        """The ids of every job this worker holds: waiting for a thread,
        running, set aside for a job that runs alone and not yet put back,
        or ended with its outcome not yet written (the database still says
        RUNNING for all of them)."""
        with self._lock:
            held = self._unfinished_ids()
            held.update(attempt.job.pk for attempt in self._writing)
            # Set aside for a job that runs alone: RUNNING until its thread
            # has put them back.
            for attempt in self._running.values():
                held.update(job.pk for job in attempt.set_aside or ())
        return held

    # Job threads ------------------------------------------------------------------

    def next_attempt(self, on_idle: Callable[[], None] | None = None) -> Attempt | None:
        """The best waiting attempt, now running on this thread; blocks until
        there is one (calling ``on_idle`` once if none comes within
        IDLE_CONNECTION_SECONDS). None: the thread is to exit
        (``release_threads``). An attempt that runs alone comes with the
        jobs set aside for it (``Attempt.set_aside``), which the thread must
        put back first."""
        while True:
            try:
                self._tokens.get(timeout=IDLE_CONNECTION_SECONDS)
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                self._tokens.get()
            if not self._may_start.is_set():
                # Which job is next is decided after the pause: the urgent
                # one, if its claim has come in.
                self._may_start.wait(self.MAX_PAUSE)
            with self._lock:
                if self._isolating:
                    while not self._may_take_next():
                        self._held_back += 1
                        self._turn.wait()
                        self._held_back -= 1
                attempt = heapq.heappop(self._waiting)[-1]
                if attempt is None:
                    return None
                if attempt.stage is Stage.SET_ASIDE:
                    self._isolating -= 1
                    continue  # no longer this worker's: the next one
                now = time.monotonic()
                job = attempt.job
                attempt.stage = Stage.RUNNING
                attempt.started = now
                attempt.thread_id = threading.get_ident()
                self._running[job.id] = attempt
                self._slots.job_started(job.priority)
                if job.runs_alone:
                    self._alone = attempt
                    attempt.set_aside = self._set_aside_waiting()
                # A timeout that is not a positive number (a row written
                # around the API) sets no deadline: the attempt fails on its
                # row first.
                if job.timeout is not None and 0 < job.timeout < math.inf:
                    attempt.deadline = now + job.timeout
                    self._timed[job.id] = attempt
                    # Its deadline comes before the main loop would look.
                    wake = attempt.deadline < self._looks_at
                else:
                    wake = False
            if wake:
                self._wake.set()
            return attempt

    def _set_aside_waiting(self) -> list[Job]:
        """Under the lock: the waiting attempts leave the ledger, unstarted
        (their entries stay in the queue, to be skipped)."""
        jobs = []
        for entry in self._waiting:
            attempt = entry[-1]
            if attempt is not None and attempt.stage is Stage.WAITING:
                attempt.stage = Stage.SET_ASIDE
                jobs.append(attempt.job)
                self._isolating += 1 - attempt.job.runs_alone
        if jobs:
            self._slots.set_aside(
                [job.priority for job in jobs], alone=sum(j.runs_alone for j in jobs)
            )
        return jobs

    def _may_take_next(self) -> bool:
        """Whether the best waiting attempt may start now: not beside a job
        that runs alone, and, if it runs alone, not beside any. (A thread
        told to exit always may.)"""
        attempt = self._waiting[0][-1]
        if attempt is None or attempt.stage is Stage.SET_ASIDE:
            return True
        if self._alone is not None:
            return False
        return not (attempt.job.runs_alone and self._running)

    def _next_turn(self) -> None:
        """Under the lock: the running jobs or the best waiting one changed;
        threads held back look again."""
        if self._held_back:
            self._turn.notify_all()

    def _left(self, attempt: Attempt) -> bool:
        """Under the lock: ``attempt`` left the running ones. Returns whether
        it ran alone."""
        pk = attempt.job.id
        del self._running[pk]
        self._timed.pop(pk, None)
        alone = attempt is self._alone
        if alone:
            self._alone = None
            self._isolating -= 1
        if self._held_back:  # an attempt that runs alone may start now
            self._turn.notify_all()
        return alone

    def finished(self, attempt: Attempt, seconds: float) -> None:
        """The attempt ended after ``seconds`` on its thread; its outcome is
        on its way to the database."""
        attempt.seconds = seconds  # read once the outcome is written
        with self._lock:
            alone = self._left(attempt)
            attempt.stage = Stage.WRITING
            self._writing.add(attempt)
            wake = self._slots.job_finished(alone)
        if wake:
            self._wake.set()

    def dropped(self, attempt: Attempt) -> None:
        """An attempt taken by a thread leaves without an outcome to write
        (the worker is exiting, or failed around it)."""
        with self._lock:
            if attempt.stage is Stage.RUNNING:
                wake = self._slots.job_dropped(self._left(attempt))
            elif attempt in self._writing:
                self._writing.remove(attempt)
                wake = self._slots.outcomes_written(1)
            else:
                return
        if wake:
            self._wake.set()

    def release_threads(self, count: int) -> None:
        """Let ``count`` job threads exit once the waiting attempts have been
        taken."""
        with self._lock:
            for number in range(count):
                heapq.heappush(self._waiting, (1, number, None, None, None))
            self._next_turn()
        self.resume_starts()
        for _ in range(count):
            self._tokens.put(None)

    # The completer ----------------------------------------------------------------

    def written(self, attempts: list[Attempt]) -> None:
        """The outcomes of ``attempts`` are committed (or given up on)."""
        seconds = [attempt.seconds for attempt in attempts]
        writing = self._writing
        with self._lock:
            count = 0
            for attempt in attempts:
                # An attempt the worker dropped meanwhile is written already.
                if attempt in writing:
                    writing.remove(attempt)
                    count += 1
            wake = self._slots.outcomes_written(count, seconds)
        if wake:
            self._wake.set()
