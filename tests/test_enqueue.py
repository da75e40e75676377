"""Enqueueing: the job row, its options, and what bad input gets."""

import gc
import json
import pickle
import threading
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import DateTimeField, JSONField
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_bgtasks import Backoff, DatabaseTask, DatabaseTaskResult, backend, notify
from django_bgtasks import task as bg_task
from django_bgtasks.compat import (
    InvalidTask,
    Task,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task_enqueued,
)
from django_bgtasks.exceptions import InvalidTaskArguments
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.serialization import NotJSON, to_json
from django_bgtasks.sql.insert import insert_jobs
from django_bgtasks.testing import ImmediateBackend
from tests import tasks
from tests.conftest import run_in_process

pytestmark = pytest.mark.django_db


def test_enqueue_writes_a_ready_job():
    before = timezone.now()
    result = tasks.add.enqueue(2, b=3)

    job = Job.objects.get()
    assert result.id == str(job.pk)
    assert isinstance(result, DatabaseTaskResult)
    assert result.status == TaskResultStatus.READY
    assert job.task_path == "tests.tasks.add"
    assert (job.args, job.kwargs) == ([2], {"b": 3})
    assert job.status == JobStatus.READY
    assert job.queue_name == "default" and job.priority == 0
    assert before <= job.enqueued_at == job.run_after <= timezone.now()
    assert job.attempts == 0 and job.worker_ids == [] and job.errors == []
    assert job.max_attempts == 3  # BGTASKS default
    assert job.backoff == {"initial": 0.0, "factor": 1.0, "maximum": 0.0, "jitter": 0.0}


def test_django_task_decorator_gives_a_database_task():
    assert isinstance(tasks.add, DatabaseTask)
    assert tasks.add.max_attempts is None


def test_task_options_and_per_call_overrides():
    tasks.in_other_queue.enqueue()
    tasks.in_other_queue.using(priority=-7, queue_name="default").enqueue()
    tasks.always_fails.using(max_attempts=5, backoff=30).enqueue()

    first, second, third = Job.objects.order_by("id")
    assert (first.queue_name, first.priority) == ("other", 5)
    assert (second.queue_name, second.priority) == ("default", -7)
    assert third.max_attempts == 5
    assert third.backoff == {"initial": 30, "factor": 1, "maximum": 30, "jitter": 0}


@pytest.mark.skipif(
    not tasks.FRAMEWORK_FORWARDS_OPTIONS, reason="Django 6.0's @task takes none"
)
def test_extra_options_pass_through_the_frameworks_own_decorator():
    """Django 6.1 and the django-tasks 0.12 backport forward extra @task
    keyword arguments to the backend's task_class."""
    assert isinstance(tasks.with_framework_options, DatabaseTask)
    assert tasks.with_framework_options.max_attempts == 7
    assert tasks.with_framework_options.backoff == Backoff(initial=5)
    tasks.with_framework_options.enqueue()
    assert Job.objects.get().max_attempts == 7


def test_run_after_datetime_and_timedelta():
    when = timezone.now() + timedelta(hours=1)
    tasks.add.using(run_after=when).enqueue(1, 1)
    before = timezone.now()
    tasks.add.using(run_after=timedelta(minutes=10)).enqueue(1, 1)

    at_datetime, at_delta = Job.objects.order_by("id")
    assert at_datetime.run_after == when
    assert (
        before + timedelta(minutes=10)
        <= at_delta.run_after
        <= timezone.now() + timedelta(minutes=10)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_name": "nope"}, "Queue 'nope' is not valid"),
        ({"priority": 101}, "priority must be a whole number between -100 and 100"),
        ({"priority": -101}, "priority must be a whole number between -100 and 100"),
        ({"priority": 1.5}, "priority must be a whole number"),
        ({"max_attempts": 0}, "max_attempts must be a whole number from 1 to 1000"),
        ({"backoff": {"initial": -1}}, "Backoff initial must be 0 or more"),
        ({"backoff": "fast"}, "backoff must be a Backoff"),
    ],
)
def test_invalid_options_are_refused_without_a_row(options, message):
    with pytest.raises(InvalidTask, match=message):
        tasks.add.using(**options).enqueue(1, 2)
    assert not Job.objects.exists()


