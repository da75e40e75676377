"""Claims: the order and the queues, whatever the planner's statistics say."""

import gc
import json
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from django_bgtasks import chain, group
from django_bgtasks.db import discard_connection, is_deadlock
from django_bgtasks.models import Job, JobStatus, Queue
from django_bgtasks.sql import claim as claim_module
from django_bgtasks.sql import claimed as claimed_module
from django_bgtasks.sql.claim import claim_jobs
from django_bgtasks.sql.claimed import NOT_RETURNED
from tests import tasks
from tests.conftest import (
    lose_this_connection,
    read_on_another_connection,
    run_in_process,
)
from tests.factories import make_job
from tests.tasks import echo

pytestmark = pytest.mark.django_db(transaction=True)


def enqueue(priority: int, queue: str) -> int:
    return int(echo.using(priority=priority, queue_name=queue).enqueue().id)


@pytest.fixture
def backlog():
    """Jobs in two queues, priorities mixed; returns ids by (queue, priority)."""
    return {
        (queue, priority): enqueue(priority, queue)
        for priority in (0, 50, -10, 100)
        for queue in ("default", "other")
    }


def claimed(queues, limit=3) -> list[int]:
    jobs = claim_jobs("default", worker_id="w", queues=queues, limit=limit)
    return [job.pk for job in jobs]


@pytest.mark.parametrize(
    "queues, expected",
    [
        (None, [("default", 100), ("other", 100), ("default", 50)]),
        (["other"], [("other", 100), ("other", 50), ("other", 0)]),
        (["other", "default"], [("default", 100), ("other", 100), ("default", 50)]),
    ],
)
def test_claims_take_the_highest_priority_first_from_their_queues(
    backlog, queues, expected
):
    assert claimed(queues) == [backlog[key] for key in expected]
    assert set(
        Job.objects.filter(status=JobStatus.RUNNING).values_list("pk", flat=True)
    ) == {backlog[key] for key in expected}


def test_with_stale_statistics_a_claim_keeps_its_order_and_the_settings():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        # Statistics of an empty table, then a backlog they do not know of:
        # the planner alone would sort the backlog on every claim.
        cursor.execute("SHOW jit")
        jit = cursor.fetchone()
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
        ids = {priority: enqueue(priority, "default") for priority in range(-3, 4)}
        assert claimed(None) == [ids[3], ids[2], ids[1]]
        assert claimed(["default"]) == [ids[0], ids[-1], ids[-2]]
        cursor.execute("SHOW enable_sort")
        assert cursor.fetchone() == ("on",)
        cursor.execute("SHOW jit")  # off for the claim alone, too
        assert cursor.fetchone() == jit


def test_a_claim_of_one_queue_reads_its_queues_jobs_of_limits_only():
    """PostgreSQL: both parts of the claim (jobs of no limit, of limits)
    walk the queue's READY index; the jobs of limits of other queues (as
    many as wait) are not read. So does the plan the worker keeps, made
    once for any parameters (sql/pinned.py): the queue's name is in its
    text."""
    from django_bgtasks.sql.claim import claim_statement_postgresql
    from django_bgtasks.sql.pinned import GENERIC_PLAN, NO_SORT, _prepared_forms

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    for _ in range(300):
        enqueue(5, "other")
    Job.objects.update(limit_key="gone")
    with connection.cursor() as cursor:
        # Statistics that know of one queue: a plan for any queue name
        # would expect every job to be of the queue it is given.
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
    ids = [enqueue(priority, "default") for priority in (1, 4, 3, 2)]
    Job.objects.filter(pk__in=ids[::2]).update(limit_key="gone")
    sql, params = claim_statement_postgresql(connection, "w1", ["default"], 10)
    _, prepare, execute = _prepared_forms(sql)
    for settings, explained in [
        (NO_SORT, sql),
        (NO_SORT + GENERIC_PLAN + prepare, execute),
    ]:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(settings)
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + explained, params)
            [(plan,)] = cursor.fetchall()
            transaction.set_rollback(True)
        assert sorted(index_reads(plan)) == [("bgtasks_job_ready_idx", 2)] * 2
    assert claimed(["default"]) == [ids[1], ids[2], ids[3]]


