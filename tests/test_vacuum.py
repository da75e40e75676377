"""The workers vacuum the job table where PostgreSQL's autovacuum is off."""

import pytest
from django.db import connection

from django_bgtasks.maintenance.vacuum import THRESHOLD, vacuum_if_needed
from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.conftest import wait_until
from tests.factories import make_job

pytestmark = pytest.mark.django_db(transaction=True)


def table_stats() -> tuple[int, int]:
    """(dead rows, manual vacuums) of the job table, as the server counts."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables "
            "WHERE relid = %s::regclass",
            [Job._meta.db_table],
        )
        return cursor.fetchone()


@pytest.fixture
def autovacuum_off_for_the_table():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    table = connection.ops.quote_name(Job._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def test_a_table_with_enough_dead_rows_is_vacuumed(autovacuum_off_for_the_table):
    # Earlier tests' changes (some reported late by their workers' backends)
    # must not count here: start from a vacuumed table.
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Job._meta.db_table}")
    wait_until(lambda: table_stats()[0] < THRESHOLD, message="a clean start")
    _, vacuums_before = table_stats()
    make_job(JobStatus.SUCCESSFUL)
    assert not vacuum_if_needed()  # a handful of changes: not yet

    tasks.echo.enqueue_many(((n,), {}) for n in range(THRESHOLD + 200))
    Job.objects.all().delete()
    # The server's statistics lag a little behind the writes.
    wait_until(vacuum_if_needed, timeout=20, message="a vacuum")

    dead, vacuums = table_stats()
    assert vacuums == vacuums_before + 1
    assert dead < THRESHOLD
    assert not vacuum_if_needed()  # nothing left to do


def test_other_databases_are_left_alone():
    if connection.vendor == "postgresql":
        pytest.skip("not PostgreSQL")
    tasks.echo.enqueue_many(((n,), {}) for n in range(THRESHOLD + 200))
    Job.objects.all().delete()
    assert not vacuum_if_needed()