def test_naive_run_after_is_refused():
    naive = timezone.now().replace(tzinfo=None)
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        tasks.add.using(run_after=naive).enqueue(1, 2)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((object(),), {}, r"args\[0\]: Unsupported type"),
        (({1, 2},), {}, r"args\[0\]: Unsupported type"),
        (({1: "one"},), {}, r"args\[0\]: the dictionary key 1 is not a string"),
        ((float("nan"),), {}, r"args\[0\]: nan is not a JSON number"),
        ((), {"big": 2**70}, r"kwargs\['big'\]: the integer .* does not fit"),
        (("a\x00b",), {}, r"args\[0\]: text cannot hold NUL"),
        (("\ud800",), {}, r"args\[0\]: .* is not valid Unicode"),
        ((b"\xff",), {}, r"args\[0\]: Unsupported value"),
    ],
)
def test_arguments_that_do_not_round_trip_are_refused(args, kwargs, message):
    with pytest.raises(InvalidTaskArguments, match=message):
        tasks.echo.enqueue(*args, **kwargs)
    assert not Job.objects.exists()


def test_deeply_nested_arguments_are_refused():
    value = []
    for _ in range(150):
        value = [value]
    with pytest.raises(InvalidTaskArguments, match="nested deeper than 31"):
        tasks.echo.enqueue(value)
    assert not Job.objects.exists()


def test_normalised_arguments_are_stored_as_json():
    result = tasks.echo.enqueue((1, 2), "é", b"bytes", nested={"t": (True, None)})
    job = Job.objects.get(pk=result.id)
    assert job.args == [[1, 2], "é", "bytes"]
    assert job.kwargs == {"nested": {"t": [True, None]}}
    assert result.args == job.args and result.kwargs == job.kwargs


@override_settings(BGTASKS={"MAX_PAYLOAD_BYTES": 100})
def test_payload_over_the_limit_is_refused():
    tasks.echo.enqueue("x" * 50)
    with pytest.raises(InvalidTaskArguments, match="more than the 100 bytes"):
        tasks.echo.enqueue("x" * 100)
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    "text",
    [
        "\x01" * 16,  # 16 characters, 96 bytes as JSON escapes
        "\N{GRINNING FACE}" * 8,  # 8 characters, 96 bytes: a surrogate pair each
    ],
)
@override_settings(BGTASKS={"MAX_PAYLOAD_BYTES": 100})
def test_payload_size_counts_json_escapes(text):
    with pytest.raises(InvalidTaskArguments, match="more than the 100 bytes"):
        tasks.echo.enqueue(text)
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_job_is_rolled_back_with_the_callers_transaction():
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(1, 2)
        assert Job.objects.count() == 1  # visible inside the transaction
        raise RuntimeError("the view failed")
    assert not Job.objects.exists()

    with transaction.atomic():
        tasks.add.enqueue(1, 2)
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_defers_the_row():
    with transaction.atomic():
        transaction.on_commit(lambda: tasks.add.enqueue(1, 2))
        assert not Job.objects.exists()
    assert Job.objects.count() == 1


def test_get_result_and_refresh():
    result = tasks.add.enqueue(2, 3)
    fetched = tasks.add.get_result(result.id)
    assert fetched.id == result.id and fetched.status == TaskResultStatus.READY
    assert fetched.task.func is tasks.add.func
    with pytest.raises(ValueError, match="not finished"):
        _ = fetched.return_value

    Job.objects.filter(pk=result.id).update(
        status=JobStatus.SUCCESSFUL, return_value=5, finished_at=timezone.now()
    )
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5 and result.is_finished


def test_get_result_keeps_per_call_options():
    result = tasks.add.using(queue_name="other", priority=9).enqueue(1, 1)
    fetched = tasks.add.get_result(result.id)
    assert (fetched.task.queue_name, fetched.task.priority) == ("other", 9)


