"""The Django admin is the dashboard: jobs, schedules and worker processes."""

from . import dashboard, jobs, schedules, workers  # noqa: F401  (registers them)
