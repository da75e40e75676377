"""Claims for a worker (``worker/claims.py``): the main loop's, and the urgent
ones the listener makes on its own thread, against the real database (made
here on the test's thread, without a running worker)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from django_bgtasks.models import Job, JobStatus
from django_bgtasks.worker import claims
from django_bgtasks.worker.claims import Claimer
from django_bgtasks.worker.hooks import RecordedHooks
from django_bgtasks.worker.ledger import Ledger
from django_bgtasks.worker.slots import Slots
from tests import tasks
from tests.conftest import requires_postgresql, requires_server_database

pytestmark = pytest.mark.django_db(transaction=True)

WORKER_ID = "claimer"


def claimer_of(**slots) -> Claimer:
    return Claimer(
        ledger=Ledger(Slots(**slots)),
        using="default",
        worker_id=WORKER_ID,
        queues=None,
        hooks=RecordedHooks(),
    )


def holding_a_job():
    """A claimer whose worker holds one claimed job of priority 0 (waiting
    for its thread), and a READY job of priority 100: (claimer, held id,
    urgent id)."""
    claimer = claimer_of(threads=1, prefetch=4)
    held = int(tasks.add.enqueue(1, 1).id)
    assert [job.pk for job in claimer.claim_for_loop()] == [held]
    urgent = int(tasks.add.using(priority=100).enqueue(2, 2).id)
    return claimer, held, urgent


def status(pk: int) -> str:
    return Job.objects.get(pk=pk).status


def starts_next(ledger: Ledger) -> int:
    """The id of the job a job thread takes next; fails if the threads are
    still held back by a pause."""
    ledger.MAX_PAUSE = 30.0
    taken = []
    thread = threading.Thread(target=lambda: taken.append(ledger.next_attempt()))
    thread.start()
    thread.join(5)
    assert taken, "the job threads are still paused"
    return taken[0].job.pk


class ListenerThread:
    """A thread of its own, as the listener's: calls run on it one at a
    time, each returning its result."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1)

    def call(self, function, *args):
        return self._executor.submit(function, *args).result(timeout=30)

    def connected(self) -> bool:
        return self.call(lambda: connections["default"].connection is not None)

    def close(self) -> None:
        self.call(connections.close_all)
        self._executor.shutdown()


def finish_held(ledger: Ledger) -> None:
    """Run and write every job ``ledger`` holds, as the job threads and the
    completer would: the worker is idle again."""
    while ledger.unfinished_ids():
        attempt = ledger.next_attempt()
        ledger.finished(attempt, 0.001)
        ledger.written([attempt])


def test_the_loop_claims_in_claim_order_and_says_when_to_wait():
    claimer = claimer_of(threads=2)
    low = int(tasks.add.enqueue(1, 1).id)
    high = int(tasks.add.using(priority=10).enqueue(1, 1).id)
    later = int(tasks.add.enqueue(1, 1).id)
    assert [job.pk for job in claimer.claim_for_loop()] == [high, low]
    assert claimer.claim_for_loop() == []  # both slots held: wait
    assert status(later) == JobStatus.READY
    assert claimer.hooks["claims"] == 1 and claimer.hooks["jobs_claimed"] == 2


def test_an_urgent_job_is_claimed_on_the_listeners_thread_while_jobs_run():
    """While the worker holds jobs, the listener claims an outranking job
    itself (the main loop may be inside a long claim of its own), and it
    starts before the ones held."""
    claimer, held, urgent = holding_a_job()

    claimer.notified(100)

    job = Job.objects.get(pk=urgent)
    assert job.status == JobStatus.RUNNING and job.worker_id == WORKER_ID
    assert claimer.ledger.unfinished_ids() == {held, urgent}
    assert claimer.ledger.counts()["reserved"] == 0
    assert claimer.hooks["urgent_claims"] == 1
    assert starts_next(claimer.ledger) == urgent  # and the pause is over