def index_reads(plan) -> list[tuple[str, int]]:
    """The job table's indexes an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan
    read, but its primary key, each with the rows it read there."""
    read = []

    def walk(node):
        if "Index Name" in node and node["Index Name"] != "django_bgtasks_job_pkey":
            read.append(
                (
                    node["Index Name"],
                    node["Actual Rows"] + node.get("Rows Removed by Filter", 0),
                )
            )
        for child in node.get("Plans", []):
            walk(child)

    walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    return read


@pytest.mark.parametrize("queue", ["50%' off", "%(queue)s", "%s", "a\\b"])
def test_a_queue_of_any_name_is_claimed_from(queue):
    """The claim of one queue writes its name into its text (PostgreSQL:
    see above): quoted, whatever it holds, and claimed from twice (the
    second time prepared). (The tests' backend allows a few queues only:
    the jobs are moved to it.)"""
    first, second = enqueue(0, "default"), enqueue(0, "default")
    Job.objects.filter(pk__in=[first, second]).update(queue_name=queue)
    enqueue(0, "default")
    assert claimed([queue], limit=1) == [first]
    assert claimed([queue]) == [second]
    assert Job.objects.filter(status=JobStatus.READY).count() == 1


def test_the_worker_reads_no_column_the_claim_leaves_out(monkeypatch):
    """A PostgreSQL claim returns no column the worker does not read
    (``NOT_RETURNED``): reading one on a claimed job would cost a query
    per job. Jobs of every kind run through a real worker, and none loads
    a field after its claim."""
    loads = []
    original = Job.refresh_from_db

    def recording(self, *args, **kwargs):
        loads.append((self.pk, kwargs.get("fields")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Job, "refresh_from_db", recording)
    tasks.echo.enqueue("plain")
    tasks.always_fails.using(max_attempts=2, backoff=0).enqueue()
    tasks.expires_soon.enqueue()
    tasks.unique_while_active.enqueue(1)
    tasks.counts_once.enqueue("atomic")
    tasks.result_not_stored.enqueue()
    chain(tasks.add.step(1, 2), group(tasks.add.step(3), tasks.add.step(4))).enqueue()
    run_in_process(concurrency=2)
    assert not Job.objects.filter(status__in=["READY", "RUNNING", "WAITING"]).exists()
    assert loads == []


def test_a_claim_whose_prepared_statement_is_lost_prepares_it_again():
    """PostgreSQL: behind a pooler in transaction mode a claim may land on a
    server connection that does not know its statement (as after
    ``DEALLOCATE ALL``): it prepares it there and claims; a connection that
    loses it again at once claims with the text from then on."""
    from django_bgtasks.sql.pinned import GENERIC_PLAN

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    first, second, third = (enqueue(0, "default") for _ in range(3))
    assert claimed(["default"], limit=1) == [first]

    def prepared_claims() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements "
                "WHERE name LIKE 'bgtasks_claim_%%'"
            )
            return cursor.fetchone()[0]

    assert prepared_claims() == 1
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    assert claimed(["default"], limit=1) == [second]
    assert prepared_claims() == 1

    runs = []

    def losing(execute, sql, params, many, context):
        # Every run of a prepared claim finds it gone.
        if GENERIC_PLAN in sql:
            runs.append(sql)
            context["cursor"].cursor.execute("DEALLOCATE ALL")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(losing):
        assert claimed(["default"], limit=1) == [third]
        assert len(runs) == 2  # prepared again once, then the text
        fourth = enqueue(0, "default")
        assert claimed(["default"], limit=1) == [fourth]
        assert len(runs) == 2  # the text only, from then on


