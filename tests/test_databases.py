"""Queues on several databases: a backend keeps its jobs in the database its
OPTIONS["DATABASE"] (or the routers) name; enqueue, results, workflows,
routes, schedules, checks and workers follow it. The "elsewhere" backend
(tests/settings.py) keeps its jobs in the second test database, "other"."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_bgtasks import chain
from django_bgtasks.compat import TaskResultStatus, task_backends
from django_bgtasks.databases import database_backends, job_databases
from django_bgtasks.maintenance.schedule_sync import sync_schedules
from django_bgtasks.maintenance.scheduler import fire_due_schedules
from django_bgtasks.models import Job, JobDependency, JobStatus, Schedule, WorkerProcess
from django_bgtasks.testing import assert_enqueued, enqueued
from tests import tasks
from tests.conftest import (
    BOTH_DATABASES,
    ELSEWHERE_ENV,
    requires_postgresql,
    requires_server_database,
    run_in_process,
    wait_until,
)
from tests.factories import make_job
from tests.settings import BGTASKS, ELSEWHERE_BACKEND, TASKS

pytestmark = pytest.mark.django_db(databases=BOTH_DATABASES)


def jobs_in(database: str):
    return Job.objects.using(database)


def test_a_backend_keeps_its_jobs_in_its_database(elsewhere):
    assert task_backends[elsewhere].database == "other"
    assert database_backends() == {"default": ("default",), "other": (elsewhere,)}
    assert job_databases() == ["default", "other"]

    result = tasks.add.using(backend=elsewhere).enqueue(1, 2)
    here = tasks.add.enqueue(3, 4)

    assert list(jobs_in("other").values_list("backend", "args")) == [
        (elsewhere, [1, 2])
    ]
    assert list(jobs_in("default").values_list("backend", "args")) == [
        ("default", [3, 4])
    ]
    # Results are read where the jobs are.
    assert result.backend == elsewhere
    assert task_backends[elsewhere].get_result(result.id).args == [1, 2]
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert here.task.get_backend().get_result(here.id).args == [3, 4]


def test_bulk_enqueues_and_workflows_are_written_to_the_backends_database(
    elsewhere,
):
    add = tasks.add.using(backend=elsewhere)
    results = add.enqueue_many([((n, n), {}) for n in range(5)])
    workflow = chain(add.step(1, 1), add.step(2, 2)).enqueue()

    assert {r.backend for r in results} == {elsewhere}
    assert jobs_in("other").count() == 7
    assert JobDependency.objects.using("other").count() == 1
    assert not jobs_in("default").exists()
    workflow.refresh()
    assert len(workflow.members) == 2


def test_an_enqueue_to_another_database_is_not_in_the_callers_transaction(
    elsewhere,
):
    """The caller's transaction is on its data's database: a job in
    another database commits on its own (documented). A transaction on
    the jobs' database holds it as usual."""
    add = tasks.add.using(backend=elsewhere)
    with pytest.raises(RuntimeError), transaction.atomic():
        add.enqueue(1, 1)
        raise RuntimeError("the caller's transaction rolls back")
    assert jobs_in("other").count() == 1

    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        add.enqueue(2, 2)
        raise RuntimeError("the jobs' database's transaction rolls back")
    assert jobs_in("other").count() == 1


class JobsByBackend:
    """A router that sends the jobs of backend "routed" to database "other",
    by the ``backend`` hint, and everything else to "default"."""

    def db_for_write(self, model, **hints):
        return "other" if hints.get("backend") == "routed" else None

    db_for_read = db_for_write

    def allow_migrate(self, db, app_label, **hints):
        return None


def test_without_a_database_option_the_routers_choose_by_the_backend_hint(
    settings,
):
    settings.DATABASE_ROUTERS = [f"{__name__}.JobsByBackend"]
    settings.TASKS = {
        **TASKS,
        "routed": {"BACKEND": "django_bgtasks.backend.DatabaseBackend"},
    }
    assert task_backends["routed"].database == "other"
    assert task_backends["default"].database == "default"
    tasks.add.using(backend="routed").enqueue(1, 2)
    assert jobs_in("other").get().backend == "routed"


@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_a_worker_process_runs_the_jobs_of_its_database(elsewhere):
    there = tasks.add.using(backend=elsewhere).enqueue(1, 2)
    here = tasks.add.enqueue(3, 4)

    run_in_process(databases=("other",))

    job = jobs_in("other").get(pk=there.id)
    assert (job.status, job.return_value) == (JobStatus.SUCCESSFUL, 3)
    assert jobs_in("default").get(pk=here.id).status == JobStatus.READY
    # Its row is in the database it serves.
    assert not WorkerProcess.objects.using("default").exists()