@pytest.mark.parametrize("bad_id", ["999999", "abc", "", "1e3", str(2**80)])
def test_get_result_of_unknown_id(bad_id):
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(bad_id)


def test_get_result_of_another_task_is_a_mismatch():
    result = tasks.echo.enqueue()
    with pytest.raises(TaskResultMismatch):
        tasks.add.get_result(result.id)


def test_cancelled_job_reads_as_failed_with_a_cancellation_error():
    result = tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=result.id).update(status=JobStatus.CANCELLED)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path.endswith("JobCancelled")


def test_task_enqueued_signal():
    received = []

    def receiver(sender, task_result, **kwargs):
        received.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 1)
    finally:
        task_enqueued.disconnect(receiver)
    assert received == [result.id]


def test_task_enqueued_signal_for_each_job_of_enqueue_many():
    received = []

    def receiver(sender, task_result, **kwargs):
        received.append((sender, task_result.id, task_result.args))

    async def async_receiver(sender, task_result, **kwargs):
        received.append(("async", task_result.id))

    task_enqueued.connect(receiver)
    try:
        results = tasks.echo.enqueue_many([((1,), {}), ((2,), {})])
        task_enqueued.connect(async_receiver)
        [late] = tasks.echo.enqueue_many([((3,), {})])
    finally:
        task_enqueued.disconnect(receiver)
        task_enqueued.disconnect(async_receiver)
    sender = type(tasks.echo.get_backend())
    assert received == [
        (sender, results[0].id, [1]),
        (sender, results[1].id, [2]),
        (sender, late.id, [3]),
        ("async", late.id),
    ]


def test_own_decorator_refuses_options_for_a_backend_with_its_own_task_class():
    """A backend whose tasks are a class of its own cannot carry them; one
    whose tasks are the framework's plain Task gets a DatabaseTask
    (``tests/test_other_backends.py``)."""
    with (
        override_settings(
            TASKS={
                "default": {"BACKEND": "django_bgtasks.backend.DatabaseBackend"},
                "own": {"BACKEND": "tests.test_enqueue.OwnTaskBackend"},
            }
        ),
        pytest.raises(InvalidTask, match=r"does not take the options of .*\(max_"),
    ):
        bg_task(backend="own", max_attempts=2)(tasks.plain_function)


def _backport():
    from django_bgtasks.compat import BACKPORT

    return BACKPORT


@pytest.mark.django_db(transaction=True)
def test_wait_times_out_when_no_worker_runs():
    result = tasks.add.enqueue(1, 1)
    with pytest.raises(TimeoutError, match="has not finished"):
        result.wait(timeout=0.2)


def test_wait_inside_a_transaction_is_refused():
    result = tasks.add.enqueue(1, 1)
    with pytest.raises(RuntimeError, match="inside a transaction"):
        result.wait(timeout=0.1)


def test_enqueue_many_writes_every_job_in_order():
    results = tasks.add.using(priority=3).enqueue_many(
        [((n, n), {}) for n in range(50)] + [((), {"a": 1, "b": 2})]
    )
    assert len(results) == 51
    jobs = {job.pk: job for job in Job.objects.all()}
    assert len(jobs) == 51
    for number, result in enumerate(results[:50]):
        job = jobs[int(result.id)]
        assert (job.args, job.kwargs, job.priority) == ([number, number], {}, 3)
        assert result.args == [number, number]
    assert jobs[int(results[-1].id)].kwargs == {"a": 1, "b": 2}
    assert [int(r.id) for r in results] == sorted(int(r.id) for r in results)


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ([((1,), {}), ((object(),), {})], "Call 1: Task arguments must be JSON"),
        ([((1,), {}), (1, 2, 3)], "Call 1 is not an \\(args, kwargs\\) pair"),
        ([("ab", {})], "Call 0: args must be a sequence"),
    ],
)
def test_enqueue_many_checks_every_call_before_writing(calls, message):
    with pytest.raises(InvalidTaskArguments, match=message):
        tasks.echo.enqueue_many(calls)
    assert not Job.objects.exists()