def test_a_plan_made_on_an_empty_table_finds_the_claimed_rows_by_id():
    """PostgreSQL: a claim's plan is made once per connection (sql/
    pinned.py), maybe while the job table is empty. Once it has grown
    (before the next ANALYZE), that plan must still find the claimed rows
    by id, not walk the whole table beside them (by a scan, or the primary
    key's index), as plans made for an empty table did: it cost the steady
    state a third of its rate."""
    from django_bgtasks.sql.claim import claim_statement_postgresql
    from django_bgtasks.sql.pinned import GENERIC_PLAN, NO_SORT, _prepared_forms

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")  # empty
    sql, params = claim_statement_postgresql(connection, "w1", None, 10)
    _, prepare, execute = _prepared_forms(sql)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(NO_SORT + GENERIC_PLAN + prepare)
        cursor.execute(execute, params)  # planned now, on an empty table
        assert cursor.fetchall() == []
        tasks.echo.enqueue_many([((n,), {}) for n in range(3000)])
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + execute, params)
        [(plan,)] = cursor.fetchall()
        transaction.set_rollback(True)
    plan = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    scans = []

    def walk(node):
        if node.get("Relation Name") == Job._meta.db_table:
            scans.append((node["Node Type"], node.get("Actual Rows")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    # The READY index's walk (10 rows, and none for the jobs of limits) and
    # the claimed rows by id: nothing else of the 3,000.
    assert all(rows <= 10 for _, rows in scans), scans
    assert plan["Actual Rows"] == 10


def assert_as_loaded(jobs):
    """Every field a claim reads of each of ``jobs`` holds what the ORM loads
    from its row."""
    fields = [f for f in Job._meta.concrete_fields if f.name not in NOT_RETURNED]
    for job in jobs:
        loaded = Job.objects.get(pk=job.pk)
        assert {f.attname: job.__dict__[f.attname] for f in fields} == {
            f.attname: getattr(loaded, f.attname) for f in fields
        }


def test_a_claimed_job_is_the_job_the_orm_loads(monkeypatch):
    """Each vendor reads its claimed rows its own lean way (times as
    numbers, the JSON columns as one array; MySQL/MariaDB from the claim's
    locking read, before its UPDATE): every field it reads holds what the
    ORM loads from the row, to the microsecond."""
    if connection.vendor == "mysql":  # not by the fallback's read after
        monkeypatch.setattr(claim_module, "_load", None)
    long_ago = datetime(1965, 3, 1, 12, 0, 0, 999999, tzinfo=UTC)
    past = timezone.now() - timedelta(days=400, microseconds=7)
    made = [
        make_job(
            args=["ünï", {"nested": [1, 2.5, None, True]}],
            kwargs={"k": "v\\\"'%s"},
            run_after=long_ago,
            enqueued_at=long_ago - timedelta(seconds=1),
            expires_at=past.replace(microsecond=999999) + timedelta(days=800),
            backoff={"base": 2.5},
            trace_context={"traceparent": "00-ab-cd-01"},
            errors=[{"attempt": 1, "message": "earlier"}],
            attempts=1,
            started_at=long_ago + timedelta(microseconds=3),  # kept by the claim
            worker_ids=["earlier-worker"],
            runs_alone=True,
        ),
        make_job(kwargs={}, priority=-5, progress=None, return_value=None),
        make_job(args=[], run_after=past, return_value={"partial": 1}, progress=0.5),
    ]
    ids = sorted(job.pk for job in made)
    jobs = claim_jobs("default", worker_id=None, queues=None, limit=10)
    assert sorted(job.pk for job in jobs) == ids
    # The claim's own read, and (MySQL, MariaDB) the lean read itself: the
    # claim falls back to the ORM's read of a row it cannot read.
    assert_as_loaded(jobs)
    if connection.vendor == "mysql":
        assert_as_loaded(claimed_module._jobs_read_lean(connection, ids))
    assert jobs[0].started_at.tzinfo is not None


def test_a_mysql_claim_of_a_row_it_cannot_make_as_claimed_reads_it_again():
    """A row whose worker_ids is JSON but not an array: MySQL/MariaDB's
    JSON_ARRAY_APPEND wraps it, so the job is not made from the locking
    read's row but read again after the claim, as the database wrote it."""
    if connection.vendor != "mysql":
        pytest.skip("the claim that makes its jobs from its locking read")
    job = make_job()
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Job._meta.db_table} SET worker_ids = %s WHERE id = %s",
            ['"earlier"', job.pk],
        )

    [claimed_job] = claim_jobs("default", worker_id=None, queues=None, limit=1)

    assert claimed_job.worker_ids == ["earlier", None]
    assert_as_loaded([claimed_job])


