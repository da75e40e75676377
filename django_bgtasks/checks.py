"""System checks for the BGTASKS setting and the database (registered by
``AppConfig.ready``, once the models are loaded)."""

from __future__ import annotations

import importlib

from django.conf import settings
from django.core import checks
from django.db import connections, router, transaction

from . import registry
from .backend import MAX_TIMEOUT, DatabaseBackend
from .backoff import Backoff
from .compat import InvalidTask, loadable_backends
from .conf import DEFAULTS, bgtasks_settings
from .databases import job_databases
from .db import CONNECTION_ERRORS
from .limits import conflicting_limits, queue_limits
from .maintenance.schedule_sync import InvalidSchedule, build_schedule
from .models import Job
from .routes import route_from
from .sql import SUPPORTED_VENDORS


@checks.register()
def check_settings(app_configs=None, **kwargs):
    """bgtasks.E001-E003: the BGTASKS setting."""
    value = getattr(settings, "BGTASKS", {})
    if not isinstance(value, dict):
        return [checks.Error("BGTASKS must be a dict.", id="bgtasks.E001")]
    errors = []
    for name in sorted(set(value) - set(DEFAULTS)):
        errors.append(
            checks.Error(
                f"BGTASKS has an unknown key {name!r}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="bgtasks.E002",
            )
        )
    for name, valid, expected in _RULES:
        if name in value and not valid(value[name]):
            errors.append(
                checks.Error(
                    f"BGTASKS[{name!r}] is {value[name]!r}; it must be {expected}.",
                    id="bgtasks.E003",
                )
            )
    if not errors:
        beat, timeout = (
            bgtasks_settings.HEARTBEAT_INTERVAL,
            bgtasks_settings.WORKER_TIMEOUT,
        )
        if timeout < 2 * beat:
            errors.append(
                checks.Error(
                    f"BGTASKS['WORKER_TIMEOUT'] ({timeout:g} s) is less than twice "
                    f"BGTASKS['HEARTBEAT_INTERVAL'] ({beat:g} s): live workers "
                    f"would be taken for dead.",
                    id="bgtasks.E007",
                )
            )
    return errors


def _number(minimum, *, above=False):
    def valid(value):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return value > minimum if above else value >= minimum

    return valid


def _backoff(value):
    try:
        Backoff.coerce(value)
    except InvalidTask:
        return False
    return True


def _prune_after(value):
    from datetime import timedelta

    return (
        isinstance(value, dict)
        and set(value) <= {"SUCCESSFUL", "FAILED", "CANCELLED"}
        and all(
            v is None or isinstance(v, timedelta) or _number(0)(v)
            for v in value.values()
        )
    )


_RULES = [
    (
        "MAX_ATTEMPTS",
        lambda v: type(v) is int and 1 <= v <= 1000,
        "a whole number from 1 to 1000",
    ),
    ("BACKOFF", _backoff, "a dict of Backoff fields or a number of seconds"),
    (
        "MAX_PAYLOAD_BYTES",
        lambda v: type(v) is int and v > 0,
        "a positive whole number",
    ),
    ("NOTIFY", lambda v: isinstance(v, bool), "True or False"),
    (
        "LISTEN_DATABASE",
        lambda v: v is None or (isinstance(v, str) and v in settings.DATABASES),
        "None or an alias in DATABASES",
    ),
    ("POLL_INTERVAL", _number(0, above=True), "a number of seconds above 0"),
    ("HEARTBEAT_INTERVAL", _number(0, above=True), "a number of seconds above 0"),
    ("WORKER_TIMEOUT", _number(0, above=True), "a number of seconds above 0"),
    ("SCHEDULES", lambda v: isinstance(v, dict), "a dict of schedules by name"),
    ("SCHEDULER_INTERVAL", _number(0, above=True), "a number of seconds above 0"),
    ("MISFIRE_GRACE_TIME", _number(0), "a number of seconds, 0 or more"),
    (
        "TIMEOUT",
        lambda v: v is None or (_number(0, above=True)(v) and v <= MAX_TIMEOUT),
        f"None or a number of seconds above 0, at most {MAX_TIMEOUT} (a week)",
    ),
    ("CANCEL_GRACE_PERIOD", _number(0), "a number of seconds, 0 or more"),
    ("PRUNE_INTERVAL", _number(0, above=True), "a number of seconds above 0"),
    (
        "VACUUM_INTERVAL",
        lambda v: v is None or _number(0, above=True)(v),
        "None or a number of seconds above 0",
    ),
    (
        "PRUNE_AFTER",
        _prune_after,
        "a dict of SUCCESSFUL, FAILED and CANCELLED to days, timedeltas or None",
    ),
    (
        "TASK_MODULES",
        lambda v: isinstance(v, list | tuple) and all(isinstance(m, str) for m in v),
        "a list of module names",
    ),
]


def _queue_limits(value):
    if not isinstance(value, dict):
        return False
    try:
        queue_limits(value)
    except InvalidTask:
        return False
    return all(isinstance(queue, str) and queue for queue in value)


