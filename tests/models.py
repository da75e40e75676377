from django.db import models


class Execution(models.Model):
    """One run of a recording task. Unique per job and attempt, so a job run
    twice at once (or twice in one attempt) fails the insert."""

    job_id = models.BigIntegerField()
    label = models.CharField(max_length=50, blank=True)
    attempt = models.PositiveIntegerField()
    worker_id = models.CharField(max_length=100)
    pid = models.PositiveIntegerField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job_id", "attempt"], name="tests_execution_once"
            )
        ]

    def __str__(self):
        return f"job {self.job_id} attempt {self.attempt} on {self.worker_id}"
