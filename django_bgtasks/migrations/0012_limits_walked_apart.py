"""On PostgreSQL the index of the READY jobs of limits leads with the
limit's name (``LimitedReadyIndex``), so a claim walks each limit's jobs
apart. Built ``CONCURRENTLY`` beside the old one, which is then dropped
and its name given to the new (not atomic). Other databases: no change.
"""

from django.db import migrations, models
from django.db.models import Q

from django_bgtasks.models.indexes import LimitedReadyIndex, rebuild_concurrently

FIELDS = ["-priority", "run_after", "id"]
NAME = "bgtasks_job_limited_ready_idx"


def _old(name):
    condition = Q(status="READY", limit_key__isnull=False)
    return models.Index(fields=FIELDS, name=name, condition=condition)


def _new(name):
    return LimitedReadyIndex(fields=FIELDS, name=name)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        job = apps.get_model("django_bgtasks", "Job")
        rebuild_concurrently(schema_editor, job, NAME, _new)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        job = apps.get_model("django_bgtasks", "Job")
        rebuild_concurrently(schema_editor, job, NAME, _old)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("django_bgtasks", "0011_held_back_jobs_cost_no_reads")]

    operations = [migrations.RunPython(forwards, backwards)]
