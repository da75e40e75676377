"""Properties of rows corrupted behind the ORM's back: their job fails with a
clear error and the worker goes on (see ``tests/properties.py``)."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from django_bgtasks.compat import TaskResultStatus
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.properties import (
    JSON_SCALARS,
    SAFE_JSON,
    SAFE_TEXT,
    TASK_PATHS,
    WORKER_RUNS,
    clear_jobs,
    registered_paths,
    run_worker,
)

pytestmark = pytest.mark.django_db(transaction=True)


def write_behind_orm(job_id: int, column: str, text: str, *, valid_json=True):
    """Set ``column`` of job ``job_id`` to ``text`` with raw SQL; JSON columns
    get it as JSON text (malformed too, where the database can hold it)."""
    table = connection.ops.quote_name(Job._meta.db_table)
    quoted = connection.ops.quote_name(column)
    json_column = column != "task_path"
    cast = "::jsonb" if json_column and connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        if not valid_json:
            # Django's JSON columns have CHECK (JSON_VALID(...)) on SQLite and
            # MariaDB; a row older than the constraint, or restored from a
            # dump, can still hold malformed text.
            cursor.execute(CHECKS_OFF[connection.vendor])
        try:
            cursor.execute(
                f"UPDATE {table} SET {quoted} = %s{cast} WHERE id = %s",
                [text, job_id],
            )
        finally:
            if not valid_json:
                cursor.execute(CHECKS_ON[connection.vendor])


CHECKS_OFF = {
    "sqlite": "PRAGMA ignore_check_constraints = ON",
    "mysql": "SET SESSION check_constraint_checks = OFF",
}
CHECKS_ON = {
    "sqlite": "PRAGMA ignore_check_constraints = OFF",
    "mysql": "SET SESSION check_constraint_checks = ON",
}


def malformed_json_possible() -> bool:
    return connection.vendor == "sqlite" or (
        connection.vendor == "mysql" and connection.mysql_is_mariadb
    )


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


NOT_A_LIST = st.one_of(
    JSON_SCALARS, st.dictionaries(SAFE_TEXT, JSON_SCALARS, max_size=3)
).map(json.dumps)
NOT_AN_OBJECT = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)).map(
    json.dumps
)
MALFORMED = st.one_of(
    st.sampled_from(["[1,", "{", "{'a': 1}", "[1] [2]", "nul", "", " ", "[", "}{"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
).filter(not_json)


@settings(WORKER_RUNS, max_examples=40)
@given(
    corruption=st.one_of(
        st.tuples(st.just("args"), NOT_A_LIST),
        st.tuples(st.just("kwargs"), NOT_AN_OBJECT),
        st.tuples(st.just("task_path"), TASK_PATHS),
        st.tuples(st.sampled_from(["malformed args", "malformed kwargs"]), MALFORMED),
    )
)
@example(corruption=("task_path", "os.system"))
@example(corruption=("args", '{"a": 1}'))
@example(corruption=("kwargs", "[1, 2]"))
@example(corruption=("malformed args", "[1,"))
def test_a_corrupt_job_fails_clearly_and_the_worker_goes_on(corruption):
    column, text = corruption
    valid_json = not column.startswith("malformed")
    column = column.removeprefix("malformed ")
    if column == "task_path":
        assume(text not in registered_paths())
        if connection.vendor == "postgresql":
            assume("\x00" not in text)
    if not valid_json and not malformed_json_possible():
        return  # PostgreSQL's jsonb and MySQL's JSON hold valid JSON only
    clear_jobs()
    victim = tasks.echo.enqueue("victim")
    write_behind_orm(int(victim.id), column, text, valid_json=valid_json)
    normal = tasks.echo.enqueue("normal")

    run_worker()

    job = Job.objects.get(pk=victim.id)
    assert job.status == JobStatus.FAILED, (job.status, job.errors)
    assert job.attempts == 1, "a corrupt job is not retried"
    (error,) = job.errors
    if column == "task_path":
        assert error["exception_class_path"] == (
            "django_bgtasks.exceptions.TaskNotRegistered"
        )
        assert "is not a registered task" in error["traceback"]
    else:
        assert error["exception_class_path"] == (
            "django_bgtasks.exceptions.InvalidTaskArguments"
        )
        assert "stored arguments are corrupt" in error["traceback"]
    normal.refresh()
    assert normal.status == TaskResultStatus.SUCCESSFUL, normal.errors
    assert normal.return_value == {"args": ["normal"], "kwargs": {}}
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
    assert not WorkerProcess.objects.exists()


@settings(WORKER_RUNS, max_examples=20)
@given(
    column=st.sampled_from(["backoff", "errors"]),
    value=SAFE_JSON.map(json.dumps),
)
@example(column="backoff", value='"fast"')
@example(column="errors", value="5")
def test_a_failing_job_with_corrupt_bookkeeping_is_still_recorded(column, value):
    """The worker records the outcome of a failing job whose backoff or error
    list was corrupted: the job is not left RUNNING nor given back as
    interrupted, and the worker goes on."""
    clear_jobs()
    victim = tasks.always_fails.using(max_attempts=2).enqueue()
    write_behind_orm(int(victim.id), column, value)
    normal = tasks.echo.enqueue("normal")

    run_worker()

    job = Job.objects.get(pk=victim.id)
    assert job.status in (JobStatus.READY, JobStatus.FAILED), job.status
    paths = [entry.get("exception_class_path") for entry in job.errors[-1:]]
    assert paths != ["django_bgtasks.exceptions.JobInterrupted"], (
        f"{column}={value}: the outcome was not recorded; the job was given "
        f"back at shutdown ({job.errors[-1]['traceback'].strip()})"
    )
    normal.refresh()
    assert normal.status == TaskResultStatus.SUCCESSFUL, normal.errors
