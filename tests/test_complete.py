"""Outcomes written in batches (``sql/complete.py``): what each writes, only
to the jobs the worker still holds, all or nothing."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import DatabaseError, connection
from django.db.models import F
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from django_bgtasks.db import mariadb_json_table
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.models.transitions import Failed, Succeeded, transition
from django_bgtasks.serialization import MAX_DEPTH
from django_bgtasks.sql import complete
from django_bgtasks.sql.claim import claim_jobs
from django_bgtasks.sql.complete import Completion, complete_jobs
from tests import tasks
from tests.conftest import read_on_another_connection

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = "completer"


def claimed(count: int) -> list[Job]:
    tasks.add.enqueue_many([((number, 0), {}) for number in range(count)])
    return claim_jobs("default", worker_id=WORKER, queues=None, limit=count)


@pytest.fixture(params=["json_table", "union_all"])
def mysql_statement(request, monkeypatch):
    """MariaDB writes a batch from a JSON document (JSON_TABLE), MySQL from a
    UNION ALL of its values: on MariaDB, both are tested."""
    if request.param == "union_all":
        if connection.vendor != "mysql":
            pytest.skip("the UNION ALL statement is MySQL's")
        monkeypatch.setattr(complete, "mariadb_json_table", lambda connection: False)
    return request.param


def completion(job: Job, outcome) -> Completion:
    change = transition(job, outcome, now=timezone.now())
    return Completion(job.pk, job.attempts, change.changes)


def test_a_mixed_batch_writes_each_outcome(mysql_statement):
    values = [None, "null", [1, "two"], {"a": None}, True, 0, -1.5, "text"]
    jobs = claimed(len(values) + 2)
    *succeeding, retrying, failing = jobs
    batch = [
        *(
            completion(job, Succeeded(value))
            for job, value in zip(succeeding, values, strict=True)
        ),
        completion(retrying, Failed(ValueError("again"))),
        completion(failing, Failed(ValueError("never"), retryable=False)),
    ]

    applied = complete_jobs("default", WORKER, batch)

    assert applied == {job.pk for job in jobs}
    for job, value in zip(succeeding, values, strict=True):
        job.refresh_from_db()
        assert (job.status, job.worker_id) == (JobStatus.SUCCESSFUL, None)
        assert job.finished_at is not None
        assert job.return_value == value
    # A task returning None stores SQL NULL, as the ORM does.
    assert Job.objects.filter(pk=succeeding[0].pk, return_value__isnull=True).exists()
    assert not Job.objects.filter(
        pk=succeeding[1].pk, return_value__isnull=True
    ).exists()
    retrying.refresh_from_db()
    assert retrying.status == JobStatus.READY and retrying.finished_at is None
    assert retrying.errors[-1]["exception_class_path"] == "builtins.ValueError"
    failing.refresh_from_db()
    assert failing.status == JobStatus.FAILED and failing.finished_at is not None


def test_a_job_taken_from_the_worker_is_left_alone():
    kept, taken, next_attempt = claimed(3)
    Job.objects.filter(pk=taken.pk).update(status=JobStatus.READY, worker=None)
    Job.objects.filter(pk=next_attempt.pk).update(attempts=2)  # claimed again

    applied = complete_jobs(
        "default",
        WORKER,
        [completion(job, Succeeded(1)) for job in (kept, taken, next_attempt)],
    )

    assert applied == {kept.pk}
    assert Job.objects.get(pk=taken.pk).status == JobStatus.READY
    assert Job.objects.get(pk=next_attempt.pk).status == JobStatus.RUNNING


def test_a_batch_is_written_whole_or_not_at_all():
    """A row the database refuses (here a status its constraint forbids)
    leaves every outcome of the batch unwritten, for the completer to
    record them one by one."""
    good, bad = claimed(2)
    refused = Completion(bad.pk, bad.attempts, {"status": "BOGUS", "worker_id": None})

    with pytest.raises(DatabaseError):
        complete_jobs("default", WORKER, [completion(good, Succeeded(1)), refused])

    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 2


def test_a_job_asked_to_stop_is_left_to_its_caller_when_the_change_says_so():
    asked, unasked = claimed(2)
    Job.objects.filter(pk=asked.pk).update(cancel_requested_at=timezone.now())
    batch = [
        Completion(job.pk, job.attempts, {"progress": {"done": 1}}, unasked=True)
        for job in (asked, unasked)
    ]

    assert complete_jobs("default", WORKER, batch) == {unasked.pk}
    assert Job.objects.get(pk=unasked.pk).progress == {"done": 1}
    assert Job.objects.get(pk=asked.pk).progress is None


def test_a_change_that_leaves_a_row_as_it_was_still_applies():
    """The job was held: that it needed no change (MySQL counts rows
    changed, unless asked for rows found) does not make it taken away."""
    [job] = claimed(1)
    batch = [Completion(job.pk, job.attempts, {"worker_id": WORKER})]

    assert complete_jobs("default", WORKER, batch) == {job.pk}


def test_a_change_computed_by_the_database_is_refused_whole():
    """Outcomes are values; an expression is refused (TypeError) and the
    batch left unwritten, for the completer to record its jobs one by one."""
    first, second = claimed(2)
    batch = [
        completion(second, Succeeded(2)),
        Completion(first.pk, first.attempts, {"max_attempts": F("max_attempts") + 5}),
    ]

    with pytest.raises(TypeError):
        complete_jobs("default", WORKER, batch)
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 2


def test_a_large_batch_is_written_in_parts_and_whole(monkeypatch, mysql_statement):
    """MySQL/MariaDB send a batch's values in statements of at most
    STATEMENT_BYTES (a result may be a megabyte): here a part per job or
    two; every outcome is written, and a job taken away is still found."""
    monkeypatch.setattr(complete, "STATEMENT_BYTES", 120)
    jobs = claimed(5)
    taken = jobs[3]
    Job.objects.filter(pk=taken.pk).update(status=JobStatus.READY, worker=None)

    applied = complete_jobs(
        "default", WORKER, [completion(job, Succeeded("x" * 50)) for job in jobs]
    )

    assert applied == {job.pk for job in jobs} - {taken.pk}
    for job in jobs:
        job.refresh_from_db()
    assert [job.status for job in jobs] == [
        *[JobStatus.SUCCESSFUL] * 3, JobStatus.READY, JobStatus.SUCCESSFUL
    ]  # fmt: skip
    assert {job.return_value for job in jobs if job.pk != taken.pk} == {"x" * 50}


def test_a_batch_is_sent_in_parts_of_at_most_statement_bytes(
    monkeypatch, mysql_statement
):
    """MySQL/MariaDB: a batch whose values pass STATEMENT_BYTES goes in
    several UPDATEs, every outcome written by them (no job taken away, so
    none is written alone)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "mysql":
        pytest.skip("the joined UPDATE is MySQL's and MariaDB's")
    monkeypatch.setattr(complete, "STATEMENT_BYTES", 120)
    jobs = claimed(5)
    with CaptureQueriesContext(connection) as queries:
        applied = complete_jobs(
            "default", WORKER, [completion(job, Succeeded("x" * 50)) for job in jobs]
        )
    updates = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")
    ]
    assert applied == {job.pk for job in jobs}
    assert len(updates) >= 3 and all("JOIN" in sql for sql in updates), updates
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.SUCCESSFUL}


