"""Properties of what a worker runs: what enqueue accepted reaches the task
exactly, and a failing job's accepted backoff schedules its retry (see
``tests/properties.py``)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from django_bgtasks import Backoff
from django_bgtasks.compat import TaskResultStatus
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.properties import (
    NORMALISABLE,
    SAFE_TEXT,
    WORKER_RUNS,
    assert_same,
    attempt,
    clear_jobs,
    expected_arguments,
    run_worker,
    valid_backoffs,
)

pytestmark = pytest.mark.django_db(transaction=True)


@WORKER_RUNS
@given(
    args=st.lists(NORMALISABLE, max_size=4),
    kwargs=st.dictionaries(SAFE_TEXT, NORMALISABLE, max_size=3),
)
@example(args=[9.99e15, -0.0], kwargs={})  # the largest floats kept as floats
def test_a_worker_gets_the_arguments_exactly(args, kwargs):
    clear_jobs()
    expected_args, expected_kwargs = expected_arguments(args, kwargs)
    result = tasks.echo.enqueue(*args, **kwargs)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    assert_same(
        {"args": expected_args, "kwargs": expected_kwargs},
        result.return_value,
        "return value",
    )
    fetched = tasks.echo.get_result(result.id)
    assert_same(result.return_value, fetched.return_value, "get_result().return_value")


RETRY_BACKOFFS = st.one_of(
    valid_backoffs(),
    valid_backoffs().map(lambda fields: Backoff(**fields)),
    st.integers(0, 10**30),
    st.floats(0, 1e300),
)


@settings(WORKER_RUNS, max_examples=20)
@given(backoff=RETRY_BACKOFFS)
@example(backoff=1e12)
def test_an_accepted_backoff_schedules_the_retry(backoff):
    """A job that fails its first of two attempts, with an accepted backoff,
    is retried: either it waits for its retry (READY after one failure, due
    no earlier than that failure) or its retry ran and failed too (a backoff
    of 0 or tiny). Never failed for good without its retry, stuck RUNNING,
    or given back as interrupted because its retry time could not be
    computed."""
    clear_jobs()
    result, error = attempt(
        lambda: tasks.always_fails.using(max_attempts=2, backoff=backoff).enqueue()
    )
    assume(error is None)  # refusals: test_backoffs_round_trip_or_are_refused
    run_worker()
    job = Job.objects.get(pk=result.id)
    paths = [entry["exception_class_path"] for entry in job.errors]
    found = (
        f"backoff={backoff!r}: the job is {job.status} after {job.attempts} "
        f"attempt(s), run_after {job.run_after.isoformat()}, errors {paths}"
        + (f":\n{job.errors[-1]['traceback']}" if job.errors else "")
    )
    if job.status == JobStatus.READY:  # the retry waits for its backoff
        assert job.attempts == 1, f"Put back, but not for its retry: {found}"
        assert paths == ["builtins.ValueError"], f"Not its own error: {found}"
        failed_at = datetime.fromisoformat(job.errors[0]["at"])
        assert job.run_after >= failed_at, (
            f"The retry is due before the failure that caused it "
            f"({failed_at.isoformat()}): {found}"
        )
    elif job.status == JobStatus.FAILED:  # the retry ran (a backoff of ~0)
        assert job.attempts == 2, f"Failed without its retry: {found}"
        assert paths == ["builtins.ValueError"] * 2, f"Not its own errors: {found}"
    else:
        pytest.fail(f"Neither waiting for its retry nor failed after it: {found}")
    assert not WorkerProcess.objects.exists()
