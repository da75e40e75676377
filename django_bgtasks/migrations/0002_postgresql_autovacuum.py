"""Autovacuum settings for the job table, on PostgreSQL only.

Every job is inserted, updated twice (claimed, finished) and in the end
deleted by pruning, so the table makes dead rows as fast as it runs jobs.
PostgreSQL's defaults vacuum a table once a fifth of it is dead, which for a
queue means dead index entries piling up in the claims' index between
vacuums. These make autovacuum visit the table after about 1% of its rows
(and at least every 1,000) have changed, and let it work at ten times the
default pace. docs/topics/performance.rst explains them; change them with
``ALTER TABLE django_bgtasks_job SET (...)`` where your workload differs.
"""

from django.db import migrations

AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_insert_scale_factor": "0.01",
    "autovacuum_vacuum_insert_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.01",
    "autovacuum_analyze_threshold": "1000",
    "autovacuum_vacuum_cost_limit": "2000",
}


def _alter(apps, schema_editor, clause: str) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    table = connection.ops.quote_name(
        apps.get_model("django_bgtasks", "Job")._meta.db_table
    )
    schema_editor.execute(f"ALTER TABLE {table} {clause}")


def set_autovacuum(apps, schema_editor):
    options = ", ".join(f"{name} = {value}" for name, value in AUTOVACUUM.items())
    _alter(apps, schema_editor, f"SET ({options})")


def reset_autovacuum(apps, schema_editor):
    _alter(apps, schema_editor, f"RESET ({', '.join(AUTOVACUUM)})")


class Migration(migrations.Migration):
    dependencies = [("django_bgtasks", "0001_initial")]

    operations = [migrations.RunPython(set_autovacuum, reset_autovacuum)]
