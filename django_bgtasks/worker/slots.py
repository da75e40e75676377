"""The claim policy of one worker process: how many jobs it may hold, when it
claims more, and when a new job is urgent. Counts only: no threads, no
database, no clock (durations are given to it), so every rule is a unit
test (``tests/test_slots.py``). The ledger calls it under its lock.

A claimed job takes a *slot* from its claim until its outcome is written:

    claim ──> waiting ──> running ──> writing ──> (written: slot free)
              (prefetched)  (a thread)  (outcome in the completer's batch)

The rules:

1. **Capacity.** At most ``threads + prefetch`` jobs are held (waiting or
   running), and at most ``max_outcomes`` outcomes wait to be written: when
   the database writes slower than the threads run, claims wait rather than
   finished jobs pile up in memory. Never more than ``max_jobs`` in all.
2. **Reservations.** A claim first reserves the slots it may fill, so two
   claims under way at once (the main loop's and the listener's) never take
   more than the capacity between them.
3. **Backlog batching.** While claims come back full (the queue has more
   than the worker takes), the main loop waits until ``claim_at`` slots are
   free and claims them at once: fewer, larger claims. A claim that comes
   back short means the queue is drained: claim again as soon as one slot
   frees.
4. **Prefetch.** ``prefetch`` jobs are held beyond the threads, to start the
   moment a thread frees instead of a claim's round trip later. Given as a
   number it is fixed; left None it adapts: enough waiting jobs to cover
   the jobs the threads finish during a claim, while they are short and the
   backlog deep; none when jobs are long (a waiting job is one another
   worker could be running).
5. **Urgent jobs.** A NOTIFY names its jobs' priority. A job that outranks a
   job this worker holds waiting (or, with none waiting, the lowest it
   claimed last: the head of the backlog) is urgent: the main loop claims
   as soon as one slot frees, and while jobs run the listener claims it
   itself, in one slot beyond the capacity (the main loop's claim under way
   may hold all the free ones).
6. **Closing.** Once the worker stops, nothing more is claimed.
7. **Isolation.** A job that must run alone (its last process died while
   it ran beside others: ``Job.runs_alone``) starts when nothing else runs,
   and nothing starts beside it (the ledger sees to that). While the worker
   holds one, it claims nothing: jobs claimed would wait behind it, where
   another worker could be running them.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

# The most outcomes waiting to be written: the completer's largest batch.
MAX_OUTCOMES = 256
# Adaptive prefetch: at most this many jobs beyond the threads (a larger
# claim holds a high-priority job behind it locked for longer) ...
AUTO_PREFETCH_MAX = 64
# ... enough to cover the jobs the threads finish during this many claims ...
CLAIMS_COVERED = 4
# ... and no more than the threads get through in this many seconds: a
# prefetched job waits about that long at most.
PREFETCH_WAIT = 0.1
# The weight of a new duration in the running averages; in the one that
# bounds the prefetch, a job longer than the average weighs more, so that
# prefetching stops within a job or two of long ones, and resumes over a
# few dozen short ones.
SMOOTHING = 0.1
RISING = 0.5


@dataclass(frozen=True, slots=True)
class Reservation:
    """Slots held for one claim under way."""

    count: int
    by_loop: bool  # the main loop's claim, or the listener's
    # An urgent job was waiting to be claimed: it still is if the claim fails.
    urgent: bool = False


class Notice(enum.Enum):
    """What a notification asks of the worker."""

    WAKE = "wake"  # the main loop looks for work
    CLAIM_HERE = "claim here"  # an urgent job: the listener claims it now


@dataclass
class Slots:
    """The counts of one worker's slots, and the decisions made from them."""

    threads: int
    prefetch: int | None = None  # None: adapts (rule 4)
    max_jobs: int | None = None
    max_outcomes: int = MAX_OUTCOMES

    waiting: int = 0  # claimed, waiting for a thread
    running: int = 0  # on a thread
    writing: int = 0  # ended; outcome not yet committed
    reserved: int = 0  # held for claims under way (the loop's and the listener's)
    loop_reserved: int = 0  # of which the main loop's
    claimed: int = 0  # claimed since the start
    backlog: bool = False  # the main loop's last claim came back full
    urgent: bool = False  # an urgent job may be due (rule 5)
    loop_claiming: bool = False  # the main loop's claim is under way
    closed: bool = False  # nothing more is claimed (rule 6)
    alone: int = 0  # held jobs that must run alone (rule 7)
    # The lowest priority of the main loop's last claim: the head of the
    # backlog.
    last_claimed_priority: int | None = None
    # Running averages: an attempt's time on its thread, a claim's round
    # trip; and an attempt's time weighted towards the longest (for how long
    # a prefetched job may wait).
    job_seconds: float | None = None
    claim_seconds: float | None = None
    long_job_seconds: float | None = None
    # Worked out from the above by retune(), as they change: the jobs held
    # beyond the threads (rule 4), and the free slots at which the main
    # loop claims (rule 3).
    prefetch_now: int = field(default=0, init=False)
    claim_at: int = field(default=1, init=False)
    _tuned_for: float | None = field(default=None, init=False, repr=False)
    _waiting_priorities: Counter = field(default_factory=Counter, repr=False)

    def __post_init__(self):
        self.retune()

    # Sizes ---------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Jobs claimed and not yet ended."""
        return self.waiting + self.running

    @property
    def idle(self) -> bool:
        """No job held, no outcome waiting to be written."""
        return not self.held and not self.writing

    @property
    def limit_reached(self) -> bool:
        return self.max_jobs is not None and self.claimed >= self.max_jobs

    @property
    def jobs_per_claim(self) -> float:
        """The jobs the threads finish during one claim's round trip (0
        until both have been timed)."""
        if not self.job_seconds or self.claim_seconds is None:
            return 0.0
        return self.threads * self.claim_seconds / self.job_seconds

    def retune(self) -> None:
        """Work out the prefetch (rule 4) and the claim mark (rule 3) from
        the estimates. Called when they change: a claim's return, and a job
        time that moved by more than a quarter since."""
        self._tuned_for = self.job_seconds
        if self.prefetch is not None:
            self.prefetch_now = self.prefetch
        elif not self.job_seconds:
            self.prefetch_now = 0
        else:
            wanted = math.ceil(CLAIMS_COVERED * self.jobs_per_claim)
            longest = max(self.job_seconds, self.long_job_seconds or 0.0)
            short_wait = int(self.threads * PREFETCH_WAIT / longest)
            self.prefetch_now = max(0, min(wanted, short_wait, AUTO_PREFETCH_MAX))
        # During a backlog, claim once the slots the threads free during
        # about two claims are free (at least one, at most half the
        # capacity); otherwise at once.
        if self.backlog:
            twice = math.ceil(2 * self.jobs_per_claim)
            self.claim_at = max(1, min(twice, self.capacity // 2))
        else:
            self.claim_at = 1

    @property
    def capacity(self) -> int:
        """The most jobs one claim may take (rule 1)."""
        return min(self.threads + self.prefetch_now, self.max_outcomes)

    def free(self, beyond: int = 0) -> int:
        """Slots a claim may reserve now; ``beyond``: how many past the
        capacity it may take this time (never past ``max_jobs``)."""
        free = (
            min(
                self.threads + self.prefetch_now - self.waiting - self.running,
                self.max_outcomes - self.writing,
            )
            - self.reserved
            + beyond
        )
        if self.max_jobs is not None:
            free = min(free, self.max_jobs - self.claimed - self.reserved)
        if self.alone:
            return 0
        return max(free, 0)

    # Claims --------------------------------------------------------------------

    def reserve_for_loop(self) -> Reservation | None:
        """The slots the main loop claims now, reserved for it; None: it
        waits (rules 2, 3, 5, 6)."""
        if self.closed:
            return None
        free = self.free()
        if self.held and free < self.claim_at:
            # Wait for more slots; but an urgent job is claimed now, alone
            # (a small claim returns soonest): it joins the waiting ones and
            # starts first.
            free = min(free, 1) if self.urgent else 0
        if not free:
            return None
        return self._reserve(free, by_loop=True)

    def reserve_urgent(self) -> Reservation | None:
        """One slot for the listener's claim of an urgent job, beyond the
        capacity (rule 5); None if none may be taken."""
        if self.closed or not self.free(beyond=1):
            return None
        return self._reserve(1, by_loop=False)

    def _reserve(self, count: int, *, by_loop: bool) -> Reservation:
        reservation = Reservation(count, by_loop, self.urgent)
        self.reserved += count
        if by_loop:
            self.loop_reserved += count
            self.loop_claiming = True
        self.urgent = False  # the claim takes the best due jobs
        return reservation

    def _release(self, reservation: Reservation) -> None:
        self.reserved -= reservation.count
        if reservation.by_loop:
            self.loop_reserved -= reservation.count
            self.loop_claiming = False

    def claim_returned(
        self,
        reservation: Reservation,
        priorities: list[int],
        seconds: float | None = None,
        alone: int = 0,
    ) -> bool:
        """A claim came back with jobs of ``priorities`` (``seconds``: its
        round trip; ``alone``: how many of them must run alone). Returns
        whether the main loop must look again before it waits: it now
        claims at fewer free slots, and the jobs that ended during the claim
        were held to the old mark."""
        self._release(reservation)
        self.alone += alone
        self.waiting += len(priorities)
        self.claimed += len(priorities)
        self._waiting_priorities.update(priorities)
        if not reservation.by_loop:
            return False
        if priorities:  # an urgent job is not the head of the backlog
            self.last_claimed_priority = min(priorities)
        if seconds is not None:
            self.claim_seconds = _average(self.claim_seconds, seconds)
        self.backlog = len(priorities) == reservation.count
        old = self.claim_at
        self.retune()
        return self.claim_at < old

    def claim_failed(self, reservation: Reservation) -> bool:
        """A claim failed (the database); an urgent job it was for is still
        to claim. Returns whether the main loop must look again (it may have
        done its round while the failed claim held the job)."""
        self._release(reservation)
        if reservation.urgent or not reservation.by_loop:
            self.urgent = True
            return True
        return False

    # Jobs ----------------------------------------------------------------------

    def job_started(self, priority: int) -> None:
        self.waiting -= 1
        self.running += 1
        self._forget_priority(priority)

    def job_finished(self, alone: bool = False) -> bool:
        """A job's attempt ended and its outcome waits to be written
        (``alone``: a job that ran alone); returns whether the main loop has
        work (``loop_has_work``)."""
        self.running -= 1
        self.alone -= alone
        self.writing += 1
        return self.loop_has_work()

    def outcomes_written(self, count: int, seconds: Sequence[float] = ()) -> bool:
        """``count`` outcomes are committed, of attempts that took
        ``seconds`` on their threads (timed once per batch, off the job
        threads); returns ``loop_has_work()``."""
        self.writing -= count
        if seconds:
            self._timed_jobs(seconds)
        return self.loop_has_work()

    def _timed_jobs(self, seconds: Sequence[float]) -> None:
        """Fold a batch of attempts' times into the running averages, as if
        one by one; work out the policy again if the average moved by more
        than a quarter."""
        keep = (1 - SMOOTHING) ** len(seconds)
        mean = sum(seconds) / len(seconds)
        if self.job_seconds is None:
            self.job_seconds = mean
        else:
            self.job_seconds = keep * self.job_seconds + (1 - keep) * mean
        self.long_job_seconds = _average(
            self.long_job_seconds, max(seconds), rising=RISING
        )
        tuned_for = self._tuned_for
        if not tuned_for or abs(self.job_seconds - tuned_for) > tuned_for / 4:
            self.retune()

    def set_aside(self, priorities: list[int], alone: int = 0) -> None:
        """Waiting jobs of ``priorities`` are put back unstarted, for a job
        that runs alone (rule 7); ``alone`` of them must run alone too."""
        self.waiting -= len(priorities)
        self.alone -= alone
        for priority in priorities:
            self._forget_priority(priority)

    def job_dropped(self, alone: bool = False) -> bool:
        """A running job leaves without an outcome to write (the worker is
        exiting); returns ``loop_has_work()``."""
        self.running -= 1
        self.alone -= alone
        return self.loop_has_work()

    def _forget_priority(self, priority: int) -> None:
        left = self._waiting_priorities[priority] - 1
        if left > 0:
            self._waiting_priorities[priority] = left
        else:
            del self._waiting_priorities[priority]

    def loop_has_work(self) -> bool:
        """After a job left: whether the main loop has something to do (claim,
        or notice it is idle). A wake-up per job would cost the main loop a
        thread switch per job; it is woken once ``claim_at`` slots are free."""
        if not (self.waiting or self.running or self.writing):  # idle
            return True
        free = self.free()
        return free >= self.claim_at or (free > 0 and self.urgent)

    # Notifications ---------------------------------------------------------------

    def notified(self, priority: int | None) -> Notice:
        """New jobs of ``priority`` (None: not said, as for a retry or a
        "run now") were enqueued: rule 5."""
        floor = (
            min(self._waiting_priorities)
            if self._waiting_priorities
            else self.last_claimed_priority
        )
        if priority is None or floor is None or priority > floor:
            self.urgent = True
            busy = self.held or self.loop_claiming
            if priority is not None and busy and not self.closed:
                return Notice.CLAIM_HERE
        return Notice.WAKE

    def close(self, *, loop_done: bool = False) -> None:
        """Rule 6: no more claims. ``loop_done``: the main loop has left its
        loop, so no claim of its own is under way whatever ``loop_reserved``
        says (a second signal may have cut it short between its reservation
        and its return)."""
        self.closed = True
        if loop_done and self.loop_reserved:
            self.reserved -= self.loop_reserved
            self.loop_reserved = 0
            self.loop_claiming = False


def _average(
    average: float | None, value: float, *, rising: float = SMOOTHING
) -> float:
    """A running average; ``rising``: the weight of a value above it."""
    if average is None:
        return value
    weight = rising if value > average else SMOOTHING
    return average + weight * (value - average)
