"""Exceptions raised by django_bgtasks.

Errors at enqueue derive from the framework's ``InvalidTask`` so code written
for ``django.tasks`` catches them; the rest are recorded on jobs as the error
of an attempt, by their class path.
"""

from .compat import InvalidTask


class InvalidTaskArguments(InvalidTask, ValueError, TypeError):
    """Arguments that do not survive a JSON round trip, or are too large.

    A TypeError too: the framework's docs show a non-JSON argument raising
    one, as its own backends do."""


class DuplicateJob(Exception):
    """An enqueue with ``unique=Unique(on_duplicate="error")`` found a job
    with the same key; ``result`` is that job's result."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class TaskNotRegistered(InvalidTask):
    """A job's ``task_path`` does not name a registered task."""


class InvalidReturnValue(Exception):
    """A task returned a value that cannot be stored as JSON."""


class InvalidJobRow(Exception):
    """A job's row holds a value the worker cannot run it with (written
    around the API); the message names the field."""


class OutcomeNotStored(Exception):
    """The database refused a job's outcome (its error text, say)."""


class TaskExited(Exception):
    """A task called ``sys.exit()`` (or raised ``SystemExit``)."""


class JobTimeout(Exception):
    """The job ran past its timeout; its process was ended."""


class JobInterrupted(Exception):
    """The worker stopped before the job finished; the job was put back."""


class WorkerLost(Exception):
    """The worker running the job stopped heartbeating; the job was put back."""


class WorkerError(Exception):
    """The worker itself failed around the job's attempt (a bug, or a
    database backend's unexpected error; its own error is the cause): the
    attempt failed, and the job is retried as its task allows."""


class JobCancelled(Exception):
    """The job was cancelled; ``django.tasks`` reads it as FAILED with this error."""


class JobExpired(JobCancelled):
    """The job was not started before its ``expires`` time; it never ran."""


class DependencyFailed(JobCancelled):
    """A job of a workflow this job waited for ended FAILED or CANCELLED, so
    this job never ran."""


class WorkerIdInUse(Exception):
    """Another live worker already registered under this worker id."""