def test_a_server_that_refuses_the_lean_columns_is_claimed_from_without_them(
    monkeypatch,
):
    """mysqlclient raises a refused statement as it does a lost connection:
    on a connection that still answers, the claim goes on without the lean
    columns (logged once), from then on."""
    if connection.vendor != "mysql":
        pytest.skip("the MySQL/MariaDB claim's lean columns")
    monkeypatch.setattr(claimed_module, "_LEAN_COLUMNS", ["NO_SUCH_FUNCTION_HERE()"])
    monkeypatch.setattr(claimed_module, "_LEAN_REFUSED", [])
    first, second = make_job(), make_job()

    jobs = claim_jobs("default", worker_id=None, queues=None, limit=1)
    jobs += claim_jobs("default", worker_id=None, queues=None, limit=1)

    assert sorted(job.pk for job in jobs) == [first.pk, second.pk]
    assert_as_loaded(jobs)
    assert len(claimed_module._LEAN_REFUSED) == 1


def test_a_claim_inside_a_callers_transaction_is_made_in_it():
    """A claim in a transaction already open takes that transaction as it
    is (MySQL and MariaDB cannot change a transaction's isolation level
    once it has begun): its jobs are claimed, and undone with it."""
    job_id = enqueue(0, "default")
    with transaction.atomic():
        Job.objects.filter(pk=job_id).exists()  # the transaction has begun
        assert claimed(None) == [job_id]
        assert Job.objects.get(pk=job_id).status == JobStatus.RUNNING
        transaction.set_rollback(True)
    assert Job.objects.get(pk=job_id).status == JobStatus.READY


def test_a_claim_is_committed_and_leaves_no_transaction_open():
    """Seen from another connection once made (MySQL/MariaDB's claim
    commits its own transaction of plain statements, at REPEATABLE READ;
    the connection's next transaction is at its own level again)."""
    job_id = enqueue(0, "default")
    assert claimed(None) == [job_id]

    status = read_on_another_connection(lambda: Job.objects.get(pk=job_id).status)
    assert status == JobStatus.RUNNING
    if connection.vendor == "mysql" and connection.mysql_is_mariadb:
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@in_transaction, @@tx_isolation")
            assert cursor.fetchone() == (0, "READ-COMMITTED")


def test_a_threads_connection_is_freed_once_the_thread_has_claimed_and_ended():
    """What a claim keeps for its connection (MySQL/MariaDB: the lean
    read's converters) goes with the connection: none outlives its
    thread."""
    enqueue(0, "default")
    freed = []

    def claim_in_thread():
        assert len(claimed(None)) == 1
        freed.append(weakref.ref(connections["default"]))
        connection.close()

    thread = threading.Thread(target=claim_in_thread)
    thread.start()
    thread.join(timeout=30)
    del thread
    gc.collect()
    assert freed and freed[0]() is None


