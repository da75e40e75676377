"""The claim policy's rules (``worker/slots.py``), one test or more each:
counts only, no threads, no database."""

import pytest

from django_bgtasks.worker.slots import (
    AUTO_PREFETCH_MAX,
    Notice,
    Reservation,
    Slots,
)


def claim(slots: Slots, priorities=None, *, seconds=None) -> Reservation | None:
    """The main loop's claim, returning ``priorities`` (default: as many
    priority-0 jobs as it reserved)."""
    reservation = slots.reserve_for_loop()
    if reservation is not None:
        got = [0] * reservation.count if priorities is None else priorities
        slots.claim_returned(reservation, got, seconds)
    return reservation


def timed(slots: Slots, job=None, claim=None) -> Slots:
    """``slots`` with these running averages of a job's time and a
    claim's, as if measured."""
    slots.job_seconds, slots.claim_seconds = job, claim
    slots.retune()
    return slots


def run(slots: Slots, count: int, *, seconds=None, priorities=None) -> None:
    """``count`` waiting jobs (of ``priorities``, default 0) start and
    finish; with ``seconds`` (each one's time), their outcomes are written
    too, else they wait to be."""
    for priority in priorities or [0] * count:
        slots.job_started(priority)
        slots.job_finished()
    if seconds is not None:
        slots.outcomes_written(count, [seconds] * count)


# Rule 1: capacity -------------------------------------------------------------


def test_a_claim_takes_one_job_per_thread_and_prefetch_slot():
    slots = Slots(threads=4, prefetch=6)
    assert claim(slots).count == 10
    assert (slots.waiting, slots.reserved) == (10, 0)
    assert slots.reserve_for_loop() is None  # all held


def test_claims_wait_while_a_batch_of_outcomes_waits_to_be_written():
    slots = Slots(threads=2, prefetch=10, max_outcomes=4)
    assert slots.capacity == 4
    claim(slots)
    run(slots, 4)
    assert slots.writing == 4
    assert slots.free() == 0  # threads free, but outcomes pile up: wait
    assert slots.reserve_for_loop() is None
    assert slots.outcomes_written(4)  # written: the loop has work
    assert claim(slots).count == 4


def test_never_more_than_max_jobs_in_all():
    slots = Slots(threads=4, max_jobs=6)
    assert claim(slots).count == 4
    run(slots, 4)
    slots.outcomes_written(4)
    assert claim(slots).count == 2
    run(slots, 2)
    slots.outcomes_written(2)
    assert slots.limit_reached
    assert slots.reserve_for_loop() is None
    assert slots.reserve_urgent() is None


# Rule 2: reservations ---------------------------------------------------------------


def test_claims_under_way_at_once_never_exceed_the_capacity_but_one():
    slots = Slots(threads=1, prefetch=4)
    loop = slots.reserve_for_loop()
    assert loop.count == 5 and slots.free() == 0
    urgent = slots.reserve_urgent()  # one beyond: the loop holds all
    assert urgent is not None and urgent.count == 1
    assert slots.reserve_urgent() is None  # one beyond, at most
    slots.claim_returned(urgent, [100])
    slots.claim_returned(loop, [0] * 5)
    assert slots.held == 6 and slots.reserved == 0


def test_the_urgent_claim_takes_nothing_past_max_jobs():
    """Two claims under way at once never take more jobs than max_jobs."""
    slots = Slots(threads=1, prefetch=4, max_jobs=1)
    assert slots.reserve_for_loop().count == 1
    assert slots.reserve_urgent() is None


def test_a_failed_claim_gives_its_slots_back_and_leaves_the_urgent_job():
    slots = Slots(threads=2)
    slots.notified(None)
    assert slots.urgent
    reservation = slots.reserve_for_loop()
    assert reservation.urgent and not slots.urgent  # the claim takes it
    slots.claim_failed(reservation)
    assert slots.reserved == 0 and not slots.loop_claiming
    assert slots.urgent  # still to claim


# Rule 3: backlog batching --------------------------------------------------------


def test_a_full_claim_of_short_jobs_batches_the_next_one():
    """While claims come back full and jobs are short beside a claim, the
    loop waits for several free slots, not one."""
    slots = Slots(threads=16, prefetch=48)
    timed(slots, job=0.002)
    claim(slots, seconds=0.003)  # full: a backlog
    assert slots.backlog
    # 16 threads finish 24 jobs during a 3 ms claim: claim at twice that,
    # capped at half the capacity.
    assert slots.claim_at == 32
    run(slots, 31, seconds=0.002)
    assert slots.reserve_for_loop() is None  # 31 free: wait
    assert not slots.loop_has_work()
    run(slots, 1, seconds=0.002)
    assert slots.loop_has_work()
    assert slots.reserve_for_loop().count == 32


