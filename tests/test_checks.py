"""System checks and the installed schema."""

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from django_bgtasks.models import Job


def run_checks(**kwargs):
    # No database unless asked for: since Django 6.1.3 the model checks ask
    # every alias's features when none is named (a query on SQLite).
    kwargs.setdefault("databases", [])
    return [
        message
        for message in checks.run_checks(**kwargs)
        if message.id.startswith("bgtasks.")
    ]


def test_default_settings_pass():
    assert run_checks() == []


@override_settings(BGTASKS={"MAX_ATEMPTS": 3, "POLL_INTERVAL": 0, "NOTIFY": "yes"})
def test_bad_settings_are_reported():
    messages = {(m.id, m.msg) for m in run_checks()}
    assert ("bgtasks.E002", "BGTASKS has an unknown key 'MAX_ATEMPTS'.") in messages
    assert (
        "bgtasks.E003",
        "BGTASKS['POLL_INTERVAL'] is 0; it must be a number of seconds above 0.",
    ) in messages
    assert (
        "bgtasks.E003",
        "BGTASKS['NOTIFY'] is 'yes'; it must be True or False.",
    ) in messages


@override_settings(BGTASKS={"LISTEN_DATABASE": "nowhere"})
def test_a_listen_database_must_be_an_alias_in_databases():
    assert {(m.id, m.msg) for m in run_checks()} == {
        (
            "bgtasks.E003",
            "BGTASKS['LISTEN_DATABASE'] is 'nowhere'; it must be None or an alias "
            "in DATABASES.",
        )
    }


@override_settings(BGTASKS={"BACKOFF": {"factor": 0}})
def test_bad_backoff_setting_is_reported():
    assert [m.id for m in run_checks()] == ["bgtasks.E003"]


@override_settings(BGTASKS={"TIMEOUT": 7 * 24 * 3600 + 1})
def test_a_timeout_over_a_week_is_reported():
    # The worker refuses a stored timeout over a week (InvalidJobRow).
    assert [m.id for m in run_checks()] == ["bgtasks.E003"]


@pytest.mark.parametrize("modules", [["no_such_module_here"], "tests.tasks", [3]])
def test_task_modules_that_cannot_load_are_reported_not_raised(modules):
    with override_settings(BGTASKS={"TASK_MODULES": modules}):
        messages = run_checks()
    assert [m.id for m in messages] == ["bgtasks.E003"]
    assert "TASK_MODULES" in messages[0].msg


@override_settings(BGTASKS=["not", "a", "dict"])
def test_settings_must_be_a_dict():
    assert [m.id for m in run_checks()] == ["bgtasks.E001"]


@override_settings(
    TASKS={
        "default": {
            "BACKEND": "django_bgtasks.backend.DatabaseBackend",
            "QUEUES": ["default", "x" * 65],
        }
    }
)
def test_backend_queue_names_are_checked():
    assert "bgtasks.E011" in [m.id for m in run_checks()]


def test_sqlite_deploy_warning():
    ids = [m.id for m in run_checks(include_deployment_checks=True)]
    assert ("bgtasks.W001" in ids) is (connection.vendor == "sqlite")


@pytest.mark.django_db
def test_database_checks_pass():
    assert run_checks(databases=["default"], tags=["database"]) == []


@pytest.mark.django_db
def test_no_missing_migrations():
    call_command(
        "makemigrations", "django_bgtasks", "--check", "--dry-run", verbosity=0
    )


@pytest.mark.django_db
def test_ready_index_matches_the_claim_order():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(
            cursor, Job._meta.db_table
        )
    index = constraints["bgtasks_job_ready_idx"]
    if connection.vendor == "postgresql":  # the jobs of no limit first
        assert index["columns"] == ["queue_name", None, "priority", "run_after", "id"]
        assert "((limit_key IS NULL))" in index["definition"]
        assert "WHERE ((status)::text = 'READY'::text)" in index["definition"]
    elif connection.features.supports_partial_indexes:
        assert index["columns"] == ["queue_name", "priority", "run_after", "id"]
    else:  # MySQL/MariaDB: no partial indexes, status leads instead
        assert index["columns"] == [
            "status",
            "queue_name",
            "priority",
            "run_after",
            "id",
        ]
    if connection.features.supports_index_column_ordering:
        assert index["orders"][-3:] == ["DESC", "ASC", "ASC"]


# The statement that makes a session's later transactions REPEATABLE READ.
REPEATABLE_READ = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION "
    "ISOLATION LEVEL REPEATABLE READ",
    "mysql": "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
}


@pytest.mark.django_db(transaction=True)
def test_a_jobs_database_not_at_read_committed_is_reported():
    if connection.vendor not in REPEATABLE_READ:
        pytest.skip("SQLite has one writer; it has no isolation level to set")
    assert run_checks(databases=["default"], tags=["database"]) == []
    with connection.cursor() as cursor:
        cursor.execute(REPEATABLE_READ[connection.vendor])
    try:
        [message] = run_checks(databases=["default"], tags=["database"])
    finally:
        connection.close()  # the next test's session starts as configured
    assert message.id == "bgtasks.E013"
    assert "REPEATABLE READ" in message.msg and "'default'" in message.msg


@pytest.mark.django_db(transaction=True)
def test_a_jobs_database_set_to_repeatable_read_in_its_options_is_reported():
    if connection.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import IsolationLevel

        level = IsolationLevel.REPEATABLE_READ
    elif connection.vendor == "mysql":
        level = "repeatable read"
    else:
        pytest.skip("SQLite has one writer; it has no isolation level to set")
    options = connection.settings_dict["OPTIONS"]
    connection.close()
    options["isolation_level"] = level
    try:
        messages = run_checks(databases=["default"], tags=["database"])
    finally:
        del options["isolation_level"]
        connection.close()
    assert [message.id for message in messages] == ["bgtasks.E013"]
    assert "REPEATABLE READ" in messages[0].msg


@pytest.mark.slow
def test_runworker_does_not_start_on_a_database_at_repeatable_read(workers):
    if connection.vendor != "postgresql":
        pytest.skip("the server's default is set through libpq's PGOPTIONS")
    from tests import tasks

    result = tasks.add.enqueue(1, 2)
    code, output = workers.run(
        "--burst",
        env={"PGOPTIONS": r"-c default_transaction_isolation=repeatable\ read"},
    )
    assert code != 0
    assert "bgtasks.E013" in output and "REPEATABLE READ" in output
    assert Job.objects.get(pk=result.id).status == "READY"
    # The same worker on the server's default starts, and runs the job.
    code, output = workers.run("--burst")
    assert code == 0, output
    assert Job.objects.get(pk=result.id).status == "SUCCESSFUL"