def test_enqueue_many_in_chunks_writes_every_job_in_order(monkeypatch):
    monkeypatch.setattr(backend, "CHUNK", 3)
    results = tasks.echo.enqueue_many(((n,), {}) for n in range(10))
    jobs = Job.objects.order_by("pk")
    assert [job.args for job in jobs] == [[n] for n in range(10)]
    assert [result.id for result in results] == [str(job.pk) for job in jobs]
    assert [result.args for result in results] == [[n] for n in range(10)]


@pytest.mark.django_db(transaction=True)
def test_a_bad_call_in_a_later_chunk_writes_nothing(monkeypatch):
    monkeypatch.setattr(backend, "CHUNK", 3)
    calls = [((n,), {}) for n in range(10)]
    calls[7] = ((object(),), {})
    with pytest.raises(InvalidTaskArguments, match="Call 7: "):
        tasks.echo.enqueue_many(calls)
    assert not Job.objects.exists()
    # Inside the caller's transaction, which goes on.
    with transaction.atomic():
        kept = tasks.echo.enqueue(-1)
        with pytest.raises(InvalidTaskArguments, match="Call 7: "):
            tasks.echo.enqueue_many(calls)
    assert list(Job.objects.values_list("pk", flat=True)) == [int(kept.id)]


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_joins_the_callers_transaction():
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue_many([((1, 2), {})] * 10)
        raise RuntimeError
    assert not Job.objects.exists()
    assert tasks.add.enqueue_many([]) == []


def test_the_insert_is_logged_like_any_query():
    with CaptureQueriesContext(connection) as queries:
        tasks.add.enqueue(1, 2)
        tasks.add.enqueue_many([((1, 2), {}), ((3, 4), {})])
    inserts = [query for query in queries if "INSERT" in query["sql"]]
    one_per_job = connection.vendor != "postgresql" and (
        not connection.features.can_return_rows_from_bulk_insert
    )  # MySQL: no ids from a multi-row insert
    assert len(inserts) == (4 if one_per_job else 2), queries.captured_queries


def test_without_ids_from_a_multi_row_insert_each_job_is_inserted(monkeypatch):
    """MySQL's way (CI's MariaDB and SQLite stand in for it here)."""
    if connection.vendor == "postgresql":
        pytest.skip("PostgreSQL inserts many jobs in one statement")
    # A property on some backends, a cached_property on others: both go.
    features = connection.features
    monkeypatch.setattr(type(features), "can_return_rows_from_bulk_insert", False)
    monkeypatch.setitem(vars(features), "can_return_rows_from_bulk_insert", False)
    results = tasks.echo.enqueue_many(((n,), {}) for n in range(3))
    jobs = list(Job.objects.order_by("pk"))
    assert [job.args for job in jobs] == [[0], [1], [2]]
    assert [result.id for result in results] == [str(job.pk) for job in jobs]


@pytest.mark.django_db(transaction=True)
def test_enqueue_and_enqueue_many_in_chunks_notify_once_at_commit(monkeypatch):
    if not notify.notify_enabled(connection):
        pytest.skip("needs NOTIFY (PostgreSQL)")
    monkeypatch.setattr(backend, "CHUNK", 3)
    listening = connection.get_new_connection(connection.get_connection_params())
    listening.autocommit = True
    try:
        listening.execute(f'LISTEN "{notify.CHANNEL}"')

        def received():
            # What has arrived, waiting half a second for stragglers.
            return [n.payload for n in listening.notifies(timeout=0.5)]

        with transaction.atomic():
            tasks.echo.using(priority=4).enqueue_many(((n,), {}) for n in range(10))
            assert received() == []  # not before the commit
        assert received() == [notify.payload("default", 4)]
        with transaction.atomic():
            tasks.echo.using(priority=-2).enqueue(1)
            assert received() == []
        assert received() == [notify.payload("default", -2)]
        calls = [((n,), {}) for n in range(10)]
        calls[7] = ((object(),), {})
        with transaction.atomic(), pytest.raises(InvalidTaskArguments):
            tasks.echo.enqueue_many(calls)
        assert received() == []  # the savepoint rolled back took it along
    finally:
        listening.close()


