"""Results kept only when wanted: ``store_result=False`` stores no return
value, ``delete_on_success=True`` deletes the job's row once it succeeded;
through a real worker on each database."""

import pytest
from django.test import override_settings

from django_bgtasks import task
from django_bgtasks.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_finished,
)
from django_bgtasks.models import Job, JobStatus
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.conftest import run_in_process

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_result_not_stored_reads_as_none():
    result = tasks.result_not_stored.enqueue()
    run_in_process()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.return_value) == (JobStatus.SUCCESSFUL, None)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value is None


@pytest.mark.parametrize("concurrency", [1, 4])
def test_jobs_deleted_on_success_go_and_the_others_stay(concurrency):
    finished = []

    def on_finished(sender, task_result, **kwargs):
        finished.append((task_result.id, task_result.status))

    gone = [tasks.deleted_on_success.enqueue() for _ in range(6)]
    failed = tasks.deleted_on_success.enqueue(fail=True)
    kept = [tasks.add.enqueue(n, n) for n in range(6)]
    task_finished.connect(on_finished)
    try:
        # Several at once: the deletions go in the same batches as the
        # other outcomes.
        run_in_process(concurrency=concurrency)
    finally:
        task_finished.disconnect(on_finished)
    assert not Job.objects.filter(pk__in=[r.id for r in gone]).exists()
    assert Job.objects.get(pk=failed.id).status == JobStatus.FAILED
    values = Job.objects.filter(pk__in=[r.id for r in kept]).values_list(
        "return_value", flat=True
    )
    assert sorted(values) == [0, 2, 4, 6, 8, 10]
    with pytest.raises(TaskResultDoesNotExist):
        gone[0].refresh()
    # Their success was reported all the same.
    assert {(r.id, TaskResultStatus.SUCCESSFUL) for r in gone} <= set(finished)


def test_run_jobs_deletes_them_too():
    result = tasks.deleted_on_success.enqueue()
    [ran] = run_jobs()
    assert (ran.id, ran.status) == (result.id, TaskResultStatus.SUCCESSFUL)
    assert not Job.objects.filter(pk=result.id).exists()


@pytest.mark.parametrize("option", ["store_result", "delete_on_success"])
def test_the_options_take_true_or_false(option):
    with pytest.raises(InvalidTask, match=f"{option} must be True or False"):
        task(**{option: "yes"})(tasks.plain_function)


@override_settings(BGTASKS={"MAX_PAYLOAD_BYTES": 10})
def test_a_return_value_not_stored_is_not_held_to_the_size_limit():
    result = tasks.result_not_stored.enqueue()
    run_in_process()
    assert Job.objects.get(pk=result.id).status == JobStatus.SUCCESSFUL
