"""The migrations' database-specific parts."""

import importlib

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from django_bgtasks.models import Job

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
    assert applied() == {"0001_initial", "0002_postgresql_autovacuum"}
