"""The admin's list of one task's or one queue's jobs reads an index
(``ListIndex``): of the jobs at rest on PostgreSQL, of every row on the
other databases. On PostgreSQL each is built ``CONCURRENTLY``, so that
enqueues and claims go on meanwhile (the migration is not atomic; started
again after a failure, it drops a half-built index first).
"""

from django.db import migrations

from django_bgtasks.models.indexes import (
    ListIndex,
    add_concurrently,
    drop_concurrently,
)

AT_REST = ["SUCCESSFUL", "FAILED", "CANCELLED", "WAITING"]
INDEXES = [
    ListIndex(fields=["task_path", "id"], name="bgtasks_job_task_idx", status=AT_REST),
    ListIndex(fields=["queue_name", "id"], name="bgtasks_job_queue_idx", status=AT_REST),
]


def forwards(apps, schema_editor):
    job = apps.get_model("django_bgtasks", "Job")
    for index in INDEXES:
        if schema_editor.connection.vendor == "postgresql":
            add_concurrently(schema_editor, job, index)
        else:
            schema_editor.add_index(job, index)


def backwards(apps, schema_editor):
    job = apps.get_model("django_bgtasks", "Job")
    for index in INDEXES:
        if schema_editor.connection.vendor == "postgresql":
            drop_concurrently(schema_editor, index.name)
        else:
            schema_editor.remove_index(job, index)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("django_bgtasks", "0014_job_trace_context")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(model_name="job", index=index) for index in INDEXES
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        )
    ]
