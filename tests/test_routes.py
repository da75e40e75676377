"""Routes (``BGTASKS["ROUTES"]``): an operator moves tasks to another queue
or priority from the settings; a call's ``.using()`` still wins; the job
records the route; a route no backend can follow is a check error."""

from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from django_bgtasks import chain
from django_bgtasks.compat import InvalidTask
from django_bgtasks.models import Job
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.settings import BGTASKS

pytestmark = pytest.mark.django_db


def routed(routes):
    return override_settings(BGTASKS={**BGTASKS, "ROUTES": routes})


def job_of(result) -> Job:
    return Job.objects.get(pk=result.id)


def test_a_route_moves_a_tasks_jobs_to_its_queue_and_priority():
    with routed({"tests.tasks.add": {"queue_name": "images", "priority": 7}}):
        result = tasks.add.enqueue(1, 2)
    job = job_of(result)
    assert (job.queue_name, job.priority, job.route) == ("images", 7, "tests.tasks.add")
    # The result's task is the task as routed.
    assert (result.task.queue_name, result.task.priority) == ("images", 7)
    # Without the route, where the code says.
    plain = job_of(tasks.add.enqueue(1, 2))
    assert (plain.queue_name, plain.priority, plain.route) == ("default", 0, "")


def test_the_first_matching_pattern_routes_over_the_tasks_own_options():
    routes = {
        "tests.tasks.in_other_*": {"queue_name": "images"},
        "tests.tasks.*": {"priority": 9},
    }
    with routed(routes):
        other = job_of(tasks.in_other_queue.enqueue())  # @task(queue "other", 5)
        echo = job_of(tasks.echo.enqueue("x"))
    assert (other.queue_name, other.priority, other.route) == (
        "images",
        5,
        "tests.tasks.in_other_*",
    )
    assert (echo.queue_name, echo.priority, echo.route) == (
        "default",
        9,
        "tests.tasks.*",
    )


def test_an_option_the_call_chose_wins_over_the_route():
    with routed({"tests.tasks.add": {"queue_name": "images", "priority": 7}}):
        queue_chosen = job_of(tasks.add.using(queue_name="other").enqueue(1, 2))
        both_chosen = job_of(
            tasks.add.using(priority=1).using(queue_name="other").enqueue(1, 2)
        )
        run_after_only = job_of(tasks.add.using(max_attempts=5).enqueue(1, 2))
    assert (queue_chosen.queue_name, queue_chosen.priority) == ("other", 7)
    assert queue_chosen.route == "tests.tasks.add"
    assert (both_chosen.queue_name, both_chosen.priority) == ("other", 1)
    assert both_chosen.route == ""  # the route set nothing
    assert (run_after_only.queue_name, run_after_only.priority) == ("images", 7)


def test_bulk_enqueues_and_workflows_are_routed_too():
    with routed({"tests.tasks.add": {"queue_name": "images"}}):
        many = tasks.add.enqueue_many([((1, 2), {}), ((3, 4), {})])
        workflow = chain(tasks.add.step(1, 2), tasks.add.step(3)).enqueue()
    jobs = [job_of(r) for r in many] + [job_of(m) for m in workflow.members]
    assert {(job.queue_name, job.route) for job in jobs} == {
        ("images", "tests.tasks.add")
    }
    # And run from there, as a worker of that queue runs them.
    assert [r.return_value for r in run_jobs(queues=["images"])][:2] == [3, 7]


def test_a_route_to_a_queue_the_backend_does_not_accept_is_refused():
    route = {"tests.tasks.add": {"queue_name": "nowhere"}}
    with routed(route):
        with pytest.raises(InvalidTask, match="does not accept"):
            tasks.add.enqueue(1, 2)
        errors = [e for e in run_checks() if e.id == "bgtasks.E014"]
    assert Job.objects.count() == 0
    assert ["no django_bgtasks backend accepts" in e.msg for e in errors] == [True]


@pytest.mark.parametrize(
    "routes, message",
    [
        (["tests.tasks.add"], "must be a dict"),
        ({"tests.tasks.add": {}}, "give a dict of"),
        ({"tests.tasks.add": {"queue": "images"}}, "not queue"),
        ({"tests.tasks.add": {"priority": 1000}}, "priority is a whole number"),
        ({"tests.tasks.add": {"priority": "1"}}, "priority is a whole number"),
        ({"tests.tasks.add": {"queue_name": ""}}, "queue_name is a name"),
        ({"": {"priority": 1}}, "pattern"),
    ],
)
def test_the_checks_refuse_routes_that_are_not_routes(routes, message):
    with routed(routes):
        errors = [e for e in run_checks() if e.id == "bgtasks.E014"]
    assert len(errors) == 1 and message in errors[0].msg, errors


def test_a_valid_route_passes_the_checks():
    with routed({"tests.tasks.*": {"queue_name": "other", "priority": -5}}):
        assert [e for e in run_checks() if e.id == "bgtasks.E014"] == []


def test_a_schedules_jobs_go_where_the_schedule_says():
    """A schedule's row names its queue and priority, as a call's .using()
    does: a route leaves them alone."""
    from django_bgtasks.models import Schedule

    schedule = Schedule.objects.create(
        name="tick", task_path="tests.tasks.add", args=[1, 2],
        interval=timedelta(minutes=1),
        queue_name="other", priority=3,
    )  # fmt: skip
    with routed({"tests.tasks.add": {"queue_name": "images", "priority": 7}}):
        job = job_of(schedule.run_now())
    assert (job.queue_name, job.priority, job.route) == ("other", 3, "")