@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_a_worker_process_serves_one_database(elsewhere):
    with pytest.raises(ValueError, match="serves one database"):
        run_in_process()  # both databases hold jobs
    with pytest.raises(ValueError, match="No jobs are kept in database 'nowhere'"):
        run_in_process(databases=("nowhere",))


@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_a_job_in_another_database_than_its_backends_fails_alone(elsewhere):
    """A row written around the API into the wrong database: its result
    would never be read where its backend looks. It fails, saying so; the
    other jobs run."""
    stray = make_job(using="other")  # of backend "default"
    fine = tasks.add.using(backend=elsewhere).enqueue(2, 2)

    run_in_process(databases=("other",))

    stray.refresh_from_db()
    assert stray.status == JobStatus.FAILED
    assert "keeps its jobs in database 'default'" in stray.errors[-1]["traceback"]
    assert jobs_in("other").get(pk=fine.id).status == JobStatus.SUCCESSFUL


def routed(routes):
    return override_settings(BGTASKS={**BGTASKS, "ROUTES": routes})


def test_a_route_moves_a_task_to_another_backend_and_its_database(elsewhere):
    with routed({"tests.tasks.echo": {"backend": elsewhere}}):
        result = tasks.echo.enqueue("hi")
        many = tasks.echo.enqueue_many([(("a",), {}), (("b",), {})])
        # The call's own choice wins.
        chosen = tasks.echo.using(backend="default").enqueue("here")

    assert result.backend == elsewhere
    assert {r.backend for r in many} == {elsewhere}
    job = jobs_in("other").get(pk=result.id)
    assert (job.backend, job.route) == (elsewhere, "tests.tasks.echo")
    assert jobs_in("other").count() == 3
    assert jobs_in("default").get(pk=chosen.id).route == ""


def test_the_checks_refuse_a_route_to_a_backend_that_is_not_one(elsewhere):
    with routed({"tests.tasks.echo": {"backend": "nowhere"}}):
        errors = [e for e in run_checks() if e.id == "bgtasks.E014"]
    assert len(errors) == 1
    assert "backend 'nowhere'" in errors[0].msg
    with routed({"tests.tasks.echo": {"backend": elsewhere, "queue_name": "images"}}):
        errors = [e for e in run_checks() if e.id == "bgtasks.E014"]
    assert ["queue 'images'" in e.msg for e in errors] == [True]
    with routed({"tests.tasks.echo": {"backend": elsewhere, "queue_name": "heavy"}}):
        assert not [e for e in run_checks() if e.id == "bgtasks.E014"]


class NoMigrations:
    def allow_migrate(self, db, app_label, **hints):
        return False if db == "other" else None


@pytest.mark.parametrize(
    "options, message",
    [
        ({"DATABASE": "nowhere"}, "'nowhere' is not in DATABASES"),
        ({"DATABASE": "other"}, "do not let django_bgtasks migrate"),
    ],
)
def test_the_checks_refuse_a_backend_database_that_cannot_hold_jobs(
    settings, options, message
):
    settings.TASKS = {**TASKS, "elsewhere": {**ELSEWHERE_BACKEND, "OPTIONS": options}}
    settings.DATABASE_ROUTERS = [f"{__name__}.NoMigrations"]
    errors = [e for e in run_checks() if e.id == "bgtasks.E015"]
    assert len(errors) == 1
    assert message in errors[0].msg
    assert "'elsewhere'" in errors[0].msg


def test_a_schedule_lives_beside_its_jobs(elsewhere, settings):
    """A declared schedule is synced into the database of its task's
    backend (as routes give it), and fires its jobs there."""
    settings.BGTASKS = {
        **BGTASKS,
        "SCHEDULES": {"tick": {"task": "tests.tasks.echo", "interval": 60}},
        "ROUTES": {"tests.tasks.echo": {"backend": elsewhere}},
    }
    assert sync_schedules(using="default").created == []
    assert sync_schedules(using="other").created == ["tick"]
    schedule = Schedule.objects.using("other").get(name="tick")

    later = timezone.now() + timedelta(minutes=2)
    assert fire_due_schedules(using="other", now=later) == 1
    job = jobs_in("other").get()
    assert (job.schedule_id, job.backend) == (schedule.pk, elsewhere)

    # Moved back to its own backend: disabled there, made here.
    settings.BGTASKS = {**settings.BGTASKS, "ROUTES": {}}
    assert sync_schedules(using="other").disabled == ["tick"]
    assert sync_schedules(using="default").created == ["tick"]


