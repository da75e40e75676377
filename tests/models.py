from django.db import models


class Execution(models.Model):
    """One run of a recording task. Unique per job and claim (the how-many-th
    time the job was claimed: the length of its ``worker_ids``), so a job
    that two workers claimed at once fails the insert. (Not per attempt: an
    attempt cut short by a stop or by a neighbour's crash is given back and
    run again under the same number.)"""

    job_id = models.BigIntegerField()
    label = models.CharField(max_length=50, blank=True)
    claim = models.PositiveIntegerField()
    worker_id = models.CharField(max_length=100)
    pid = models.PositiveIntegerField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job_id", "claim"], name="tests_execution_once"
            )
        ]

    def __str__(self):
        return f"job {self.job_id} claim {self.claim} on {self.worker_id}"


class Effect(models.Model):
    """What an atomic task wrote: one row per run whose transaction
    committed."""

    job_id = models.BigIntegerField()
    label = models.CharField(max_length=50, blank=True)

    def __str__(self):
        return f"effect of job {self.job_id}"
