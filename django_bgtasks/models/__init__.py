"""The models: jobs, worker processes and schedules.

Each model's state changes are its own methods (verbs); the worker, the
scheduler and the admin call them and never write rows themselves.
"""

from .jobs import (
    FINISHED_STATUSES,
    Job,
    JobDashboard,
    JobStatus,
    StatusIndex,
    error_entry,
)
from .schedules import MisfirePolicy, Schedule
from .workers import WorkerProcess, WorkerState

__all__ = [
    "FINISHED_STATUSES",
    "Job",
    "JobDashboard",
    "JobStatus",
    "MisfirePolicy",
    "Schedule",
    "StatusIndex",
    "WorkerProcess",
    "WorkerState",
    "error_entry",
]