def test_a_mysql_claim_undone_to_break_a_deadlock_claims_again(monkeypatch):
    """A MySQL/MariaDB claim runs at REPEATABLE READ, where the gaps it
    locks can deadlock it with another transaction: the database undoes it
    whole, and it claims again instead of failing. Here the other
    transaction holds the gap the claim's index entries must go into, and
    then asks for a row the claim holds."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: the claim that runs at REPEATABLE READ")
    tries = counted_claims(monkeypatch)
    first, second = enqueue(0, "default"), enqueue(0, "default")
    make_job(JobStatus.SUCCESSFUL)  # an entry after the claim's gap
    holding = threading.Event()
    claim_waits = threading.Event()
    failures = []

    def other_transaction():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                # Heavier than the claim, so the database undoes the claim:
                # rows written elsewhere (an UPDATE of jobs at REPEATABLE
                # READ might lock every row it scans, the READY ones too).
                Queue.objects.bulk_create(Queue(name=f"q{n}") for n in range(50))
                # Where the claim's RUNNING entries of this index go.
                cursor.execute(
                    "SELECT id FROM django_bgtasks_job FORCE INDEX "
                    "(bgtasks_job_ready_any_idx) WHERE status = 'RUNNING' FOR UPDATE"
                )
                holding.set()
                deadline = time.monotonic() + 30
                while not lock_waits(cursor, claiming):
                    assert time.monotonic() < deadline, "the claim never waited"
                    # InnoDB refreshes that table only when unread for 0.1 s.
                    time.sleep(0.2)
                claim_waits.set()
                cursor.execute(
                    "SELECT id FROM django_bgtasks_job WHERE id = %s FOR UPDATE",
                    [first],
                )
        except Exception as exc:  # reported by the test's thread
            failures.append(exc)
        finally:
            holding.set()
            connection.close()

    claiming = connection_id()
    other = threading.Thread(target=other_transaction)
    other.start()
    assert holding.wait(30)
    jobs = claim_jobs("default", worker_id=None, queues=None, limit=2)
    other.join(30)
    assert failures == []
    assert claim_waits.is_set()
    assert [type(outcome).__name__ for outcome in tries] == ["OperationalError", "list"]
    assert is_deadlock(tries[0])
    assert {job.pk for job in jobs} <= {first, second} and jobs
    assert all(Job.objects.get(pk=job.pk).status == JobStatus.RUNNING for job in jobs)


def lock_waits(cursor, connection_id: int) -> bool:
    """Whether the session ``connection_id`` waits for a lock."""
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.innodb_trx "
        "WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id = %s",
        [connection_id],
    )
    return cursor.fetchone()[0] > 0


def connection_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return cursor.fetchone()[0]


def counted_claims(monkeypatch) -> list:
    """The outcome of each try of a MySQL/MariaDB claim from now on: the ids
    it claimed, or its error."""
    tries = []
    original = claim_module._claim_ids_mysql

    def counted(*args, **kwargs):
        try:
            claimed = original(*args, **kwargs)
        except Exception as exc:
            tries.append(exc)
            raise
        tries.append(claimed[0])  # the ids
        return claimed

    monkeypatch.setattr(claim_module, "_claim_ids_mysql", counted)
    return tries


def test_a_mysql_claim_takes_no_snapshot(monkeypatch):
    """A MySQL/MariaDB claim's transaction (REPEATABLE READ) makes no plain
    read, so it has no snapshot that a row committed meanwhile is newer
    than: with MariaDB's innodb_snapshot_isolation on (its default from
    11.6.2) a locking read of such a row would fail the claim. Here a job
    is committed just before the claim's locking read, and the claim takes
    it on its first try."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: the claim that runs at REPEATABLE READ")
    with connection.cursor() as cursor:
        cursor.execute("SHOW VARIABLES LIKE 'innodb_snapshot_isolation'")
        if cursor.fetchone() is None:
            pytest.skip("this server has no innodb_snapshot_isolation")
        cursor.execute("SET SESSION innodb_snapshot_isolation = ON")
    tries = counted_claims(monkeypatch)
    waiting = enqueue(0, "default")
    committed_meanwhile = []

    def enqueue_elsewhere():
        try:
            committed_meanwhile.append(enqueue(0, "default"))
        finally:
            connection.close()

    def before_the_locking_read(execute, sql, params, many, context):
        if "SKIP LOCKED" in sql and not committed_meanwhile:
            other = threading.Thread(target=enqueue_elsewhere)
            other.start()
            other.join(30)
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(before_the_locking_read):
            jobs = claim_jobs("default", worker_id=None, queues=None, limit=5)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_snapshot_isolation = DEFAULT")
    assert sorted(job.pk for job in jobs) == sorted([waiting, *committed_meanwhile])
    assert len(committed_meanwhile) == 1
    assert len(tries) == 1