def nested(levels: int) -> list:
    value: list = ["bottom"]
    for _ in range(levels - 1):
        value = [value]
    return value


# Values whose text a batch could get wrong: escapes, characters beyond
# ASCII and the BMP, text that looks like JSON, the deepest and a large
# value the serialization accepts.
EXACT_VALUES = [
    'quote " backslash \\ slash / newline \n tab \t',
    "\u00e9 \u00f1 \u4e2d\u6587 \U0001f600",
    {'key "quoted"': ["\\u0041 is not an escape", {"emoji": "\U0001f600"}]},
    "null",
    '{"a": 1}',
    nested(MAX_DEPTH),
    "x" * 200_000,
    [],
    {},
]


def test_values_and_times_are_written_exactly(mysql_statement):
    """What a batch writes reads back equal, to the microsecond: return
    values, errors and times (the same instant from another time zone)."""
    jobs = claimed(len(EXACT_VALUES) + 1)
    *succeeding, retrying = jobs
    paris = datetime(2026, 7, 1, 14, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Paris"))
    changes = [
        transition(job, Succeeded(value), now=paris + timedelta(microseconds=n)).changes
        for n, (job, value) in enumerate(zip(succeeding, EXACT_VALUES, strict=True))
    ]
    error = ValueError('d\u00e9j\u00e0 "vu" \\ \U0001f600\nsecond line')
    retry = transition(retrying, Failed(error), now=paris).changes
    batch = [
        Completion(job.pk, job.attempts, change)
        for job, change in zip(jobs, [*changes, retry], strict=True)
    ]

    assert complete_jobs("default", WORKER, batch) == {job.pk for job in jobs}

    for job, change in zip(jobs, [*changes, retry], strict=True):
        job.refresh_from_db()
        assert {name: getattr(job, name) for name in change} == change
    assert succeeding[1].finished_at == paris + timedelta(microseconds=1)
    assert retrying.errors[-1]["traceback"].endswith("\U0001f600\nsecond line\n")


def test_a_time_the_orm_would_not_take_as_it_is_refuses_the_batch():
    """A naive time where USE_TZ is on: the ORM warns and reads it in the
    current time zone; a MySQL/MariaDB batch sends no such guess and
    refuses the batch (TypeError), for the completer to record its jobs one
    by one through the ORM."""
    if connection.vendor != "mysql":
        pytest.skip("PostgreSQL's batch sends the time's own text; SQLite's, the ORM's")
    first, second = claimed(2)
    batch = [
        completion(first, Succeeded(1)),
        Completion(
            second.pk,
            second.attempts,
            {"status": JobStatus.SUCCESSFUL, "finished_at": datetime(2030, 1, 1)},
        ),
    ]

    with pytest.raises(TypeError):
        complete_jobs("default", WORKER, batch)
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 2


def test_a_mariadb_batch_finds_each_job_by_its_id():
    """MariaDB's batch reads its document first and each job by its primary
    key: not every RUNNING job (by the status index), each against the
    whole document."""
    if not mariadb_json_table(connection):
        pytest.skip("the JSON_TABLE batch is MariaDB's")
    claimed(3)
    names = ("status", "return_value", "finished_at", "worker_id")
    sql, _ = complete._update_from_json_sql("default", names, False)
    document = '[[1, 1, "SUCCESSFUL", null, "2030-01-01 00:00:00", null]]'
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", [document, JobStatus.RUNNING, WORKER])
        plan = [(row[2], row[3], row[5]) for row in cursor.fetchall()]

    assert plan == [("done", "ALL", None), ("job", "eq_ref", "PRIMARY")], plan


def test_a_refused_batch_leaves_the_connection_out_of_any_transaction():
    """MySQL/MariaDB's batch runs its own transaction with plain statements
    (Django knows nothing of it): refused, it is rolled back, and what the
    connection writes next commits at once, seen by another connection."""
    good, bad = claimed(2)
    refused = Completion(bad.pk, bad.attempts, {"status": "BOGUS", "worker_id": None})
    with pytest.raises(DatabaseError):
        complete_jobs("default", WORKER, [completion(good, Succeeded(1)), refused])

    Job.objects.filter(pk=good.pk).update(priority=7)

    assert read_on_another_connection(lambda: Job.objects.get(pk=good.pk).priority) == 7
    assert Job.objects.filter(status=JobStatus.RUNNING).count() == 2


def test_a_batch_is_committed_and_leaves_no_transaction_open():
    """Seen from another connection once written (MySQL/MariaDB's batch
    commits its own transaction of plain statements)."""
    jobs = claimed(3)
    complete_jobs("default", WORKER, [completion(job, Succeeded(2)) for job in jobs])

    def statuses():
        return set(Job.objects.values_list("status", flat=True))

    assert read_on_another_connection(statuses) == {JobStatus.SUCCESSFUL}
    if connection.vendor == "mysql" and connection.mysql_is_mariadb:
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@in_transaction")
            assert cursor.fetchone()[0] == 0


def test_the_plain_statements_transaction_does_not_nest():
    """START TRANSACTION inside one would commit it: refused."""
    from django.db import connections

    from django_bgtasks.db import statements_in_one_transaction

    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB's transaction of plain statements")
    wrapper = connections["default"]
    with statements_in_one_transaction(wrapper):
        with (
            pytest.raises(TransactionManagementError),
            statements_in_one_transaction(wrapper),
        ):
            pass
        assert not wrapper.in_atomic_block  # Django knows of none
