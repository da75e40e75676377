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


def job_database(alias: str | None) -> str:
    """The database a command or page names (``--database``): ``alias`` if
    it keeps jobs, ``default_database()`` if None; ValueError names those
    that keep jobs."""
    if alias is None:
        return default_database()
    known = job_databases()
    if alias not in known:
        raise ValueError(
            f"No jobs are kept in database {alias!r}: the databases that keep "
            f"jobs are {', '.join(known)}."
        )
    return alias


def served_databases(aliases=None) -> list[str]:
    """The databases a worker given ``aliases`` (``runworker --databases``;
    None: every database that keeps jobs) serves, each checked by
    ``job_database``; ValueError also for a database a backend names that
    ``DATABASES`` lacks (system check bgtasks.E015 says so first)."""
    served = job_databases() if aliases is None else [job_database(a) for a in aliases]
    missing = [alias for alias in served if alias not in connections]
    if missing:
        raise ValueError(
            f"A task backend keeps its jobs in database(s) {', '.join(missing)}, "
            f"which DATABASES lacks (bgtasks.E015)."
        )
    return served
