"""The READY indexes hold the jobs of no limit ahead of those of limits, on
PostgreSQL (``ReadyIndex``), and the RUNNING jobs of limits get an index of
their own where partial indexes exist (``LimitedRunningIndex``).

Elsewhere the READY indexes are as they were, so only PostgreSQL builds
them again (each holds the READY rows alone: quick, and writes wait for it
only that long).
"""

from django.db import migrations

import django_bgtasks.models.indexes

INDEXES = [
    (["queue_name", "-priority", "run_after", "id"], "bgtasks_job_ready_idx"),
    (["-priority", "run_after", "id"], "bgtasks_job_ready_any_idx"),
]


def _rebuild(apps, schema_editor, old, new) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    job = apps.get_model("django_bgtasks", "Job")
    for fields, name in INDEXES:
        schema_editor.remove_index(job, old(fields=fields, name=name))
        schema_editor.add_index(job, new(fields=fields, name=name))


def ready_jobs_of_no_limit_first(apps, schema_editor):
    _rebuild(apps, schema_editor, _status_index, _ready_index)


def ready_jobs_together(apps, schema_editor):
    _rebuild(apps, schema_editor, _ready_index, _status_index)


def _status_index(**kwargs):
    return django_bgtasks.models.indexes.StatusIndex(status="READY", **kwargs)


def _ready_index(**kwargs):
    return django_bgtasks.models.indexes.ReadyIndex(**kwargs)


class Migration(migrations.Migration):
    dependencies = [("django_bgtasks", "0010_limits")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(ready_jobs_of_no_limit_first, ready_jobs_together)
            ],
            state_operations=[
                *(
                    migrations.RemoveIndex(model_name="job", name=name)
                    for _, name in INDEXES
                ),
                *(
                    migrations.AddIndex(
                        model_name="job", index=_ready_index(fields=fields, name=name)
                    )
                    for fields, name in INDEXES
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="job",
            index=django_bgtasks.models.indexes.LimitedRunningIndex(
                fields=["limit_key"], name="bgtasks_job_limit_run_idx"
            ),
        ),
    ]
