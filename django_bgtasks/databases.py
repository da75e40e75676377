"""Which database holds which backend's jobs.

A ``DatabaseBackend`` keeps its jobs (and its queues' rows, limits and
schedules) in one database: the alias its ``OPTIONS["DATABASE"]`` names,
else the one the project's database routers give for writing a Job, with
the backend's alias as the ``backend`` hint (``router.db_for_write(Job,
backend="heavy")``), else ``default``::

    TASKS = {
        "default": {"BACKEND": "django_bgtasks.backend.DatabaseBackend"},
        "heavy": {
            "BACKEND": "django_bgtasks.backend.DatabaseBackend",
            "OPTIONS": {"DATABASE": "jobs"},
        },
    }

Everything that touches a job asks here: enqueue, results, workers,
schedules, the admin, the commands. A worker serves whole databases: it runs
the jobs of every backend that keeps its jobs in them.
"""

from __future__ import annotations

from django.db import connections, router

from .backend import DatabaseBackend
from .compat import loadable_backends, task_backends
from .models import Job


def backend_database(alias: str) -> str:
    """The database alias that holds the jobs of task backend ``alias``
    (a ``DatabaseBackend``); KeyError-like errors from the framework if the
    backend does not exist."""
    backend = task_backends[alias]
    if isinstance(backend, DatabaseBackend):
        return backend.database
    return _routed_database(alias)


def _routed_database(alias: str) -> str:
    return router.db_for_write(Job, backend=alias)


def database_backends() -> dict[str, tuple[str, ...]]:
    """Each database that holds a ``DatabaseBackend``'s jobs, with those
    backends' aliases, in settings order; databases in the order their first
    backend comes."""
    found: dict[str, list[str]] = {}
    for backend in loadable_backends():
        if isinstance(backend, DatabaseBackend):
            found.setdefault(backend.database, []).append(backend.alias)
    return {database: tuple(aliases) for database, aliases in found.items()}


def job_databases() -> list[str]:
    """The databases that hold jobs (``database_backends()``'s keys); the
    one Django routes Job rows to if no DatabaseBackend is configured."""
    databases = list(database_backends())
    return databases or [_routed_database("default")]


def default_database() -> str:
    """The database of the ``default`` task backend if it is a
    DatabaseBackend, else the first that holds jobs: where a command or page
    that names no database looks."""
    try:
        backend = task_backends["default"]
    except Exception:
        backend = None
    if isinstance(backend, DatabaseBackend):
        return backend.database
    return job_databases()[0]


def served_databases(databases=None) -> list[str]:
    """The databases a worker given ``databases`` (``runworker
    --databases``; None: every database that holds jobs) serves; ValueError
    names an alias ``DATABASES`` does not have."""
    if databases is None:
        return job_databases()
    unknown = [alias for alias in databases if alias not in connections]
    if unknown:
        raise ValueError(
            f"Unknown database alias(es): {', '.join(unknown)}. DATABASES "
            f"has: {', '.join(connections)}."
        )
    return list(databases)