def test_a_task_enqueued_again_follows_changed_settings():
    # A task's validation and columns are worked out once, and again when
    # the settings change.
    first = tasks.add.enqueue(1, 1)
    with override_settings(BGTASKS={"MAX_ATTEMPTS": 7, "BACKOFF": 30, "TIMEOUT": 9.5}):
        changed = tasks.add.enqueue(1, 1)
    again = tasks.add.enqueue(1, 1)
    rows = {job.pk: job for job in Job.objects.all()}
    assert rows[int(first.id)].max_attempts == 3
    assert rows[int(changed.id)].max_attempts == 7
    assert rows[int(changed.id)].backoff == Backoff.coerce(30).as_dict()
    assert rows[int(changed.id)].timeout == 9.5
    assert rows[int(again.id)].max_attempts == 3
    assert rows[int(again.id)].timeout is None


def test_each_enqueue_has_its_own_times_and_a_tasks_run_after_holds():
    later = timezone.now() + timedelta(hours=1)
    delayed = tasks.add.using(run_after=later)
    first = tasks.add.enqueue(1, 1)
    second = tasks.add.enqueue(1, 1)
    held = [delayed.enqueue(1, 1), delayed.enqueue(2, 2)]
    assert first.enqueued_at <= second.enqueued_at
    rows = {job.pk: job for job in Job.objects.all()}
    assert rows[int(first.id)].run_after == rows[int(first.id)].enqueued_at
    assert rows[int(second.id)].run_after == rows[int(second.id)].enqueued_at
    assert rows[int(second.id)].enqueued_at > rows[int(first.id)].enqueued_at
    for result in held:
        assert rows[int(result.id)].run_after == later
        assert rows[int(result.id)].enqueued_at > rows[int(first.id)].enqueued_at


@pytest.mark.django_db
def test_a_tasks_backoff_is_encoded_once_and_read_only():
    """The backoff column of a task's jobs carries its JSON text, made once
    per task: nothing can change the value under it; it is stored as it
    reads, and survives a pickle."""
    backoff = tasks.add.get_backend()._validated_columns(tasks.add)["backoff"]
    assert json.loads(backoff.text) == dict(backoff)
    for change in (
        lambda: backoff.__setitem__("factor", 3.0),
        lambda: backoff.update(factor=3.0),
        lambda: backoff.pop("factor"),
        backoff.clear,
    ):
        with pytest.raises(TypeError, match="read only"):
            change()
    assert pickle.loads(pickle.dumps(backoff)).text == backoff.text
    result = tasks.add.enqueue(1, b=2)
    assert Job.objects.get(pk=result.id).backoff == json.loads(backoff.text)


@pytest.mark.parametrize("many", [False, True], ids=["one", "many"])
def test_an_inserted_job_holds_what_the_orm_would_write(many):
    """The insert prepares its values by hand (not field by field): each
    column of its row must be what ``Model.save()`` writes from the same
    values, as the database stores it (times as SQLite's text, JSON as its
    text for one job). Times in zones other than UTC, one time shared by
    two columns, nested JSON with a null and non-ASCII text, a whole-number
    timeout. (A schedule's key is left out: with its time it is unique.)"""
    paris = ZoneInfo("Europe/Paris")
    now = timezone.now().astimezone(paris)
    columns = backend.DatabaseBackend._with_times(
        tasks.add.get_backend()._validated_columns(tasks.add),
        now,
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    columns.update(
        task_run_after=now + timedelta(days=1),
        expires_at=(now + timedelta(days=2)).astimezone(ZoneInfo("Asia/Tokyo")),
        limit_key="limit",
        backoff={"initial": 1.5, "factor": 2.0, "maximum": 60.0, "jitter": 0.1},
        timeout=30,
        scheduled_for=now - timedelta(minutes=1),
    )
    arguments = [([1, "é", [None, True]], {"b": {"c": 2.5}})] * (3 if many else 1)
    ids = insert_jobs(connection.alias, columns, arguments)
    by_orm = Job.objects.create(**columns, args=arguments[0][0], kwargs=arguments[0][1])

    fields = [field for field in Job._meta.concrete_fields if not field.primary_key]
    names = [field.column for field in fields]
    quote = connection.ops.quote_name
    # SQLite's times as the text it keeps (Django's converters would read
    # any format back as the same datetime).
    selected = [
        f"CAST({quote(field.column)} AS TEXT)"
        if connection.vendor == "sqlite" and isinstance(field, DateTimeField)
        else quote(field.column)
        for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(selected)} FROM {quote(Job._meta.db_table)} "
            f"WHERE id IN ({', '.join(['%s'] * (len(ids) + 1))})",
            [*ids, by_orm.pk],
        )
        rows = [
            tuple(
                _as_stored(field, value, many)
                for field, value in zip(fields, row, strict=True)
            )
            for row in cursor.fetchall()
        ]
    assert len(rows) == len(ids) + 1
    differ = {
        name: values
        for name, values in zip(names, zip(*rows, strict=True), strict=True)
        if any(value != values[-1] for value in values)
    }
    assert differ == {}