def test_sync_schedules_syncs_every_database(elsewhere, settings, capsys):
    settings.BGTASKS = {
        **BGTASKS,
        "SCHEDULES": {
            "here": {"task": "tests.tasks.add", "interval": 60, "args": [1, 1]},
            "there": {"task": "tests.tasks.echo", "interval": 60},
        },
        "ROUTES": {"tests.tasks.echo": {"backend": elsewhere}},
    }
    call_command("sync_schedules")
    out = capsys.readouterr().out
    assert "Created in default: here" in out
    assert "Created in other: there" in out
    assert Schedule.objects.using("other").get().name == "there"
    with pytest.raises(CommandError, match="No jobs are kept in database 'nowhere'"):
        call_command("sync_schedules", "--database", "nowhere")


def test_runworker_over_several_databases_refuses_max_jobs(elsewhere):
    with pytest.raises(CommandError, match="use --max-jobs-per-child"):
        call_command("runworker", "--max-jobs", "5", "--burst")


def test_runworker_refuses_an_unknown_database():
    with pytest.raises(CommandError, match="No jobs are kept in database 'nowhere'"):
        call_command("runworker", "--databases", "nowhere", "--burst")


@pytest.mark.slow
@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_one_runworker_serves_every_database_with_a_process_each(elsewhere, workers):
    """With jobs in two databases, ``runworker`` runs a supervisor with a
    process for each: every job of both runs once, on its database's
    worker."""
    there = tasks.add.using(backend=elsewhere).enqueue_many(
        [((n, 1), {}) for n in range(30)]
    )
    here = tasks.add.enqueue_many([((n, 2), {}) for n in range(30)])

    code, output = workers.run("--burst", "--concurrency", "2", env=ELSEWHERE_ENV)

    assert code == 0, output
    assert "databases:" in output
    for database, results in (("other", there), ("default", here)):
        jobs = jobs_in(database).filter(pk__in=[r.id for r in results])
        assert {j.status for j in jobs} == {JobStatus.SUCCESSFUL}
        assert {j.attempts for j in jobs} == {1}
        # One worker process a database, each its own.
        assert len({j.worker_ids[0] for j in jobs}) == 1
    [worker_there] = {j.worker_ids[0] for j in jobs_in("other")}
    [worker_here] = {j.worker_ids[0] for j in jobs_in("default")}
    assert worker_there != worker_here


@pytest.mark.slow
@requires_postgresql
@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_the_supervisor_wakes_each_databases_processes(elsewhere, workers):
    """One LISTEN per database in the supervisor: a job enqueued into
    either database starts long before the processes' 60 s poll."""
    process = workers.start("--poll-interval", "60", env=ELSEWHERE_ENV)
    for database in BOTH_DATABASES:
        wait_until(
            lambda database=database: WorkerProcess.objects.using(database).exists(),
            timeout=30,
            message=f"a worker registered in {database}",
        )
    there = tasks.add.using(backend=elsewhere).enqueue(1, 1)
    here = tasks.add.enqueue(2, 2)
    for database, result in (("other", there), ("default", here)):
        wait_until(
            lambda database=database, result=result: (
                jobs_in(database)
                .filter(pk=result.id, status=JobStatus.SUCCESSFUL)
                .exists()
            ),
            timeout=20,
            message=f"the job in {database} to run",
        )
    assert process.poll() is None, workers.output(process)


@pytest.mark.slow
@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_a_worker_serves_the_gauges_of_its_own_databases(elsewhere, workers):
    """``--metrics-port`` of a worker of one database: that database's
    gauges, labelled with it; none of the other's."""
    pytest.importorskip("prometheus_client")
    from tests.test_metrics import free_port, served

    port = free_port()
    workers.start(
        "--databases", "other", "--metrics-port", str(port), env=ELSEWHERE_ENV
    )  # fmt: skip
    samples = wait_until(
        lambda: (
            (s := served(port))
            and ("bgtasks_database_up", (("database", "other"),)) in s
            and s
        ),
        timeout=60,
        message="the metrics served",
    )
    databases = {
        dict(labels).get("database")
        for (name, labels) in samples
        if name.startswith("bgtasks_") and "database" in dict(labels)
    }
    assert databases == {"other"}


