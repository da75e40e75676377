"""Workflows: chains, groups and chords written as rows in one transaction,
each step made due by the transaction that records the end of what it waits
for; run here with ``run_jobs`` (the worker's outcome paths) on each
database. Real workers and kills: test_workflow_processes.py."""

import sys
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_bgtasks import chain, chord, get_workflow, group
from django_bgtasks.compat import InvalidTask, TaskResultStatus
from django_bgtasks.exceptions import InvalidTaskArguments
from django_bgtasks.maintenance.prune import prune_finished_jobs
from django_bgtasks.models import Job, JobDependency
from django_bgtasks.steps import Step
from django_bgtasks.testing import run_jobs
from django_bgtasks.workflows import WorkflowStatus
from tests import tasks

pytestmark = pytest.mark.django_db


def statuses(workflow) -> list[str]:
    return list(
        Job.objects.filter(workflow_id=workflow.id)
        .order_by("pk")
        .values_list("status", flat=True)
    )


def test_a_chain_hands_each_result_to_the_next_step():
    workflow = chain(
        tasks.add.step(1, 2), tasks.add.step(10), tasks.add.step(100)
    ).enqueue()
    assert statuses(workflow) == ["READY", "WAITING", "WAITING"]
    assert workflow.status == WorkflowStatus.READY

    run = run_jobs()

    assert [r.return_value for r in run] == [3, 13, 113]
    workflow.refresh()
    assert workflow.status == WorkflowStatus.SUCCESSFUL
    assert workflow.return_value == 113
    assert [m.args for m in workflow.members] == [[1, 2], [3, 10], [13, 100]]


def test_a_step_may_ignore_the_result_before_it():
    workflow = (tasks.add.step(1, 2) | tasks.add.step(5, 5).ignoring_result()).enqueue()
    run_jobs()
    workflow.refresh()
    assert [m.return_value for m in workflow.members] == [3, 10]


def test_a_chain_stops_at_a_failure_and_cancels_the_rest_with_its_reason():
    workflow = chain(
        tasks.add.step(1, 2),
        tasks.fails_at_once.step(),
        tasks.add.step(1),
        tasks.add.step(2),
    ).enqueue()
    run_jobs()
    workflow.refresh()
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "CANCELLED", "CANCELLED"]
    assert workflow.status == WorkflowStatus.FAILED
    third, fourth = workflow.members[2:]
    assert third.status == TaskResultStatus.FAILED
    assert third.errors[-1].exception_class_path.endswith("DependencyFailed")
    failed_id = workflow.members[1].id
    assert f"Job {failed_id}, which this job waited for, ended FAILED" in (
        third.errors[-1].traceback
    )
    assert str(third.id) in fourth.errors[-1].traceback  # it waited for the third
    assert Job.objects.get(pk=third.id).started_at is None  # never ran


def test_a_group_runs_side_by_side_and_a_step_after_it_takes_their_results():
    workflow = chain(
        group(tasks.add.step(1, 1), tasks.add.step(2, 2), tasks.add.step(3, 3)),
        tasks.total.step(extra=1000),
    ).enqueue()
    assert statuses(workflow) == ["READY", "READY", "READY", "WAITING"]
    run_jobs()
    workflow.refresh()
    assert workflow.status == WorkflowStatus.SUCCESSFUL
    assert workflow.members[-1].args == [[2, 4, 6]]
    assert workflow.return_value == 1012


def test_a_group_alone_is_a_workflow_whose_results_read_together():
    workflow = group(tasks.add.step(n, n) for n in range(5)).enqueue()
    run_jobs()
    workflow.refresh()
    assert workflow.return_value == [0, 2, 4, 6, 8]


def test_a_chord_runs_its_callback_once_with_the_results_in_order():
    workflow = chord(
        [tasks.add.step(n, 0) for n in range(10)], tasks.total.step()
    ).enqueue()
    # Run the members in reverse order: the list keeps the header's order.
    members = Job.objects.filter(workflow_id=workflow.id, status="READY")
    for n, pk in enumerate(members.order_by("-pk").values_list("pk", flat=True)):
        Job.objects.filter(pk=pk).update(priority=n)
    run_jobs()
    callback = Job.objects.get(workflow_id=workflow.id, has_dependents=False)
    assert callback.args == [list(range(10))]
    assert callback.return_value == 45
    assert callback.attempts == 1


def test_a_chord_cancels_its_callback_when_a_member_fails_by_default():
    workflow = chord(
        [tasks.add.step(1, 1), tasks.fails_at_once.step()], tasks.total.step()
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "CANCELLED"]