def _as_stored(field, value, many: bool):
    """A column's value to compare: SQL NULL apart from JSON's null; many
    jobs' JSON as values (that statement writes JSON the database's way,
    without Python's spaces), one job's as its text."""
    if value is None:
        return "SQL NULL"
    if isinstance(field, JSONField) and isinstance(value, str) and many:
        return ("JSON", json.loads(value))
    return value


def test_a_task_is_checked_again_when_the_backends_change():
    tasks.in_other_queue.enqueue()
    backends = {"default": {**settings.TASKS["default"], "QUEUES": ["default"]}}
    with (
        override_settings(TASKS=backends),
        pytest.raises(InvalidTask, match="Queue 'other' is not valid"),
    ):
        tasks.in_other_queue.enqueue()
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_whole_64_bit_range_round_trips_and_no_more():
    edges = [-(2**63), 2**63 - 1]
    result = tasks.echo.enqueue(*edges)
    assert Job.objects.get(pk=result.id).args == edges
    run_in_process()
    result.refresh()
    assert result.return_value == {"args": edges, "kwargs": {}}
    for beyond in (-(2**63) - 1, 2**63):
        with pytest.raises(InvalidTaskArguments, match="does not fit in 64 bits"):
            tasks.echo.enqueue(beyond)


class OwnTask(Task):
    """A backend's own task class (test_own_decorator_refuses_...)."""


class OwnTaskBackend(ImmediateBackend):
    task_class = OwnTask


def _prepared_inserts() -> int:
    """How many of this connection's prepared statements insert jobs."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            [f'%INSERT INTO "{Job._meta.db_table}"%'],
        )
        return cursor.fetchone()[0]


def _psycopg3_connection():
    """The test's connection, connected, if psycopg 3's (else skips)."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    connection.ensure_connection()
    if not hasattr(connection.connection, "prepare_threshold"):
        pytest.skip("psycopg 2 binds on the client")
    return connection.connection


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("server_side_binding", "threshold", "prepared"),
    [(None, None, True), (None, 0, True), (True, None, False), (True, 0, True)],
)
def test_inserts_are_prepared_on_a_connection_straight_to_the_server(
    server_side_binding, threshold, prepared
):
    """Outside a transaction on a connection straight to PostgreSQL (the
    tests' own) the enqueue's statements are prepared, whatever Django's
    cursors do; with ``OPTIONS["server_side_binding"]`` True (set for a
    pooler that keeps prepared statements) they follow Django's
    ``prepare_threshold``: None never, 0 at once. In a transaction, only
    as Django's settings say. Either way they write the jobs. (Through
    PgBouncer: test_pgbouncer.py.) Django's own statements are not counted
    by psycopg meanwhile (it keeps the last hundred texts it counted)."""
    raw = _psycopg3_connection()
    options = connection.settings_dict["OPTIONS"]
    before = raw.prepare_threshold, options.get("server_side_binding")
    raw.prepare_threshold = threshold  # what OPTIONS sets on a new connection
    options["server_side_binding"] = server_side_binding
    try:
        for number in range(3):
            tasks.add.enqueue(number, b=1)
        tasks.add.enqueue_many([((7,), {"b": 1}), ((8,), {"b": 1})])
        count = _prepared_inserts()
        with transaction.atomic():
            tasks.add.enqueue(9, b=1)
        in_transaction = _prepared_inserts() - count
        # What psycopg counted (a private attribute: none if it moved).
        counted = len(getattr(getattr(raw, "_prepared", None), "_counts", ()))
    finally:
        raw.prepare_threshold, options["server_side_binding"] = before
        if before[1] is None:
            del options["server_side_binding"]
        connection.close()  # and its prepared statements
    assert sorted(Job.objects.values_list("args", flat=True)) == [
        [0], [1], [2], [7], [8], [9]
    ]  # fmt: skip
    assert count == (2 if prepared else 0)  # one job, many jobs
    assert in_transaction == 0  # the one-job statement: prepared already or not
    if threshold is None:
        assert counted == 0


