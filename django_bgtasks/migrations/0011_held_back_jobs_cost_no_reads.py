"""The READY indexes hold the jobs of no limit ahead of those of limits, on
PostgreSQL (``ReadyIndex``), and the RUNNING jobs of limits get an index of
their own where partial indexes exist (``LimitedRunningIndex``).

Elsewhere the READY indexes are as they were, so only PostgreSQL builds
them again. There every index is built with ``CONCURRENTLY`` (the new one
beside the old, which is then dropped and its name given to the new), so
enqueues and claims go on meanwhile; hence not atomic. Workers of the code
before this migration cannot walk the new READY indexes in claim order:
stop them before migrating (docs/topics/deployment.rst).
"""

import functools

from django.db import migrations

from django_bgtasks.models.indexes import (
    LimitedRunningIndex,
    ReadyIndex,
    StatusIndex,
    rebuild_concurrently,
)

READY_INDEXES = [
    (["queue_name", "-priority", "run_after", "id"], "bgtasks_job_ready_idx"),
    (["-priority", "run_after", "id"], "bgtasks_job_ready_any_idx"),
]
RUNNING_INDEX = LimitedRunningIndex(
    fields=["limit_key"], name="bgtasks_job_limit_run_idx"
)


def _old(fields, name):
    return StatusIndex(fields=fields, name=name, status="READY")


def _new(fields, name):
    return ReadyIndex(fields=fields, name=name)


def _rebuild_concurrently(schema_editor, job, make) -> None:
    """PostgreSQL: each READY index built again as ``make`` gives it."""
    for fields, name in READY_INDEXES:
        rebuild_concurrently(schema_editor, job, name, functools.partial(make, fields))


def forwards(apps, schema_editor):
    job = apps.get_model("django_bgtasks", "Job")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_index(job, RUNNING_INDEX)
        return
    _rebuild_concurrently(schema_editor, job, _new)
    schema_editor.execute(
        RUNNING_INDEX.create_sql(job, schema_editor, concurrently=True)
    )


def backwards(apps, schema_editor):
    job = apps.get_model("django_bgtasks", "Job")
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_index(job, RUNNING_INDEX)
        return
    schema_editor.execute(
        RUNNING_INDEX.remove_sql(job, schema_editor, concurrently=True)
    )
    _rebuild_concurrently(schema_editor, job, _old)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("django_bgtasks", "0010_limits")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                *(
                    migrations.RemoveIndex(model_name="job", name=name)
                    for _, name in READY_INDEXES
                ),
                *(
                    migrations.AddIndex(model_name="job", index=_new(fields, name))
                    for fields, name in READY_INDEXES
                ),
                migrations.AddIndex(model_name="job", index=RUNNING_INDEX),
            ],
        ),
    ]
