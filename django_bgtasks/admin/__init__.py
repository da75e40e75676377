"""The Django admin is the dashboard: jobs, queues, schedules and worker processes."""

from . import dashboard, jobs, queues, schedules, workers  # noqa: F401  (registers them)
