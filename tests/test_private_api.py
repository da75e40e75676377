"""Guards of the speed-ups that lean on private APIs (``private_api.py``):
each test fails when Django, the framework or psycopg changes under one."""

import dataclasses

import pytest
from django.db import DatabaseError, connection
from django.db.backends.utils import CursorWrapper
from django.dispatch import Signal
from django.test.utils import CaptureQueriesContext

from django_bgtasks import DatabaseTaskResult
from django_bgtasks.compat import TaskResultStatus
from django_bgtasks.models import Job
from django_bgtasks.private_api import (
    Receivers,
    _field_setters,
    keep_open,
    model_from_row,
    new_result,
    result_maker,
    saw_error,
    send_to_each,
    skip_health_check,
    wrap_cursor,
)
from django_bgtasks.rows import job_result, task_for_job, update_result
from django_bgtasks.sql.claim import claim_jobs
from django_bgtasks.sql.claimed import NOT_RETURNED
from tests import tasks

# Signals: receivers looked up once per batch ------------------------------------


class Sender:
    pass


def test_calls_each_receiver_as_signal_send_does():
    signal = Signal()
    calls = []

    def first(signal, sender, **named):
        calls.append(("first", signal, sender, named))

    def second(sender, **named):
        calls.append(("second", sender, named["task_result"]))

    signal.connect(first)
    signal.connect(second)
    receivers = Receivers(signal, Sender)
    receivers.send(task_result=1)
    receivers.send(task_result=2)
    assert calls == [
        ("first", signal, Sender, {"task_result": 1}),
        ("second", Sender, 1),
        ("first", signal, Sender, {"task_result": 2}),
        ("second", Sender, 2),
    ]


def test_only_receivers_for_that_sender():
    signal = Signal()
    calls = []

    class Other:
        pass

    def mine(sender, **named):
        calls.append("mine")

    def theirs(sender, **named):
        calls.append("theirs")

    signal.connect(mine, sender=Sender)
    signal.connect(theirs, sender=Other)
    Receivers(signal, Sender).send(task_result=None)
    assert calls == ["mine"]


def test_the_receivers_are_those_of_when_it_was_made():
    signal = Signal()
    calls = []

    def early(sender, **named):
        calls.append(("early", named["task_result"]))

    def late(sender, **named):
        calls.append(("late", named["task_result"]))

    signal.connect(early)
    receivers = Receivers(signal, Sender)
    signal.connect(late)
    receivers.send(task_result=1)
    Receivers(signal, Sender).send(task_result=2)
    assert calls == [("early", 1), ("early", 2), ("late", 2)]


def test_a_receiver_error_propagates():
    signal = Signal()

    def broken(sender, **named):
        raise RuntimeError("receiver broke")

    signal.connect(broken)
    with pytest.raises(RuntimeError, match="receiver broke"):
        Receivers(signal, Sender).send(task_result=None)


def test_async_receivers_are_sent_through_signal_send():
    signal = Signal()
    calls = []

    def sync_receiver(sender, **named):
        calls.append(("sync", named["task_result"]))

    async def async_receiver(sender, **named):
        calls.append(("async", named["task_result"]))

    signal.connect(sync_receiver)
    signal.connect(async_receiver)
    send_to_each(signal, Sender, [1, 2])
    assert calls == [("sync", 1), ("async", 1), ("sync", 2), ("async", 2)]


def test_the_receivers_are_looked_up_once_on_this_django():
    """The speed-up is taken, not silently replaced by Signal.send."""
    signal = Signal()
    signal.connect(lambda sender, **named: None)
    assert Receivers(signal, Sender).looked_up


# Model instances built without __init__ -------------------------------------------


def comparable(job: Job) -> dict:
    """Everything an instance holds but its state object, and its state."""
    values = {name: value for name, value in vars(job).items() if name != "_state"}
    return {**values, "_state": (job._state.db, job._state.adding)}


@pytest.mark.django_db(transaction=True)
def test_a_claimed_job_is_the_job_the_orm_loads():
    """Field by field, and nothing more or less in it (a claim builds its
    jobs with model_from_row: from PostgreSQL's RETURNING, or read after
    the claim elsewhere, with the ORM's converters)."""
    tasks.echo.using(priority=3).enqueue(1, [2], key={"x": None})
    [claimed] = claim_jobs("default", worker_id="w", queues=None, limit=1)
    # But the columns no worker reads, which a claim leaves deferred
    # (loaded if read).
    loaded = Job.objects.defer(*NOT_RETURNED).get(pk=claimed.pk)
    assert claimed.get_deferred_fields() == loaded.get_deferred_fields()
    assert comparable(claimed) == comparable(loaded)
    claimed.refresh_from_db()  # and it behaves as one
    claimed.save(update_fields=["progress"])