@pytest.mark.django_db(transaction=True)
def test_an_insert_whose_prepared_statement_is_lost_is_made_again_unprepared():
    """A connection that does not keep what it prepared (here: deallocated
    behind psycopg's back, as a pooler's next server connection would not
    know it): the enqueue that finds its statement gone inserts again,
    unprepared, outside a transaction (the failed statement wrote nothing),
    and so do the next ones on that connection."""
    _psycopg3_connection()
    try:
        tasks.add.enqueue(1, b=1)
        assert _prepared_inserts() == 1
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        second = tasks.add.enqueue(2, b=1)
        third = tasks.add.enqueue(3, b=1)
        assert _prepared_inserts() == 0
    finally:
        connection.close()
    assert sorted(Job.objects.values_list("args", flat=True)) == [[1], [2], [3]]
    assert {second.id, third.id} <= {
        str(pk) for pk in Job.objects.values_list("pk", flat=True)
    }


def _kept_cursor():
    """The cursor this connection keeps for its one-statement inserts."""
    return getattr(connection, "_bgtasks_insert_cursor", None)


@pytest.mark.django_db(transaction=True)
def test_the_inserts_cursor_is_kept_and_follows_its_connection_and_the_query_log():
    """One-statement inserts keep one cursor per connection. It is made
    again when the query log is switched on (``assertNumQueries``, DEBUG:
    the enqueue is logged) and off (nothing logged after), and for a new
    connection (the old one closed); an insert the database refuses drops
    it. Every job is written."""
    _psycopg3_connection()
    try:
        tasks.add.enqueue(1, b=1)
        first = _kept_cursor()
        tasks.add.enqueue(2, b=1)
        assert first is not None and _kept_cursor() is first
        with CaptureQueriesContext(connection) as logged:
            tasks.add.enqueue(3, b=1)
        logging = _kept_cursor()
        assert logging is not first
        count = len(connection.queries_log)
        tasks.add.enqueue(4, b=1)
        assert len(connection.queries_log) == count
        assert _kept_cursor() not in (first, logging, None)
        before_close = _kept_cursor()
        connection.close()
        tasks.add.enqueue(5, b=1)
        assert _kept_cursor() not in (before_close, None)
        with pytest.raises(IntegrityError):  # no such schedule
            tasks.add.get_backend().enqueue_job(
                tasks.add, (6,), {"b": 1}, schedule_id=2**40
            )
        assert _kept_cursor() is None
        tasks.add.enqueue(7, b=1)
    finally:
        connection.close()
    assert [q["sql"] for q in logged.captured_queries if "INSERT" in q["sql"]]
    assert sorted(Job.objects.values_list("args", flat=True)) == [
        [1], [2], [3], [4], [5], [7]
    ]  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_an_enqueue_made_during_an_insert_on_its_connection_reads_its_own_id():
    """An execute wrapper that enqueues as an enqueue's statement runs (an
    audit trail, say): the inner insert does not use the outer one's kept
    cursor, so each reads its own job's id."""
    inner = []

    def enqueue_inside(execute, sql, params, many, context):
        outcome = execute(sql, params, many, context)
        if "INSERT" in sql and not inner:
            inner.append(None)  # once
            inner[0] = tasks.add.enqueue(100, b=1)
        return outcome

    with connection.execute_wrapper(enqueue_inside):
        outer = tasks.add.enqueue(1, b=1)
    jobs = dict(Job.objects.values_list("pk", "args"))
    assert jobs[int(outer.id)] == [1]
    assert jobs[int(inner[0].id)] == [100]
    assert len(jobs) == 2