def test_long_jobs_are_claimed_as_each_thread_frees():
    """Jobs long beside a claim: a freed thread is never left waiting for
    others to free."""
    slots = Slots(threads=16)
    timed(slots, job=5.0)
    claim(slots, seconds=0.003)
    assert slots.backlog and slots.claim_at == 1
    run(slots, 1, seconds=5.0)
    assert slots.reserve_for_loop().count == 1


def test_a_short_claim_means_the_queue_is_drained_claim_at_once():
    slots = Slots(threads=16, prefetch=48)
    timed(slots, job=0.002)
    claim(slots, seconds=0.003)
    assert slots.claim_at == 32
    run(slots, 2, seconds=0.002)
    assert slots.reserve_for_loop() is None
    slots.notified(None)  # a wake-up that does not say: claim one now
    reservation = slots.reserve_for_loop()
    assert reservation.count == 1
    assert slots.claim_returned(reservation, [])  # short: look again at once
    assert slots.claim_at == 1 and not slots.backlog


def test_a_claim_that_lowers_the_mark_asks_the_loop_to_look_again():
    """Jobs that ended during the claim were held to the old mark and woke
    no one."""
    slots = Slots(threads=4, prefetch=12)
    timed(slots, job=0.001)
    reservation = slots.reserve_for_loop()
    slots.claim_returned(reservation, [0] * reservation.count, 0.01)
    assert slots.claim_at > 1
    run(slots, slots.claim_at, seconds=0.001)
    reservation = slots.reserve_for_loop()
    assert slots.claim_returned(reservation, [0])  # short: the mark drops


def test_a_backlog_is_claimed_while_jobs_run_when_outcomes_limit_claims():
    """With more threads and prefetch than a batch of outcomes, the loop
    still claims while its jobs run: it waits for part of a batch's worth of
    free slots, not for more than it may ever claim."""
    slots = Slots(threads=4, prefetch=16, max_outcomes=8)
    timed(slots, job=0.001)
    claim(slots, seconds=0.01)
    assert slots.capacity == 8 and slots.claim_at <= 4
    run(slots, slots.claim_at, seconds=0.001)
    assert slots.held > 0
    assert slots.reserve_for_loop() is not None


# Rule 4: prefetch -------------------------------------------------------------------


def test_fixed_prefetch_is_kept_whatever_the_jobs():
    slots = Slots(threads=2, prefetch=5)
    timed(slots, job=10.0, claim=0.001)
    assert slots.capacity == 7


def test_adaptive_prefetch_starts_at_none():
    """Before any job has been timed, a claim takes a job per thread."""
    slots = Slots(threads=2)
    assert slots.prefetch_now == 0
    assert claim(slots).count == 2


def test_adaptive_prefetch_covers_the_jobs_finished_during_claims():
    slots = Slots(threads=2)
    timed(slots, job=0.001, claim=0.002)
    # 2 threads finish 4 jobs during a claim; enough for four claims.
    assert slots.jobs_per_claim == 4
    assert slots.prefetch_now == 16
    assert slots.capacity == 18


def test_adaptive_prefetch_is_bounded():
    slots = Slots(threads=2)
    timed(slots, job=0.00001, claim=0.01)
    assert slots.prefetch_now == AUTO_PREFETCH_MAX


def test_adaptive_prefetch_holds_no_job_while_jobs_are_long():
    """A waiting job is one another worker could be running: long jobs are
    not prefetched (at most about 0.1 s of the threads' work is)."""
    slots = Slots(threads=4)
    timed(slots, job=2.0, claim=0.002)
    assert slots.prefetch_now == 0
    timed(slots, job=0.05, claim=0.5)  # 4 threads, 0.1 s: 8 jobs at most
    assert slots.prefetch_now == 8


def test_adaptive_prefetch_follows_the_jobs_and_claims_it_times():
    slots = Slots(threads=2)
    claim(slots, seconds=0.002)
    run(slots, 2, seconds=0.0005)
    assert slots.claim_seconds == 0.002
    assert slots.job_seconds == pytest.approx(0.0005)
    assert slots.prefetch_now == 32
    for _ in range(20):  # the jobs get long: the prefetch shrinks to none
        reservation = claim(slots, seconds=0.002)
        run(slots, reservation.count, seconds=3.0)
    assert slots.prefetch_now == 0
    assert claim(slots).count == 2


# Rule 5: urgent jobs ----------------------------------------------------------------


def test_a_job_outranking_the_waiting_ones_is_urgent():
    slots = Slots(threads=1, prefetch=3)
    claim(slots, [0, 5, 10, 10])
    slots.job_started(10)  # one runs; 0, 5 and 10 wait
    assert slots.notified(0) is Notice.WAKE  # outranks none of them
    assert not slots.urgent
    assert slots.notified(1) is Notice.CLAIM_HERE  # outranks the 0
    assert slots.urgent