def test_a_chord_may_run_its_callback_whatever_its_members_did():
    workflow = chord(
        [tasks.add.step(1, 1), tasks.fails_at_once.step(), tasks.add.step(2, 2)],
        tasks.echo.step(),
        on_failure="run",
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "SUCCESSFUL", "SUCCESSFUL"]
    workflow.refresh()
    assert workflow.members[-1].args == [[2, None, 4]]
    assert workflow.status == WorkflowStatus.FAILED  # a member failed


def test_workflows_compose():
    # a -> (b -> c | d) -> chord(e, f -> total) -> echo
    workflow = chain(
        tasks.add.step(1, 1),
        group(chain(tasks.add.step(1), tasks.add.step(1)), tasks.add.step(10)),
        tasks.total.step(),
        chord([tasks.add.step(0), tasks.add.step(100)], tasks.total.step()),
        tasks.echo.step(),
    ).enqueue()
    run_jobs()
    workflow.refresh()
    assert workflow.status == WorkflowStatus.SUCCESSFUL
    # a=2; b=3, c=4, d=12; total=16; chord members 16, 116: 132.
    assert [m.return_value for m in workflow.members[:-1]] == [
        2, 3, 4, 12, 16, 16, 116, 132,
    ]  # fmt: skip
    assert workflow.return_value == {"args": [132], "kwargs": {}}


def test_a_failure_inside_a_group_cancels_what_comes_after_the_group_only():
    workflow = chain(
        group(
            chain(tasks.add.step(1, 1), tasks.add.step(1)), tasks.fails_at_once.step()
        ),
        tasks.total.step(),
        tasks.add.step(1),
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == [
        "SUCCESSFUL", "SUCCESSFUL", "FAILED", "CANCELLED", "CANCELLED",
    ]  # fmt: skip


def test_enqueueing_writes_every_row_in_a_fixed_number_of_statements():
    steps = [tasks.add.step(n, n) for n in range(50)]
    with CaptureQueriesContext(connection) as queries:
        workflow = chord(steps, tasks.total.step()).enqueue()
    writes = [
        q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("INSERT")
    ]
    if connection.vendor == "postgresql":
        assert len(writes) == 2, writes  # the jobs, then the edges
    elif connection.features.can_return_rows_from_bulk_insert:
        # In batches of as many rows as the driver takes parameters.
        assert 2 <= len(writes) <= 4, writes
    assert Job.objects.filter(workflow_id=workflow.id).count() == 51
    assert JobDependency.objects.filter(job__workflow_id=workflow.id).count() == 50


def test_a_workflow_is_written_in_the_callers_transaction():
    with pytest.raises(RuntimeError), transaction.atomic():
        workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
        assert Job.objects.filter(workflow_id=workflow.id).count() == 2
        raise RuntimeError("roll back")
    assert not Job.objects.filter(workflow_id=workflow.id).exists()
    assert not JobDependency.objects.exists()


def test_nothing_is_written_if_one_step_is_invalid():
    with pytest.raises(InvalidTaskArguments, match="Step 1"):
        chain(tasks.add.step(1, 2), tasks.add.step(object())).enqueue()
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: chain(), "at least one part"),
        (lambda: group([]), "at least one part"),
        (lambda: chain(tasks.add), "task.step"),
        (lambda: chain(tasks.add.step(1), 5), "not 5"),
        (
            lambda: chord([tasks.add.step(1)], tasks.add.step(), on_failure="x"),
            "on_failure",
        ),
        (lambda: Step(tasks.add, "ab"), "sequence"),
    ],
)
def test_a_malformed_workflow_is_refused_with_a_clear_error(make, message):
    with pytest.raises(InvalidTask, match=message):
        make()


def test_unique_steps_and_steps_deleted_on_success_are_refused():
    with pytest.raises(InvalidTask, match="unique"):
        chain(tasks.add.step(1, 1), tasks.unique_while_active.step(1)).enqueue()
    with pytest.raises(InvalidTask, match="deletes its job"):
        group(tasks.add.step(1, 1), tasks.deleted_on_success.step()).enqueue()
    assert not Job.objects.exists()


def test_pruning_a_step_deletes_its_edges_and_keeps_those_it_is_handed():
    workflow = chord(
        [tasks.add.step(1, 1), tasks.add.step(2, 2)], tasks.total.step()
    ).enqueue()
    first, second, callback = (int(m.id) for m in workflow.members)
    run_jobs(limit=2)
    # The members are long finished; the callback still waits for its run.
    Job.objects.filter(pk__in=[first, second]).update(
        finished_at=timezone.now() - timedelta(days=400)
    )
    prune_finished_jobs()
    assert not Job.objects.filter(pk__in=[first, second]).exists()
    assert JobDependency.objects.filter(job_id=callback).count() == 2
    run_jobs()
    assert Job.objects.get(pk=callback).return_value == 6
    Job.objects.filter(pk=callback).update(
        finished_at=timezone.now() - timedelta(days=400)
    )
    prune_finished_jobs()
    assert not JobDependency.objects.exists()