def test_a_full_claim_asks_the_listener_to_warm_its_connection(monkeypatch):
    """A claim of the main loop that comes back full (a backlog: urgent
    jobs may come while it lasts) asks the listener's thread to get its
    connection ready, once every WARM_EVERY seconds at most; a short claim,
    or a full one of one job (a slot freed under load), does not."""
    monkeypatch.setattr(claims, "WARM_EVERY", 3600.0)
    claimer = claimer_of(threads=2, prefetch=0)
    asked = []
    claimer.ask_listener_to_warm = lambda: asked.append(1)
    for number in range(5):
        tasks.add.enqueue(number, 1)
    assert len(claimer.claim_for_loop()) == 2
    assert asked == [1]
    finish_held(claimer.ledger)
    assert len(claimer.claim_for_loop()) == 2
    assert asked == [1]  # within WARM_EVERY
    monkeypatch.setattr(claims, "WARM_EVERY", 0.0)
    finish_held(claimer.ledger)
    assert len(claimer.claim_for_loop()) == 1  # short: the queue is drained
    assert asked == [1]
    finish_held(claimer.ledger)
    tasks.add.enqueue(5, 1)
    tasks.add.enqueue(6, 1)
    assert len(claimer.claim_for_loop()) == 2
    assert asked == [1, 1]

    claimer = claimer_of(threads=1, prefetch=0)
    claimer.ask_listener_to_warm = lambda: asked.append(2)
    tasks.add.enqueue(7, 1)
    tasks.add.enqueue(8, 1)
    assert len(claimer.claim_for_loop()) == 1  # full, of one
    assert asked == [1, 1]


def prepared_claims() -> int:
    """The claim statements prepared on this thread's connection
    (PostgreSQL)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements "
            "WHERE name LIKE 'bgtasks_claim_%%'"
        )
        return cursor.fetchone()[0]


def backend_pid() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def sorting() -> str:
    """This thread's session's ``enable_sort`` (the claim turns it off for
    its own transaction only)."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SHOW enable_sort")
        return cursor.fetchone()[0]


@requires_server_database
def test_the_listeners_thread_warms_its_connection_for_urgent_claims():
    """Asked, the listener's thread opens its connection and, on
    PostgreSQL, prepares the claim on it, claiming nothing and leaving no
    setting behind; its urgent claims then run on that connection."""
    claimer, held, urgent = holding_a_job()
    listener = ListenerThread()
    try:
        assert not listener.connected()
        listener.call(claimer.warm_listeners_connection)
        assert listener.connected()
        assert status(urgent) == JobStatus.READY
        if connection.vendor != "postgresql":
            return
        assert listener.call(prepared_claims) == 1
        assert listener.call(sorting) == "on"
        pid = listener.call(backend_pid)
        listener.call(claimer.notified, 100)
        assert status(urgent) == JobStatus.RUNNING
        assert claimer.ledger.unfinished_ids() == {held, urgent}
        assert listener.call(backend_pid) == pid  # the same connection
    finally:
        listener.close()


@requires_postgresql
def test_a_connection_opened_for_a_read_is_readied_too():
    """The listener's thread may hold a connection it opened for a read (of
    jobs' stop requests): asked, it prepares the claim on it all the
    same."""
    claimer = claimer_of(threads=2)
    listener = ListenerThread()
    try:
        pid = listener.call(backend_pid)
        assert listener.call(prepared_claims) == 0
        listener.call(claimer.warm_listeners_connection)
        assert listener.call(prepared_claims) == 1
        assert listener.call(backend_pid) == pid
    finally:
        listener.close()


@requires_server_database
def test_a_listeners_thread_that_cannot_connect_tries_again_later(caplog):
    """The listener's thread cannot connect (its connection's settings name
    a port nothing listens on): logged, and not tried again at each
    request for IDLE_CONNECTION_SECONDS."""
    claimer = claimer_of(threads=2)
    listener = ListenerThread()

    def unreachable():
        wrapper = connections["default"]  # this thread's alone
        wrapper.settings_dict = {
            **wrapper.settings_dict,
            "HOST": "127.0.0.1",
            "PORT": "9",
        }

    try:
        listener.call(unreachable)
        with caplog.at_level("INFO", logger="django_bgtasks.worker"):
            listener.call(claimer.warm_listeners_connection)
            listener.call(claimer.warm_listeners_connection)
        assert not listener.connected()
        failures = [
            record
            for record in caplog.records
            if "could not get its connection ready" in record.getMessage()
        ]
        assert len(failures) == 1
    finally:
        listener.close()


def test_a_job_that_outranks_nothing_held_is_left_to_the_main_loop():
    claimer, held, _ = holding_a_job()
    same = int(tasks.add.enqueue(3, 3).id)

    claimer.notified(0)

    assert status(same) == JobStatus.READY
    assert claimer.ledger.unfinished_ids() == {held}