def test_with_none_waiting_the_head_of_the_backlog_sets_the_bar():
    slots = Slots(threads=2)
    assert slots.notified(0) is Notice.WAKE  # nothing held or claimed yet
    assert slots.urgent  # anything may be urgent
    slots.urgent = False
    claim(slots, [3, 7])
    run(
        slots, 2, priorities=[7, 3]
    )  # nothing waits: the last claim's lowest priority is 3
    assert slots.notified(3) is Notice.WAKE and not slots.urgent
    assert slots.notified(4) is Notice.WAKE and slots.urgent  # idle: no claim here


def test_an_urgent_claim_does_not_raise_the_bar():
    """The urgent job is not the head of the backlog: a job outranking the
    backlog but not the urgent one is still urgent."""
    slots = Slots(threads=1, prefetch=4)
    claim(slots, [0])
    urgent = slots.reserve_urgent()
    slots.claim_returned(urgent, [100])
    assert slots.last_claimed_priority == 0


def test_a_notification_without_a_priority_is_urgent_but_claimed_by_the_loop():
    slots = Slots(threads=1, prefetch=1)
    claim(slots, [0])
    assert slots.notified(None) is Notice.WAKE
    assert slots.urgent


def test_the_listener_claims_while_the_loops_claim_is_under_way():
    slots = Slots(threads=1, prefetch=4)
    slots.last_claimed_priority = 0
    slots.reserve_for_loop()  # under way, nothing held yet
    assert slots.notified(50) is Notice.CLAIM_HERE


def test_an_urgent_job_wakes_the_loop_as_soon_as_one_slot_frees():
    slots = Slots(threads=1, prefetch=19)
    timed(slots, job=0.001)
    claim(slots, seconds=0.05)  # full: claims now wait for 10 free slots
    assert slots.claim_at == 10
    run(slots, 1, seconds=0.001)
    assert not slots.loop_has_work()
    slots.notified(None)
    assert slots.loop_has_work()
    assert slots.reserve_for_loop().count == 1  # alone: returns soonest


# Rule 6: closing ----------------------------------------------------------------------


def test_a_closed_worker_claims_nothing_and_nothing_is_urgent_to_claim_here():
    slots = Slots(threads=1, prefetch=4)
    claim(slots, [0])
    slots.close()
    assert slots.reserve_for_loop() is None
    assert slots.reserve_urgent() is None
    assert slots.notified(100) is Notice.WAKE


def test_jobs_dropped_while_exiting_free_their_slots():
    slots = Slots(threads=2, prefetch=1)
    claim(slots, [0, 5, 9])
    slots.job_started(9)
    slots.job_dropped()  # the running one
    assert (slots.waiting, slots.running) == (2, 0)
    assert slots.notified(1) is Notice.CLAIM_HERE  # 0 still waits


def test_the_mark_follows_a_prefetch_that_shrank():
    """Jobs turn long after a backlog of short ones: the prefetch shrinks,
    and the loop claims as threads free, not once all have."""
    slots = Slots(threads=4)
    timed(slots, job=0.001)
    claim(slots, seconds=0.004)  # full: a backlog, short jobs
    assert slots.capacity > 40 and slots.claim_at > 2
    run(slots, slots.waiting - 4, seconds=0.001)  # the short ones end
    run(slots, 1, seconds=1.0)  # then long ones
    assert slots.prefetch_now == 0 and slots.capacity == 4
    assert slots.held == 3
    assert slots.loop_has_work()
    assert slots.reserve_for_loop().count == 1


# Rule 7: isolation -------------------------------------------------------------


def test_while_a_job_that_runs_alone_is_held_nothing_is_claimed():
    slots = Slots(threads=4, prefetch=0)
    reservation = slots.reserve_for_loop()
    slots.claim_returned(reservation, [0, 0], alone=1)
    assert slots.free() == 0 and slots.free(beyond=1) == 0
    assert slots.reserve_for_loop() is None and slots.reserve_urgent() is None
    slots.set_aside([0])  # the one held with it, put back as it starts
    slots.job_started(0)
    assert slots.reserve_for_loop() is None
    assert slots.job_finished(alone=True)  # the main loop may claim again
    assert slots.alone == 0 and slots.free() == 4


def test_a_job_that_runs_alone_dropped_while_exiting_frees_the_worker():
    slots = Slots(threads=2, prefetch=0)
    slots.claim_returned(slots.reserve_for_loop(), [0], alone=1)
    slots.job_started(0)
    slots.job_dropped(alone=True)
    assert slots.alone == 0 and slots.idle