def test_a_workflow_is_cancelled_as_a_whole():
    workflow = chain(
        tasks.add.step(1, 2), tasks.add.step(3), tasks.add.step(4)
    ).enqueue()
    run_jobs(limit=1)
    assert workflow.cancel() == 2
    assert statuses(workflow) == ["SUCCESSFUL", "CANCELLED", "CANCELLED"]
    assert workflow.status == WorkflowStatus.CANCELLED
    assert run_jobs() == []


def test_an_operators_cancel_of_one_step_cancels_the_steps_after_it():
    workflow = chain(
        tasks.add.step(1, 2), tasks.add.step(3), tasks.add.step(4)
    ).enqueue()
    first = workflow.members[0].id
    assert Job.objects.filter(pk=first).cancel() == 1
    assert statuses(workflow) == ["CANCELLED", "CANCELLED", "CANCELLED"]


def test_a_workflow_is_found_again_by_its_id():
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    again = get_workflow(workflow.id)
    assert [m.id for m in again.members] == [m.id for m in workflow.members]
    assert again.status == WorkflowStatus.READY
    run_jobs(limit=1)
    again.refresh()
    assert again.status == WorkflowStatus.RUNNING
    with pytest.raises(LookupError):
        get_workflow(uuid.uuid4())
    with pytest.raises(LookupError):
        get_workflow("not an id")


def test_a_waiting_step_reads_as_ready_to_the_framework():
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    second = tasks.add.get_result(workflow.members[1].id)
    assert second.status == TaskResultStatus.READY


def test_a_retried_step_releases_the_next_only_when_it_succeeds():
    workflow = chain(tasks.fails_until_attempt.step(2), tasks.echo.step()).enqueue()
    run_jobs(limit=1)  # the first attempt fails, and is retried
    assert statuses(workflow) == ["READY", "WAITING"]
    run_jobs(now=timezone.now() + timedelta(hours=1))
    assert statuses(workflow) == ["SUCCESSFUL", "SUCCESSFUL"]
    workflow.refresh()
    assert workflow.members[1].args == [2]


# An operator's retry -----------------------------------------------------------


def test_retrying_a_failed_step_resumes_the_chain_after_it():
    workflow = chain(
        tasks.add.step(1, 2), tasks.fails_at_once.step(), tasks.add.step(1)
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "CANCELLED"]
    failed = int(workflow.members[1].id)
    # The failing step is fixed (here: its task swapped for one that works).
    Job.objects.filter(pk=failed).update(task_path=tasks.add.module_path, args=[3, 4])

    assert Job.objects.filter(pk=failed).retry() == 1

    assert statuses(workflow) == ["SUCCESSFUL", "READY", "WAITING"]
    run_jobs()
    workflow.refresh()
    assert workflow.status == WorkflowStatus.SUCCESSFUL
    assert workflow.members[2].args == [7, 1]  # handed the new run's result, once


def test_retrying_a_step_cancelled_by_a_failure_waits_for_that_failure():
    workflow = chain(tasks.fails_at_once.step(), tasks.add.step(1)).enqueue()
    run_jobs()
    second = Job.objects.filter(pk=workflow.members[1].id)
    # Its predecessor failed: retrying it alone cannot run it.
    assert second.retry() == 0
    assert statuses(workflow) == ["FAILED", "CANCELLED"]


def test_retrying_a_step_cancelled_while_it_waited_takes_what_it_is_handed():
    workflow = chain(tasks.add.step(1, 2), tasks.add.step(10)).enqueue()
    second = Job.objects.filter(pk=workflow.members[1].id)
    assert second.cancel() == 1
    run_jobs()
    assert statuses(workflow) == ["SUCCESSFUL", "CANCELLED"]
    assert second.retry() == 1
    run_jobs()
    workflow.refresh()
    assert workflow.members[1].return_value == 13


def test_retrying_a_chords_failed_member_hands_its_new_result_to_the_callback():
    workflow = chord(
        [tasks.add.step(1, 1), tasks.fails_at_once.step()],
        tasks.echo.step(),
        on_failure="run",
    ).enqueue()
    run_jobs(limit=1)  # the first member; the second fails next
    failing = int(workflow.members[1].id)
    run_jobs(limit=1)
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "READY"]
    # The callback is READY (it runs whatever they did): a retry of the
    # member now does not take it back.
    Job.objects.filter(pk=failing).update(task_path=tasks.add.module_path, args=[2, 2])
    Job.objects.filter(pk=failing).retry()
    run_jobs()
    workflow.refresh()
    assert workflow.members[2].args == [[2, None]]