def test_an_urgent_claim_waits_for_no_health_check(monkeypatch):
    """The listener's connection waits unused between urgent claims; the
    claim is not preceded by a health check's round trip (Django's, with
    CONN_HEALTH_CHECKS on, as in these settings)."""
    assert connection.settings_dict["CONN_HEALTH_CHECKS"]
    claimer, _, _ = holding_a_job()
    claimer.notified(100)  # the first urgent claim on this connection
    checks = []
    real_is_usable = connection.is_usable
    monkeypatch.setattr(
        connection, "is_usable", lambda: checks.append(1) or real_is_usable()
    )
    second = int(tasks.add.using(priority=100).enqueue(3, 3).id)

    claimer.notified(100)

    assert status(second) == JobStatus.RUNNING
    assert checks == []


@requires_server_database
def test_an_urgent_claim_on_a_broken_connection_is_left_to_the_main_loop():
    """A connection broken while it waited fails the urgent claim: the job
    stays READY and urgent for the main loop, and the connection is dropped
    for a fresh one."""
    claimer, _, urgent = holding_a_job()
    connection.ensure_connection()
    connection.connection.close()  # behind Django's back, as a server would

    claimer.notified(100)

    assert connection.connection is None
    assert claimer.ledger.counts()["reserved"] == 0
    assert status(urgent) == JobStatus.READY
    assert starts_next(claimer.ledger) != urgent  # the threads are not paused
    assert [job.pk for job in claimer.claim_for_loop()] == [urgent]


def test_the_listener_claims_one_job_beyond_the_main_loops_claim():
    """The main loop's claim under way holds every free slot; an urgent job
    still need not wait for it: it takes one slot beyond the capacity."""
    claimer = claimer_of(threads=1, prefetch=4)
    urgent = int(tasks.add.using(priority=100).enqueue(2, 2).id)
    tasks.add.enqueue(1, 1)
    under_way = claimer.ledger.reserve_for_loop()
    assert under_way.count == 5

    claimer.notified(100)

    assert status(urgent) == JobStatus.RUNNING
    assert claimer.ledger.counts()["reserved"] == 5
    tasks.add.using(priority=100).enqueue(3, 3)
    claimer.notified(100)  # no second one: one beyond, at most
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 1


def test_the_listener_claims_nothing_past_max_jobs():
    """Two claims under way at once (the main loop's and the listener's)
    never take more jobs than max_jobs."""
    claimer = claimer_of(threads=1, prefetch=4, max_jobs=1)
    urgent = int(tasks.add.using(priority=100).enqueue(2, 2).id)
    assert claimer.ledger.reserve_for_loop().count == 1  # under way

    claimer.notified(100)

    assert status(urgent) == JobStatus.READY
    assert claimer.ledger.claimed_count == 0


def test_a_closed_worker_leaves_an_urgent_job_alone():
    """Once the worker stops claiming, the listener claims nothing: a job it
    claimed could start after the worker gave its jobs back."""
    claimer, held, urgent = holding_a_job()
    assert claimer.ledger.close()

    claimer.notified(100)

    assert status(urgent) == JobStatus.READY
    assert claimer.ledger.unfinished_ids() == {held}


@requires_server_database
def test_due_left_waits_for_a_locked_job_for_a_while_from_the_last_claim(monkeypatch):
    """A due job held by another transaction counts as left for
    LOCKED_GRACE seconds from when only such jobs were seen; a claim that
    finds work starts that wait anew."""
    from django.db import transaction

    from django_bgtasks.worker import claims

    clock = [1000.0]
    monkeypatch.setattr(claims.time, "monotonic", lambda: clock[0])
    claimer = claimer_of(threads=1, prefetch=4)
    locked = int(tasks.add.enqueue(1, 1).id)
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                Job.objects.select_for_update().get(pk=locked)
                held.set()
                release.wait(20)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        assert claimer.due_left()  # the wait starts
        clock[0] += claims.LOCKED_GRACE - 0.1
        assert claimer.due_left()
        clock[0] += 0.2
        assert not claimer.due_left()  # held too long: left
        free = int(tasks.add.enqueue(2, 2).id)
        assert [job.pk for job in claimer.claim_for_loop()] == [free]
        clock[0] += 60
        assert claimer.due_left()  # work came meanwhile: a new wait
    finally:
        release.set()
        holder.join(10)