@pytest.mark.django_db(transaction=True)
def test_a_mysql_claim_whose_connection_dies_inside_its_transaction_fails_cleanly():
    """The connection dies between the claim's START TRANSACTION and its
    locking read (as a server's KILL, a restart or a network cut may do):
    the ROLLBACK fails too, and the connection is closed. The claim must
    fail with the database's error, which the worker's claimer recovers
    from (it opens a new connection and claims again), and the next claim
    takes the job."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: the claim in a transaction of its own")
    waiting = enqueue(0, "default")

    def before_the_locking_read(execute, sql, params, many, context):
        if "SKIP LOCKED" in sql:
            lose_this_connection()
        return execute(sql, params, many, context)

    with (
        pytest.raises(OperationalError),
        connection.execute_wrapper(before_the_locking_read),
    ):
        claim_jobs("default", worker_id=None, queues=None, limit=5)
    discard_connection("default")
    assert [
        job.pk for job in claim_jobs("default", worker_id=None, queues=None, limit=5)
    ] == [waiting]


@pytest.mark.parametrize("committed", [True, False])
def test_a_mysql_claim_whose_commit_goes_unanswered_keeps_what_it_claimed(committed):
    """The connection dies as the claim commits (a server's KILL or restart
    may end it after the commit and before its answer): the claim cannot
    tell from the error whether it claimed. Committed, its jobs are RUNNING
    for this worker and known to no one else: the claim must return them
    (left unread, they would wait for the worker to stop). Undone, it
    returns nothing and the jobs wait, unclaimed."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: the claim's COMMIT is its own statement")
    ids = [enqueue(0, "default") for _ in range(3)]

    def around_the_commit(execute, sql, params, many, context):
        if sql != "COMMIT":
            return execute(sql, params, many, context)
        if committed:
            execute(sql, params, many, context)
            lose_this_connection()
            # The killed connection's next read: the driver's own error.
            return execute("SELECT 1", None, many, context)
        lose_this_connection()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(around_the_commit):
        claimed = claim_jobs("default", worker_id="w1", queues=None, limit=2)
    if committed:
        assert sorted(job.pk for job in claimed) == ids[:2]
        assert all(job.status == JobStatus.RUNNING for job in claimed)
        assert all(job.worker_id == "w1" for job in claimed)
    else:
        assert claimed == []
    rows = Job.objects.order_by("pk").values_list("status", "attempts", "worker_id")
    running = [(JobStatus.RUNNING, 1, "w1")] * 2
    ready = [(JobStatus.READY, 0, None)]
    assert list(rows) == (running + ready if committed else ready * 3)
    # The connection was opened again: the next claim takes what is left.
    left = claim_jobs("default", worker_id="w1", queues=None, limit=5)
    assert sorted(job.pk for job in left) == (ids[2:] if committed else ids)


def test_a_mysql_claim_whose_commit_is_refused_as_a_deadlock_claims_again(caplog):
    """The server answers the claim's COMMIT with a deadlock error (as a
    Galera cluster may: its certification fails at commit): an answer, not
    a lost connection. The claim was undone, and is made again."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: the claim's COMMIT is its own statement")
    import MySQLdb

    ids = [enqueue(0, "default") for _ in range(2)]
    commits = []

    def refuse_the_first_commit(execute, sql, params, many, context):
        if sql != "COMMIT" or commits:
            return execute(sql, params, many, context)
        commits.append(sql)
        execute("ROLLBACK", None, many, context)
        # As Django raises a driver's error: the driver's is its cause.
        refused = (1213, "Deadlock found when trying to get lock")
        raise OperationalError(*refused) from MySQLdb.OperationalError(*refused)

    with connection.execute_wrapper(refuse_the_first_commit):
        claimed = claim_jobs("default", worker_id="w1", queues=None, limit=5)
    assert sorted(job.pk for job in claimed) == ids
    rows = Job.objects.order_by("pk").values_list("status", "attempts", "worker_ids")
    assert list(rows) == [(JobStatus.RUNNING, 1, ["w1"])] * 2
    assert "went unanswered" not in caplog.text


def test_a_claim_of_no_queue_claims_nothing():
    """``queues=[]`` (not None, which is every queue): nothing to claim."""
    enqueue(0, "default")
    assert claim_jobs("default", worker_id=None, queues=[], limit=5) == []
    assert Job.objects.get().status == JobStatus.READY