def test_retrying_a_chords_failed_member_reopens_its_cancelled_callback():
    workflow = chain(
        chord([tasks.add.step(1, 1), tasks.fails_at_once.step()], tasks.total.step()),
        tasks.add.step(1000),
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "CANCELLED", "CANCELLED"]
    failing = Job.objects.filter(pk=workflow.members[1].id)
    failing.update(task_path=tasks.add.module_path, args=[5, 5])
    assert failing.retry() == 1
    assert statuses(workflow) == ["SUCCESSFUL", "READY", "WAITING", "WAITING"]
    run_jobs()
    workflow.refresh()
    assert workflow.status == WorkflowStatus.SUCCESSFUL
    assert workflow.members[2].args == [[2, 10]]
    assert workflow.return_value == 1012


def test_a_workflow_has_a_return_value_once_it_succeeded():
    workflow = chain(tasks.add.step(1, 2), tasks.fails_at_once.step()).enqueue()
    with pytest.raises(ValueError, match="READY"):
        _ = workflow.return_value
    run_jobs()
    workflow.refresh()
    with pytest.raises(ValueError, match="FAILED"):
        _ = workflow.return_value


def test_a_chain_of_pipes_is_flat():
    # Longer than the interpreter's recursion limit (1,000 by default): a
    # chain nested a level per pipe could not be made, enqueued or run.
    length = sys.getrecursionlimit() + 100
    steps = [tasks.add.step(1)] * length
    piped = tasks.add.step(0, 0)
    for step in steps:
        piped = piped | step
    assert len(piped.parts) == length + 1
    workflow = piped.enqueue()
    run_jobs()
    workflow.refresh()
    assert workflow.return_value == length


def test_a_failure_before_a_chord_that_runs_whatever_cancels_it_too():
    workflow = chain(
        tasks.fails_at_once.step(),
        chord(
            [tasks.add.step(1), tasks.add.step(2)], tasks.echo.step(), on_failure="run"
        ),
        tasks.add.step(100),
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == ["FAILED", *["CANCELLED"] * 4]


def test_a_chord_that_runs_whatever_runs_after_a_failure_inside_a_member():
    workflow = chord(
        [chain(tasks.fails_at_once.step(), tasks.add.step(1)), tasks.add.step(2, 2)],
        tasks.echo.step(),
        on_failure="run",
    ).enqueue()
    run_jobs()
    assert statuses(workflow) == ["FAILED", "CANCELLED", "SUCCESSFUL", "SUCCESSFUL"]
    workflow.refresh()
    assert workflow.members[-1].args == [[None, 4]]


def test_retrying_two_failed_members_one_at_a_time_runs_the_step_after_them():
    workflow = chain(
        group(tasks.fails_at_once.step(), tasks.fails_at_once.step()),
        tasks.total.step(),
    ).enqueue()
    run_jobs()
    first, second, after = (Job.objects.filter(pk=m.id) for m in workflow.members)
    for n, member in enumerate((first, second)):
        member.update(task_path=tasks.add.module_path, args=[n, 10])
    assert first.retry() == 1
    run_jobs()
    # The other failure still stops it...
    assert statuses(workflow) == ["SUCCESSFUL", "FAILED", "CANCELLED"]
    assert second.retry() == 1
    run_jobs()
    # ...until it is retried too.
    assert statuses(workflow) == ["SUCCESSFUL"] * 3
    assert after.get().args == [[10, 11]]


def test_retrying_a_step_does_not_reopen_a_step_an_operator_cancelled():
    workflow = chain(tasks.fails_at_once.step(), tasks.add.step(1)).enqueue()
    first, second = (Job.objects.filter(pk=m.id) for m in workflow.members)
    assert second.cancel() == 1
    run_jobs()
    first.update(task_path=tasks.add.module_path, args=[1, 1])
    assert first.retry() == 1
    run_jobs()
    assert statuses(workflow) == ["SUCCESSFUL", "CANCELLED"]


def test_retry_and_cancel_change_many_jobs_in_one_statement_outside_workflows():
    tasks.add.enqueue_many(((n, n), {}) for n in range(3000))
    with CaptureQueriesContext(connection) as queries:
        assert Job.objects.all().cancel() == 3000
    updates = [q for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    # The jobs, SQLite's write lock, and the stop request of running ones.
    assert len(updates) <= 3
    assert Job.objects.all().retry() == 3000