def test_enqueue_many_pauses_the_garbage_collector_and_restores_it():
    """Its collections over every object of the process cost a bulk enqueue
    a third of its time; off during the call, as it was afterwards."""
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append(gc.isenabled())

    task_enqueued.connect(receiver)
    try:
        assert gc.isenabled()
        tasks.add.enqueue_many([((1,), {"b": 2}), ((3,), {"b": 4})])
        assert seen == [False, False] and gc.isenabled()
        with pytest.raises(InvalidTaskArguments):
            tasks.add.enqueue_many([((1,), {"b": 2}), ((object(),), {})])
        assert gc.isenabled()  # on again after an error
        gc.disable()
        try:
            tasks.add.enqueue_many([((5,), {"b": 6})])
            assert not gc.isenabled()  # left off: it was off
        finally:
            gc.enable()
    finally:
        task_enqueued.disconnect(receiver)
    assert Job.objects.count() == 3


AWKWARD_ARGUMENTS = [
    ((2**63 - 1, -(2**63), 0.1, 1e15, -0.0, True, None), {}),
    (("héllo ☃ 𝄞", "quote ' \" \\ $[0] %s", ""), {"nested": {"a": [1, [2, {}]]}}),
    ((), {"é": "", "x": [None, False]}),
    (([],), {}),
]


@pytest.mark.parametrize(
    "calls",
    [
        AWKWARD_ARGUMENTS,
        # No kwargs in any call: SQLite's document then holds the args alone.
        [call for call in AWKWARD_ARGUMENTS if not call[1]],
    ],
)
def test_enqueue_many_stores_what_enqueue_stores(calls):
    """The bulk path sends every job's arguments as one JSON document that
    the database takes apart: the stored values are those of one by one."""
    many = tasks.echo.enqueue_many(calls)
    one_by_one = [tasks.echo.enqueue(*args, **kwargs) for args, kwargs in calls]
    stored = dict(Job.objects.values_list("pk", "args"))
    kwargs = dict(Job.objects.values_list("pk", "kwargs"))
    for bulk, single in zip(many, one_by_one, strict=True):
        assert stored[int(bulk.id)] == stored[int(single.id)] == bulk.args
        assert kwargs[int(bulk.id)] == kwargs[int(single.id)] == bulk.kwargs


def test_overlapping_pauses_of_the_collector_end_with_the_last():
    """Two bulk enqueues on two threads overlap: the first to end must not
    turn the collector on under the other, nor the second leave it off."""
    first_in, second_in, first_out = (threading.Event() for _ in range(3))
    seen = {}

    def first():
        with backend.collection_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with backend.collection_paused():
            second_in.set()
            first_out.wait(10)
            seen["while the second runs"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"while the second runs": False}
    assert gc.isenabled()


def test_enqueue_many_takes_arguments_as_deep_as_enqueue_does():
    """The deepest arguments ``enqueue`` accepts fit in a bulk enqueue too
    (MariaDB refuses JSON nested past 32 levels: the document carrying
    them must not add to their depth)."""
    deepest = []
    while True:
        deeper = [deepest]
        try:
            to_json([deeper], "args")
        except NotJSON:
            break
        deepest = deeper
    results = tasks.echo.enqueue_many([((deepest,), {}), ((1,), {})])
    assert Job.objects.get(pk=results[0].id).args == [deepest]
