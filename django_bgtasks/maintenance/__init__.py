"""The periodic duties that keep the queue healthy, one module each.

- ``scheduler``: due schedules become jobs, once per planned time.
- ``schedule_sync``: the schedules declared in ``BGTASKS["SCHEDULES"]`` kept in
  step with their rows (``sync_schedules``, and every worker at start).
- ``rescue``: the jobs of dead workers are put back or failed.
- ``prune``: finished jobs past their retention are deleted.
- ``vacuum``: the job table is vacuumed where PostgreSQL's autovacuum is off.

``duties.Maintenance`` is the worker's thread that runs them at their
intervals; each duty is also a plain function for management commands and
tests.
"""
