"""Rows written around the API: a job the worker cannot read or run fails
alone, named; the jobs claimed with it run; no rescue stops on it."""

import json
import math
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_bgtasks.maintenance.rescue import rescue_dead_workers
from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.conftest import run_in_process
from tests.factories import make_worker

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = Job._meta.db_table
# JSON the database keeps and Python cannot read back: a number past
# Python's 4,300-digit limit on converting text to int (every version) ...
HUGE_NUMBER = "[" + "9" * 5000 + "]"
# ... and arrays nested past the JSON decoder's recursion limit (Python
# 3.11 and 3.12; 3.13 reads this depth), within what SQLite's JSON check
# takes (2,000 levels).
DEEP = 1500
DEEP_JSON = "[" * DEEP + "]" * DEEP


def write(job_id: int, column: str, sql_value: str, params=()) -> None:
    """Set a column of a job's row with SQL, around the ORM and the API."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET {column} = {sql_value} WHERE id = %s",
            [*params, job_id],
        )


def python_reads(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def unreadable_time(job_id: int) -> None:
    if connection.vendor == "postgresql":
        write(job_id, "run_after", "'-infinity'")
    elif connection.vendor == "sqlite":
        write(job_id, "run_after", "'0000-01-01 00:00:00'")
    else:
        pytest.skip("MySQL/MariaDB keep no time a driver cannot read")


def unreadable_args(job_id: int) -> None:
    write(job_id, "args", "%s", [HUGE_NUMBER])


def unreadable_errors(job_id: int) -> None:
    write(job_id, "errors", "%s", [HUGE_NUMBER])


def deep_args(job_id: int) -> None:
    if connection.vendor == "mysql":
        pytest.skip("MariaDB refuses JSON nested this deep")
    if python_reads(DEEP_JSON):
        pytest.skip("this Python reads JSON nested this deep")
    write(job_id, "args", "%s", [DEEP_JSON])


def assert_fails_alone(bad: int, mates, *, says: str) -> None:
    status = Job.objects.filter(pk=bad).values_list("status", flat=True).get()
    assert status == JobStatus.FAILED, status
    error = Job.objects.filter(pk=bad).values_list("errors", flat=True).get()[-1]
    assert error["exception_class_path"] == "django_bgtasks.exceptions.InvalidJobRow"
    assert says in error["traceback"]
    for result in mates:
        result.refresh()
        assert result.return_value == result.args[0] + 1
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()


@pytest.mark.parametrize(
    "spoil",
    [unreadable_time, unreadable_args, unreadable_errors, deep_args],
    ids=["time", "args", "errors", "deep-args"],
)
def test_a_job_that_cannot_be_read_fails_alone_and_its_batch_mates_run(spoil):
    mates = [tasks.add.enqueue(number, 1) for number in range(4)]
    bad = int(tasks.add.enqueue(7, 1).id)
    spoil(bad)

    run_in_process(concurrency=2, prefetch=8)  # one claim takes them all

    assert_fails_alone(bad, mates, says="cannot be read")


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("max_attempts", "0", "max_attempts: 0 is not"),
        ("attempts", "5", "this is attempt 6, and max_attempts is 3"),
        ("queue_name", "'nowhere'", "queue_name: 'nowhere' is not one of"),
        ("timeout", "-1", "timeout: -1.0 is not"),
        ("backend", "'gone'", "backend: 'gone' is not"),
    ],
)
def test_a_job_whose_options_are_out_of_bounds_fails_alone(column, value, says):
    mates = [tasks.add.enqueue(number, 1) for number in range(4)]
    bad = int(tasks.add.using(max_attempts=3).enqueue(7, 1).id)
    write(bad, column, value)

    run_in_process(concurrency=2, prefetch=8)

    assert_fails_alone(bad, mates, says=says)
    assert Job.objects.get(pk=bad).attempts == 1 + (5 if column == "attempts" else 0)


def test_a_timeout_that_is_not_a_number_fails_the_job_not_the_process():
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL keeps a NaN")
    mates = [tasks.add.enqueue(number, 1) for number in range(2)]
    bad = int(tasks.add.enqueue(7, 1).id)
    write(bad, "timeout", "'NaN'")
    assert math.isnan(Job.objects.get(pk=bad).timeout)

    worker = run_in_process(concurrency=2)

    assert worker.exit == 0
    assert_fails_alone(bad, mates, says="timeout: nan is not")


def test_a_dead_workers_jobs_are_rescued_whatever_their_rows_hold():
    """The rescue reads only the columns it changes: a row it cannot read
    whole is put back like the others, and no rescue pass stops on it."""
    old = timezone.now() - timedelta(hours=1)
    dead = make_worker("dead", silent_for=timedelta(hours=1))
    ids = [int(tasks.add.enqueue(number, 1).id) for number in range(3)]
    Job.objects.filter(pk__in=ids).update(
        status=JobStatus.RUNNING, worker=dead, attempts=1, last_attempted_at=old
    )
    write(ids[0], "args", "%s", [HUGE_NUMBER])
    write(ids[1], "errors", "%s", [HUGE_NUMBER])
    if connection.vendor == "postgresql":
        write(ids[2], "run_after", "'-infinity'")

    rescue = rescue_dead_workers()

    assert rescue.workers == ["dead"] and rescue.jobs == 3
    assert set(Job.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        JobStatus.READY
    }


def test_a_corrupt_first_step_fails_and_ends_its_chain_while_the_claim_goes_on():
    """MariaDB refuses to update a row whose JSON was corrupted behind its
    back (constraint checks off): the claim fails that job, ends the chain
    waiting on it (the ORM's locking reads, in a transaction Django knows
    of, not the claim's usual one of plain statements) and claims the
    others."""
    from django_bgtasks import chain
    from django_bgtasks.sql.claim import claim_jobs

    if not (connection.vendor == "mysql" and connection.mysql_is_mariadb):
        pytest.skip("MariaDB checks a row's JSON again on every update")
    good = tasks.add.enqueue(1, 1)
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(10)).enqueue()
    first, second = Job.objects.filter(workflow_id=workflow.id).order_by("pk")
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION check_constraint_checks = OFF")
        try:
            write(first.pk, "args", "%s", ["[1,"])
        finally:
            cursor.execute("SET SESSION check_constraint_checks = ON")

    claimed = claim_jobs("default", worker_id=None, queues=None, limit=10)

    assert [job.pk for job in claimed] == [int(good.id)]
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == JobStatus.FAILED
    assert "corrupt" in first.errors[-1]["traceback"]
    assert second.status == JobStatus.CANCELLED