_RULES.append(
    (
        "QUEUE_LIMITS",
        _queue_limits,
        "a dict of queue names to limits: {'concurrency': n, 'rate': '100/m'} "
        "(or django_bgtasks.Limit(concurrency=, rate=))",
    )
)

_RULES_BY_NAME = {name: valid for name, valid, _ in _RULES}


@checks.register()
def check_limits(app_configs=None, **kwargs):
    """bgtasks.E012: tasks that share a limit's name declare the same limit."""
    try:
        registry.autodiscover()
    except Exception:
        return []  # check_declared_schedules says why the modules do not load
    return [
        checks.Error(
            f"Tasks share the limit name {name!r} but declare different limits.",
            hint="Give each the same Limit, or each its own name.",
            id="bgtasks.E012",
        )
        for name in conflicting_limits()
    ]


@checks.register()
def check_routes(app_configs=None, **kwargs):
    """bgtasks.E014: each route of BGTASKS["ROUTES"] sets a queue, a
    priority or a backend a job may have: a DatabaseBackend, and a queue
    it (or, with no backend set, some DatabaseBackend) accepts."""
    value = getattr(settings, "BGTASKS", {})
    if not isinstance(value, dict):
        return []  # bgtasks.E001 says so
    declared = value.get("ROUTES", {})
    if not isinstance(declared, dict):
        return [
            checks.Error(
                f"BGTASKS['ROUTES'] is {declared!r}; it must be a dict of task "
                f"path patterns to {{'queue_name': ..., 'priority': ...}}.",
                id="bgtasks.E014",
            )
        ]
    errors = []
    backends = [b for b in loadable_backends() if isinstance(b, DatabaseBackend)]
    for pattern, options in declared.items():
        try:
            route = route_from(pattern, options)
        except InvalidTask as exc:
            errors.append(checks.Error(str(exc), id="bgtasks.E014"))
            continue
        if route.backend is not None and route.backend not in {
            backend.alias for backend in backends
        }:
            errors.append(
                checks.Error(
                    f"Route {pattern!r} sends jobs to backend {route.backend!r}, "
                    f"which is not a django_bgtasks DatabaseBackend of TASKS.",
                    hint="Route to the alias of one of TASKS' DatabaseBackends "
                    f"({', '.join(b.alias for b in backends)}).",
                    id="bgtasks.E014",
                )
            )
            continue
        if route.backend is not None:
            # The queue must be one the route's backend accepts.
            backends_of_route = [b for b in backends if b.alias == route.backend]
        else:
            backends_of_route = backends
        queue = route.queue_name
        if queue is not None and not any(
            not backend.queues or queue in backend.queues
            for backend in backends_of_route
        ):
            errors.append(
                checks.Error(
                    f"Route {pattern!r} sends jobs to queue {queue!r}, which no "
                    f"django_bgtasks backend accepts.",
                    hint="Add it to the QUEUES of the backends in TASKS, or route "
                    "to one of theirs.",
                    id="bgtasks.E014",
                )
            )
    return errors


@checks.register()
def check_declared_schedules(app_configs=None, **kwargs):
    """bgtasks.E006: the schedules of BGTASKS["SCHEDULES"]."""
    value = getattr(settings, "BGTASKS", {})
    if not isinstance(value, dict):
        return []  # bgtasks.E001 says so
    declared = value.get("SCHEDULES", {})
    if not isinstance(declared, dict):
        return [checks.Error("BGTASKS['SCHEDULES'] must be a dict.", id="bgtasks.E006")]
    modules = value.get("TASK_MODULES", [])
    if not _RULES_BY_NAME["TASK_MODULES"](modules):
        return []  # bgtasks.E003 says so
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            # The schedules' tasks cannot be looked up without it.
            return [
                checks.Error(
                    f"BGTASKS['TASK_MODULES'] names {module!r}, which cannot be "
                    f"imported: {exc}",
                    id="bgtasks.E003",
                )
            ]
    registry.autodiscover()
    errors = []
    for name, spec in declared.items():
        try:
            build_schedule(name, spec)
        except InvalidSchedule as exc:
            errors.extend(
                checks.Error(f"Schedule {exc.name!r}: {message}", id="bgtasks.E006")
                for message in exc.messages
            )
    return errors


def _job_connections():
    """The connections of the databases that hold jobs (an alias
    ``DATABASES`` lacks is bgtasks.E015's to report)."""
    return [connections[alias] for alias in _job_databases() if alias in connections]


def _job_databases() -> list[str]:
    try:
        return job_databases()
    except Exception:
        return [router.db_for_write(Job)]


def _checked_job_connections(databases, vendors):
    """For a database check: the jobs' connections whose database's checks
    Django asked for (check --database, migrate, runworker; none by
    default) and whose vendor is among ``vendors``."""
    return [
        connection
        for connection in _job_connections()
        if connection.vendor in vendors and connection.alias in (databases or ())
    ]


