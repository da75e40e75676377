"""Routes: an operator moves a task, or every task whose path matches a
pattern, to another queue, priority or backend (so, database) from the settings
(``BGTASKS["ROUTES"]``), without touching the code that enqueues it, as
Celery's ``task_routes`` does.

The first route whose pattern matches a job's task path (``fnmatch``'s
shell-style ``*``, ``?`` and ``[...]``, case-sensitive; a route's order is
the dict's) gives its options to the job, over the task's own
(``@task(queue_name=...)``); an option a call chose with ``.using(...)``
wins over the route. The job records the pattern it was routed by
(``Job.route``).

Pure, but for ``routes()``, which reads the settings (and is worked out
again when they change).
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass

from .compat import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, InvalidTask
from .conf import bgtasks_settings, cleared_when_settings_change

# What a route may set, with the name of the ``.using()`` argument it is.
OPTIONS = ("queue_name", "priority", "backend")
PATTERN_MAX_LENGTH = 200


@dataclass(frozen=True)
class Route:
    """Jobs of the tasks whose path matches ``pattern`` go to ``queue_name``
    and/or at ``priority`` and/or to task backend ``backend`` (None: the
    task's own)."""

    pattern: str
    queue_name: str | None = None
    priority: int | None = None
    backend: str | None = None

    def matches(self, task_path: str) -> bool:
        return fnmatch.fnmatchcase(task_path, self.pattern)


def route_from(pattern, options) -> Route:
    """The route of one entry of ``BGTASKS["ROUTES"]``; InvalidTask says
    what is wrong with it."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= PATTERN_MAX_LENGTH:
        raise InvalidTask(
            f"A route's pattern is a task path or a pattern of paths of 1 to "
            f"{PATTERN_MAX_LENGTH} characters, not {pattern!r}."
        )
    if not isinstance(options, dict) or not options:
        raise InvalidTask(
            f"Route {pattern!r}: give a dict of {' and/or '.join(OPTIONS)}, "
            f"not {options!r}."
        )
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise InvalidTask(
            f"Route {pattern!r}: a route sets {' and/or '.join(OPTIONS)}, not "
            f"{', '.join(sorted(map(str, unknown)))}."
        )
    queue = options.get("queue_name")
    if queue is not None and not (isinstance(queue, str) and 0 < len(queue) <= 64):
        raise InvalidTask(
            f"Route {pattern!r}: queue_name is a name of 1 to 64 characters, "
            f"not {queue!r}."
        )
    priority = options.get("priority")
    if priority is not None and not (
        type(priority) is int and TASK_MIN_PRIORITY <= priority <= TASK_MAX_PRIORITY
    ):
        raise InvalidTask(
            f"Route {pattern!r}: priority is a whole number from "
            f"{TASK_MIN_PRIORITY} to {TASK_MAX_PRIORITY}, not {priority!r}."
        )
    backend = options.get("backend")
    if backend is not None and not (isinstance(backend, str) and backend):
        raise InvalidTask(
            f"Route {pattern!r}: backend is the alias of a task backend, not "
            f"{backend!r}."
        )
    return Route(pattern, queue, priority, backend)


@cleared_when_settings_change
@functools.lru_cache(maxsize=1)
def routes() -> tuple[Route, ...]:
    """The routes in force, in order (an invalid one raises InvalidTask:
    the system check, ``bgtasks.E014``, reports it first)."""
    declared = bgtasks_settings.ROUTES
    if not isinstance(declared, dict):
        raise InvalidTask(f"BGTASKS['ROUTES'] is a dict, not {declared!r}.")
    return tuple(route_from(pattern, options) for pattern, options in declared.items())


def route_for(task_path: str) -> Route | None:
    """The first route whose pattern matches ``task_path``, if any."""
    for route in routes():
        if route.matches(task_path):
            return route
    return None


def routed_backend(task) -> str:
    """The alias of the backend a new job of ``task`` goes to: the first
    matching route's ``backend``, unless the call chose one
    (``.using(backend=...)``), else the task's own."""
    route = route_for(task.module_path)
    if (
        route is None
        or route.backend is None
        or "backend" in getattr(task, "chosen_options", ())
    ):
        return task.backend
    return route.backend