def test_a_route_to_another_backend_leaves_a_job_kept_here_alone(elsewhere):
    """Kept on its own backend (the call chose it, or it is a workflow's
    step), a job takes none of a route to another backend: not its queue
    (which this backend may not even accept), not its name."""
    route = {"tests.tasks.echo": {"backend": elsewhere, "queue_name": "heavy"}}
    with routed(route):
        kept = tasks.echo.using(backend="default").enqueue("here")
        workflow = chain(tasks.echo.step("a"), tasks.echo.step("b")).enqueue()
        moved = tasks.echo.enqueue("there")
    job = jobs_in("default").get(pk=kept.id)
    assert (job.queue_name, job.route) == ("default", "")
    steps = jobs_in("default").filter(workflow_id=workflow.id)
    assert {(j.queue_name, j.route) for j in steps} == {("default", "")}
    job = jobs_in("other").get(pk=moved.id)
    assert (job.queue_name, job.route) == ("heavy", "tests.tasks.echo")


def test_a_schedules_queue_is_checked_against_the_backend_its_jobs_go_to(
    elsewhere,
):
    with routed({"tests.tasks.echo": {"backend": elsewhere}}):
        schedule = Schedule(
            name="s", task_path="tests.tasks.echo", interval=timedelta(60)
        )
        schedule.queue_name = "images"  # the default backend's, not elsewhere's
        with pytest.raises(ValidationError) as refused:
            schedule.full_clean()
        assert "queue_name" in refused.value.message_dict
        schedule.queue_name = "heavy"
        schedule.full_clean()


class EverythingInDefault:
    """A router that answers for every model without looking at hints (as
    many projects' do), which would win over an object's own database."""

    def db_for_write(self, model, **hints):
        return "default"

    db_for_read = db_for_write


def test_rows_are_saved_where_they_were_read_whatever_the_routers_say(
    elsewhere, settings
):
    settings.DATABASE_ROUTERS = [f"{__name__}.EverythingInDefault"]
    schedule = Schedule(
        name="tick",
        task_path="tests.tasks.add",
        interval=timedelta(seconds=60),
        args=[1, 1],
    )
    schedule.reschedule(now=timezone.now() - timedelta(minutes=2))
    schedule.save(using="other")
    settings.BGTASKS = {
        **BGTASKS,
        "ROUTES": {"tests.tasks.add": {"backend": elsewhere}},
    }

    assert fire_due_schedules(using="other") == 1

    fired = Schedule.objects.using("other").get()
    assert fired.total_run_count == 1 and fired.last_error == ""
    assert not Schedule.objects.using("default").exists()
    fired.disable()
    assert not Schedule.objects.using("other").get().enabled


def test_the_testing_helpers_follow_a_route_to_another_database(elsewhere):
    with routed({"tests.tasks.echo": {"backend": elsewhere}}):
        tasks.echo.enqueue("x")
        assert [job.args for job in enqueued(tasks.echo)] == [["x"]]
        assert_enqueued(tasks.echo, args=["x"])


def test_a_backend_database_not_in_databases_stops_runworker_with_the_check(
    settings,
):
    settings.TASKS = {
        **TASKS,
        "elsewhere": {**ELSEWHERE_BACKEND, "OPTIONS": {"DATABASE": "nowhere"}},
    }
    with pytest.raises(CommandError, match=r"bgtasks\.E015"):
        call_command("runworker", "--burst")


@pytest.mark.slow
@requires_server_database
@pytest.mark.django_db(databases=BOTH_DATABASES, transaction=True)
def test_a_database_that_is_down_holds_up_only_its_own_workers(elsewhere, workers):
    """The supervisor syncs schedules and listens per database, each on its
    own thread: with "other" not there at all, the jobs of "default" run."""
    here = tasks.add.enqueue_many([((n, 2), {}) for n in range(10)])
    process = workers.start(
        "--concurrency", "2",
        env={**ELSEWHERE_ENV, "BGTASKS_TEST_OTHER_NAME": "bgtasks_not_there"},
    )  # fmt: skip
    wait_until(
        lambda: (
            jobs_in("default")
            .filter(pk__in=[r.id for r in here], status=JobStatus.SUCCESSFUL)
            .count()
            == 10
        ),
        timeout=30,
        message="default's jobs run",
    )
    assert process.poll() is None, workers.output(process)