@checks.register()
def check_backend_databases(app_configs=None, **kwargs):
    """bgtasks.E015: each DatabaseBackend's database exists and takes the
    jobs' tables (the routers let django_bgtasks migrate there)."""
    errors = []
    for backend in loadable_backends():
        if not isinstance(backend, DatabaseBackend):
            continue
        try:
            database = backend.database
        except Exception as exc:
            database, problem = None, f"its database cannot be found: {exc}"
        else:
            problem = None
            if not isinstance(database, str) or database not in connections:
                problem = (
                    f"its jobs' database {database!r} is not in DATABASES "
                    f"({', '.join(connections)})"
                )
            elif not router.allow_migrate_model(database, Job):
                problem = (
                    f"the database routers do not let django_bgtasks migrate "
                    f"database {database!r}, which keeps its jobs"
                )
        if problem:
            errors.append(
                checks.Error(
                    f"Task backend {backend.alias!r}: {problem}.",
                    hint="Set OPTIONS['DATABASE'] to an alias of DATABASES, "
                    "and let the routers' allow_migrate() return True for "
                    "app 'django_bgtasks' there.",
                    id="bgtasks.E015",
                )
            )
    return errors


@checks.register()
def check_database_vendor(app_configs=None, **kwargs):
    """bgtasks.E004: databases django_bgtasks can claim jobs on."""
    return [
        checks.Error(
            f"django_bgtasks does not support {connection.display_name} "
            f"(database {connection.alias!r}).",
            hint="Use PostgreSQL, MySQL 8, MariaDB 10.6+ or SQLite.",
            id="bgtasks.E004",
        )
        for connection in _job_connections()
        if connection.vendor not in SUPPORTED_VENDORS
    ]


@checks.register(checks.Tags.database)
def check_skip_locked(app_configs=None, databases=None, **kwargs):
    """bgtasks.E005: MySQL/MariaDB recent enough for SKIP LOCKED."""
    return [
        checks.Error(
            f"{connection.display_name} "
            f"{'.'.join(map(str, connection.mysql_version))} cannot SELECT ... "
            f"FOR UPDATE SKIP LOCKED (database {connection.alias!r}).",
            hint="Use MySQL 8 or MariaDB 10.6 or later.",
            id="bgtasks.E005",
        )
        for connection in _checked_job_connections(databases, ["mysql"])
        if not connection.features.has_select_for_update_skip_locked
    ]


# The isolation level a session's transactions start at. MySQL 8 names it
# transaction_isolation, MariaDB before 11.1 tx_isolation: SHOW, unlike
# SELECT @@name, does not fail on a name the server lacks.
_ISOLATION_QUERIES = {
    "postgresql": "SHOW transaction_isolation",
    "mysql": "SHOW SESSION VARIABLES WHERE Variable_name IN "
    "('transaction_isolation', 'tx_isolation')",
}


def isolation_level(connection) -> str | None:
    """The isolation level of ``connection``'s transactions, as "read
    committed" and the like (None where it cannot be read)."""
    query = _ISOLATION_QUERIES.get(connection.vendor)
    if query is None:
        return None
    try:
        # In a transaction: PostgreSQL's drivers apply Django's
        # OPTIONS['isolation_level'] when one begins, not to the session.
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(query)
            row = cursor.fetchone()
    except CONNECTION_ERRORS:
        return None  # the worker waits for the database itself
    if row is None:
        return None
    return str(row[-1]).lower().replace("-", " ")


@checks.register(checks.Tags.database)
def check_isolation_level(app_configs=None, databases=None, **kwargs):
    """bgtasks.E013: the jobs' connection at READ COMMITTED.

    A claim and a limit's count read what committed before each statement,
    not what a transaction's snapshot held: under REPEATABLE READ a claim
    would count RUNNING jobs of an older snapshot and let a limit be
    exceeded, and PostgreSQL fails the claim of a row another claim has
    changed since."""
    errors = []
    for connection in _checked_job_connections(databases, _ISOLATION_QUERIES):
        level = isolation_level(connection)
        if level is not None and level != "read committed":
            errors.append(_isolation_error(connection, level))
    return errors


def _isolation_error(connection, level: str):
    return checks.Error(
        f"The database {connection.alias!r} that holds the jobs runs its "
        f"transactions at {level.upper()}; django_bgtasks needs READ "
        f"COMMITTED.",
        hint="Leave the database's OPTIONS['isolation_level'] unset or "
        "set it to read committed; on PostgreSQL, where it is unset, the "
        "server's default_transaction_isolation applies.",
        id="bgtasks.E013",
    )


@checks.register(deploy=True)
def check_sqlite_in_production(app_configs=None, **kwargs):
    """bgtasks.W001: SQLite is for one host."""
    if all(c.vendor != "sqlite" for c in _job_connections()):
        return []
    return [
        checks.Warning(
            "django_bgtasks is using SQLite.",
            hint="SQLite serves any number of worker processes on one host "
            "(in WAL mode, which runworker sets), but not workers on several "
            "hosts. Use PostgreSQL or MySQL/MariaDB for that.",
            id="bgtasks.W001",
        )
    ]
