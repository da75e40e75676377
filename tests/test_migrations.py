"""The migrations' database-specific parts."""

import importlib

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from django_bgtasks.models import Job, Schedule

AUTOVACUUM = importlib.import_module(
    "django_bgtasks.migrations.0002_postgresql_autovacuum"
).AUTOVACUUM

APP = "django_bgtasks"
pytestmark = pytest.mark.django_db(transaction=True)


def table_options() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
            [Job._meta.db_table],
        )
        return set(cursor.fetchone()[0] or [])


def test_the_job_table_gets_its_autovacuum_settings_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    expected = {f"{name}={value}" for name, value in AUTOVACUUM.items()}
    assert table_options() == expected
    try:
        call_command("migrate", APP, "0001", verbosity=0)
        assert table_options() == set()
    finally:
        call_command("migrate", APP, verbosity=0)
    assert table_options() == expected


def applied() -> set[str]:
    recorder = MigrationRecorder(connection)
    return {name for app, name in recorder.applied_migrations() if app == APP}


def test_other_databases_apply_and_unapply_it_as_a_no_op():
    if connection.vendor == "postgresql":
        pytest.skip("not PostgreSQL")
    try:
        call_command("migrate", APP, "0001", verbosity=0)
        assert applied() == {"0001_initial"}
    finally:
        call_command("migrate", APP, verbosity=0)
    assert {"0001_initial", "0002_postgresql_autovacuum"} <= applied()


def index_definitions() -> dict[str, str]:
    """The job table's index definitions (PostgreSQL and SQLite)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                [Job._meta.db_table],
            )
        else:
            cursor.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = %s AND sql IS NOT NULL",
                [Job._meta.db_table],
            )
        return dict(cursor.fetchall())


def test_a_new_job_writes_only_the_ready_indexes_where_indexes_can_be_partial():
    """Every index but the primary key and the READY ones skips READY rows:
    an enqueue writes three indexes, not six."""
    if not connection.features.supports_partial_indexes:
        pytest.skip("no partial indexes (MySQL, MariaDB)")
    definitions = index_definitions()
    partial = {name for name, sql in definitions.items() if " WHERE " in sql}
    assert partial >= {
        "bgtasks_job_ready_idx",
        "bgtasks_job_ready_any_idx",
        "bgtasks_job_running_idx",
        "bgtasks_job_status_idx",
        "bgtasks_job_schedule_once",
        "bgtasks_job_limited_ready_idx",
        "bgtasks_job_limit_run_idx",
    }
    assert "SUCCESSFUL" in definitions["bgtasks_job_status_idx"]
    # Of the jobs of limits only: a job of no limit writes neither.
    for name in ("bgtasks_job_limited_ready_idx", "bgtasks_job_limit_run_idx"):
        assert "IS NOT NULL" in definitions[name].split("WHERE")[1]
    assert "READY" not in definitions["bgtasks_job_status_idx"]
    assert "schedule_id" in definitions["bgtasks_job_schedule_once"].split("WHERE")[1]


def test_the_ready_indexes_hold_the_jobs_of_no_limit_first_on_postgresql_only():
    """Migration 0011 builds them again there, and leaves them be elsewhere;
    undone, it gives back the indexes 0010 had."""

    def ready_indexes():
        with connection.cursor() as cursor:
            found = connection.introspection.get_constraints(cursor, Job._meta.db_table)
        return {
            name: (found[name]["columns"], found.get(name, {}).get("definition"))
            for name in ("bgtasks_job_ready_idx", "bgtasks_job_ready_any_idx")
        }, "bgtasks_job_limit_run_idx" in found

    now, running_index = ready_indexes()
    postgres = connection.vendor == "postgresql"
    assert all((None in columns) == postgres for columns, _ in now.values())
    assert running_index == connection.features.supports_partial_indexes
    try:
        call_command("migrate", APP, "0010", verbosity=0)
        before, running_index = ready_indexes()
        assert not running_index
        assert all(None not in columns for columns, _ in before.values())
        assert (before == now) != postgres
    finally:
        call_command("migrate", APP, verbosity=0)
    assert ready_indexes() == (now, connection.features.supports_partial_indexes)


def test_one_job_per_schedule_and_planned_time_on_every_database():
    schedule = Schedule.objects.create(
        name="once", task_path="tests.tasks.record", cron="* * * * *"
    )
    planned = timezone.now()

    def job(**fields):
        return Job.objects.create(
            task_path="tests.tasks.record",
            run_after=planned,
            enqueued_at=planned,
            **fields,
        )

    job(schedule=schedule, scheduled_for=planned)
    with pytest.raises(IntegrityError), transaction.atomic():
        job(schedule=schedule, scheduled_for=planned)
    job(), job()  # jobs of no schedule never clash
    assert Job.objects.filter(schedule=schedule).count() == 1
    assert Job.objects.filter(schedule=None).count() == 2


def test_pruning_reads_the_finished_jobs_index():
    """Its partial condition is written so that SQLite, which matches terms
    rather than proving implications, uses it for ``status = ?``."""
    query = (
        Job.objects.filter(status="FAILED", finished_at__lt=timezone.now())
        .order_by("finished_at")
        .values("pk")[:1000]
    )
    sql, params = query.query.sql_with_params()
    if connection.vendor == "sqlite":
        explain = "EXPLAIN QUERY PLAN "
    elif connection.vendor == "postgresql":
        explain = "EXPLAIN "
    else:
        pytest.skip("MySQL and MariaDB index every status")
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # the table is empty here
            cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(explain + sql, params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "bgtasks_job_status_idx" in plan