@pytest.mark.django_db
def test_model_from_row_makes_what_from_db_makes():
    tasks.add.enqueue(1, 2)
    loaded = Job.objects.get()
    values = {
        field.attname: getattr(loaded, field.attname)
        for field in Job._meta.concrete_fields
    }
    built = model_from_row(Job, "default", dict(values))
    from_db = Job.from_db("default", list(values), list(values.values()))
    assert comparable(built) == comparable(from_db) == comparable(loaded)


# The framework's results, made without __init__ ---------------------------------------


@pytest.mark.django_db
def test_every_field_of_a_result_is_set_as_init_sets_it():
    tasks.add.enqueue(1, 2)
    job = Job.objects.get()
    fast = job_result(job, task_for_job(job))
    names = [field.name for field in dataclasses.fields(DatabaseTaskResult)]
    assert {name for name in names if hasattr(fast, name)} == set(names)
    given = {name: getattr(fast, name) for name in names if name != "_return_value"}
    slow = DatabaseTaskResult(**given)  # what __init__ makes of the same
    object.__setattr__(slow, "_return_value", fast._return_value)
    for name in names:
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.django_db
def test_new_results_of_an_enqueue_have_every_field():
    [result] = tasks.add.enqueue_many([((1, 2), {})])
    names = {field.name for field in dataclasses.fields(DatabaseTaskResult)}
    assert {name for name in names if hasattr(result, name)} == names
    assert result.status == TaskResultStatus.READY and result.args == [1, 2]


def test_a_results_fields_are_set_through_their_slots():
    """The fast setters are the slots' own: if the framework's results lose
    their slots, this fails (the fallback below still makes them right)."""
    setters = _field_setters(DatabaseTaskResult)
    names = {field.name for field in dataclasses.fields(DatabaseTaskResult)}
    assert set(setters) == names
    assert all(type(setter).__name__ == "method-wrapper" for setter in setters.values())


def test_results_of_a_dataclass_without_slots_are_made_all_the_same():
    @dataclasses.dataclass(frozen=True)
    class Plain:
        a: int
        b: list

    make = result_maker(Plain, [("a", 1)], ["b"])
    first, second = make([2]), make([3])
    assert (first.a, first.b, second.a, second.b) == (1, [2], 1, [3])
    assert new_result(Plain, [("a", 4), ("b", [])]) == Plain(a=4, b=[])


@pytest.mark.django_db
def test_a_frozen_result_is_brought_up_to_date_in_place():
    tasks.add.enqueue(1, 2)
    job = Job.objects.get()
    result = job_result(job, task_for_job(job))
    job.status, job.return_value = "SUCCESSFUL", 3
    update_result(result, job)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3


# Cursors and connections ------------------------------------------------------------


@pytest.mark.django_db
def test_a_wrapped_cursor_logs_its_queries_and_raises_djangos_errors():
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as queries:
        with connection.wrap_database_errors:
            raw = connection.connection.cursor()
        cursor = wrap_cursor(connection, raw)
        assert isinstance(cursor, CursorWrapper)
        cursor.execute("SELECT 1")
    assert len(queries) == 1
    with pytest.raises(DatabaseError):  # Django's class, not the driver's
        cursor.execute("SELECT * FROM no_such_table")


@pytest.mark.django_db
def test_an_enqueue_is_logged_like_any_query():
    with CaptureQueriesContext(connection) as queries:
        tasks.add.enqueue(1, 2)
    assert any("INSERT" in query["sql"] for query in queries)


@pytest.mark.django_db(transaction=True)
def test_a_kept_connection_outlives_conn_max_age():
    settings_dict = connection.settings_dict
    saved = settings_dict["CONN_MAX_AGE"]
    settings_dict["CONN_MAX_AGE"] = 0
    try:
        connection.close()
        connection.ensure_connection()
        raw = connection.connection
        connection.close_if_unusable_or_obsolete()
        assert connection.connection is None  # Django's rule: closed at once
        connection.ensure_connection()
        raw = connection.connection
        keep_open(connection)
        connection.close_if_unusable_or_obsolete()
        assert connection.connection is raw
    finally:
        settings_dict["CONN_MAX_AGE"] = saved


@pytest.mark.django_db(transaction=True)
def test_a_connection_counted_as_checked_is_not_checked(monkeypatch):
    assert connection.settings_dict["CONN_HEALTH_CHECKS"]
    connection.ensure_connection()
    connection.close_if_unusable_or_obsolete()  # the next query would check
    checks = []
    monkeypatch.setattr(connection, "is_usable", lambda: checks.append(1) or True)
    skip_health_check(connection)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert checks == []
    connection.close_if_unusable_or_obsolete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert checks == [1]  # without it, Django checks


@pytest.mark.django_db(transaction=True)
def test_a_failed_query_is_seen_on_its_connection():
    connection.ensure_connection()
    assert not saw_error(connection)
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert saw_error(connection)
    connection.close()
