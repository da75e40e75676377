"""The ledger (``worker/ledger.py``): which waiting job a thread starts next,
the pause an urgent claim asks for, deadlines, and the jobs held, with real
threads and no database (the jobs are unsaved rows)."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from django_bgtasks.models import Job
from django_bgtasks.worker.ledger import Ledger, Stage
from django_bgtasks.worker.slots import Slots

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(pk: int, priority: int = 0, *, timeout=None, minutes: int = 0) -> Job:
    return Job(
        pk=pk,
        priority=priority,
        timeout=timeout,
        run_after=T0 + timedelta(minutes=minutes),
    )


def claimed(ledger: Ledger, *jobs: Job, urgent: bool = False) -> None:
    """A claim of ``jobs`` landed (the listener's, if ``urgent``)."""
    reservation = ledger.reserve_urgent() if urgent else ledger.reserve_for_loop()
    assert reservation is not None
    ledger.claimed(reservation, list(jobs), 0.001)


class Taker(threading.Thread):
    """A job thread that takes one attempt and records it."""

    def __init__(self, ledger: Ledger):
        super().__init__(daemon=True)
        self.ledger = ledger
        self.taken = []
        self.done = threading.Event()

    def run(self):
        self.taken.append(self.ledger.next_attempt())
        self.done.set()


def test_the_best_waiting_job_starts_first():
    ledger = Ledger(Slots(threads=1, prefetch=4))
    claimed(ledger, job(1, 0), job(2, 5, minutes=1), job(3, 5))
    order = [ledger.next_attempt().job.pk for _ in range(3)]
    assert order == [3, 2, 1]  # priority, then run_after


def test_an_urgent_job_claimed_during_a_pause_starts_before_the_waiting_ones():
    """The pause an urgent claim asks for holds the threads back: the job
    claimed in it starts next, before the ones claimed earlier."""
    ledger = Ledger(Slots(threads=1, prefetch=4))
    ledger.MAX_PAUSE = 30.0
    ledger.pause_starts()
    taker = Taker(ledger)
    taker.start()
    claimed(ledger, job(1, 0))  # the thread wakes, and waits for the pause
    claimed(ledger, job(2, 50), urgent=True)
    ledger.resume_starts()
    assert taker.done.wait(10)
    assert [attempt.job.pk for attempt in taker.taken] == [2]
    assert ledger.next_attempt().job.pk == 1


def test_a_pause_nobody_ends_lasts_at_most_max_pause():
    ledger = Ledger(Slots(threads=1))
    ledger.MAX_PAUSE = 0.05
    ledger.pause_starts()  # and never resumed
    taker = Taker(ledger)
    taker.start()
    claimed(ledger, job(1))
    assert taker.done.wait(10)
    assert taker.taken[0].job.pk == 1


def test_threads_released_take_the_waiting_jobs_first():
    ledger = Ledger(Slots(threads=1, prefetch=1))
    claimed(ledger, job(1), job(2))
    ledger.release_threads(1)
    assert [ledger.next_attempt().job.pk for _ in range(2)] == [1, 2]
    assert ledger.next_attempt() is None


def test_an_attempt_goes_from_waiting_to_running_to_writing_to_written():
    ledger = Ledger(Slots(threads=2))
    claimed(ledger, job(1), job(2))
    assert ledger.unfinished_ids() == {1, 2}
    assert ledger.counts() == {"waiting": 2, "running": 0, "writing": 0, "reserved": 0}
    first = ledger.next_attempt()
    assert first.stage is Stage.RUNNING and first.thread_id == threading.get_ident()
    ledger.finished(first, 0.001)
    assert first.stage is Stage.WRITING
    assert ledger.counts() == {"waiting": 1, "running": 0, "writing": 1, "reserved": 0}
    # An attempt that has ended cannot run twice: it is not unfinished.
    assert ledger.unfinished_ids() == {2}
    # But the database says RUNNING until its outcome is written: held.
    assert ledger.held_ids() == {1, 2}
    second = ledger.next_attempt()
    ledger.dropped(second)  # the worker exits: no outcome
    assert ledger.unfinished_ids() == set() and not ledger.idle
    ledger.written([first])
    assert ledger.idle
    assert ledger.counts() == {"waiting": 0, "running": 0, "writing": 0, "reserved": 0}
    assert ledger.claimed_count == 2


def test_freed_slots_wake_the_main_loop():
    ledger = Ledger(Slots(threads=1))
    claimed(ledger, job(1))
    attempt = ledger.next_attempt()
    ledger.clear_wake()
    ledger.finished(attempt, 0.001)
    assert ledger.wait(0)


def test_a_job_with_a_near_timeout_wakes_the_loop_when_it_starts():
    """The loop plans its next look at the deadlines of the jobs running
    when it last looked; a job that starts later with a nearer deadline
    wakes it."""
    ledger = Ledger(Slots(threads=2))
    overdue, wait = ledger.overdue(time.monotonic(), 60.0)
    assert overdue is None and wait == 60.0
    claimed(ledger, job(1), job(2, timeout=5.0))
    ledger.clear_wake()
    untimed = ledger.next_attempt()
    assert untimed.job.pk == 1 and not ledger.wait(0)
    timed = ledger.next_attempt()
    assert timed.deadline == pytest.approx(timed.started + 5.0)
    assert ledger.wait(0)


def test_an_attempt_past_its_deadline_is_overdue():
    ledger = Ledger(Slots(threads=2))
    claimed(ledger, job(1, timeout=10.0), job(2, timeout=2.0))
    first, second = ledger.next_attempt(), ledger.next_attempt()
    overdue, wait = ledger.overdue(first.started, 60.0)
    assert overdue is None and wait == pytest.approx(2.0, abs=0.1)
    overdue, wait = ledger.overdue(second.deadline + 0.001, 60.0)
    assert overdue is second and wait == 0
    ledger.finished(second, 2.0)
    assert ledger.overdue(second.deadline + 0.001, 60.0)[0] is None


def test_close_waits_for_a_claim_under_way_to_land():
    ledger = Ledger(Slots(threads=1))
    reservation = ledger.reserve_for_loop()
    assert not ledger.close(wait=0)  # under way
    closed = []
    closer = threading.Thread(target=lambda: closed.append(ledger.close(wait=30)))
    closer.start()
    ledger.claimed(reservation, [job(1)])
    closer.join(10)
    assert closed == [True]
    assert ledger.unfinished_ids() == {1}  # to be waited for or given back
    assert ledger.reserve_for_loop() is None and ledger.reserve_urgent() is None


def test_a_failed_urgent_claim_wakes_the_main_loop_for_its_job():
    """The loop may have done its round while the listener's claim held the
    urgent job; when that claim fails the job is the loop's, and it is woken
    to claim it."""
    ledger = Ledger(Slots(threads=1, prefetch=1))
    claimed(ledger, job(1))
    reservation = ledger.reserve_urgent()
    ledger.clear_wake()  # the loop's round, meanwhile
    ledger.claim_failed(reservation)
    assert ledger.wait(0)
    assert ledger.reserve_for_loop().count == 1  # urgent: claimed alone, now


def test_closing_after_the_loop_forgets_a_reservation_it_left():
    """A second signal can cut the main loop short between its reservation
    and its claim's return; the claims are closed all the same, at once."""
    ledger = Ledger(Slots(threads=1))
    ledger.reserve_for_loop()  # and never returned
    assert ledger.close(wait=0, loop_done=True)
    assert ledger.counts()["reserved"] == 0


def alone(pk: int, priority: int = 0) -> Job:
    held = job(pk, priority)
    held.runs_alone = True
    return held


def test_a_job_that_runs_alone_waits_for_the_running_ones_and_sets_the_rest_aside():
    ledger = Ledger(Slots(threads=3, prefetch=2))
    claimed(ledger, job(1, 9), alone(2, 5), job(3), job(4))
    first = ledger.next_attempt()  # job 1 outranks it: starts
    taker = Taker(ledger)
    taker.start()
    assert not taker.done.wait(0.2)  # job 2 waits for job 1 to end
    ledger.finished(first, 0.001)
    assert taker.done.wait(5)
    started = taker.taken[0]
    assert started.job.pk == 2
    # Jobs 3 and 4 are put back by its thread, unstarted: no longer held.
    assert [held.pk for held in started.set_aside] == [3, 4]
    assert ledger.unfinished_ids() == {2}
    # Until they are, the database says RUNNING: not stray.
    assert ledger.held_ids() == {1, 2, 3, 4}
    assert ledger.counts()["waiting"] == 0


def test_nothing_starts_beside_a_job_that_runs_alone():
    ledger = Ledger(Slots(threads=2, prefetch=2))
    loops = ledger.reserve_for_loop()
    listeners = ledger.reserve_urgent()  # a claim under way meanwhile
    ledger.claimed(loops, [alone(1, 5)])
    running_alone = ledger.next_attempt()
    assert running_alone.set_aside == []
    ledger.claimed(listeners, [job(2, 9)])
    taker = Taker(ledger)
    taker.start()
    assert not taker.done.wait(0.2)
    ledger.finished(running_alone, 0.001)
    assert taker.done.wait(5) and taker.taken[0].job.pk == 2


def test_threads_told_to_exit_skip_the_jobs_set_aside():
    ledger = Ledger(Slots(threads=1, prefetch=3))
    claimed(ledger, alone(1, 5), job(2), job(3))
    running_alone = ledger.next_attempt()
    ledger.finished(running_alone, 0.001)
    ledger.release_threads(1)
    assert ledger.next_attempt() is None  # jobs 2 and 3 are not this worker's


def test_a_job_retried_before_its_first_outcome_is_marked_written_frees_both_slots():
    """The completer commits an outcome (the job READY again, no backoff)
    and only then tells the ledger: the job can be claimed and end again in
    between. Each attempt's write frees its own slot, not the other's."""
    ledger = Ledger(Slots(threads=1))
    claimed(ledger, job(1))
    first = ledger.next_attempt()
    ledger.finished(first, 0.001)
    # (its outcome is committed here; the ledger hears of it below)
    claimed(ledger, job(1))  # the same job, claimed again
    second = ledger.next_attempt()
    ledger.finished(second, 0.001)
    ledger.written([first])
    ledger.written([second])
    assert ledger.counts()["writing"] == 0
    assert ledger.idle
