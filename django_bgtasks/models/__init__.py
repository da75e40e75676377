"""The models: jobs, worker processes and schedules.

Each model's state changes are its own methods (verbs); the worker, the
scheduler and the admin call them and never write rows themselves. What an
outcome writes to a job is decided in ``transitions.py``. Nothing here
imports from the rest of django_bgtasks but its base modules (settings,
exceptions, the framework's names, arguments, cron times).
"""

from .dependencies import JobDependency, Passes
from .indexes import IndexWhenSet, StatusIndex, UniqueWhenSet
from .jobs import Job, JobDashboard
from .limits import LimitState
from .queues import Queue
from .schedules import MisfirePolicy, Schedule
from .status import FINISHED_STATUSES, NOT_STARTED, JobStatus
from .transitions import error_entry
from .workers import WorkerProcess, WorkerState

__all__ = [
    "FINISHED_STATUSES",
    "NOT_STARTED",
    "IndexWhenSet",
    "Job",
    "JobDashboard",
    "JobDependency",
    "JobStatus",
    "LimitState",
    "MisfirePolicy",
    "Passes",
    "Queue",
    "Schedule",
    "StatusIndex",
    "UniqueWhenSet",
    "WorkerProcess",
    "WorkerState",
    "error_entry",
]
