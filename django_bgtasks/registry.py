"""The tasks a worker may run, and the only way from a job's path to a task.

Every Task bound to a DatabaseBackend registers itself here when it is
created (the backend's ``validate_task`` runs for each new Task). A worker
imports each installed app's ``tasks`` module and ``BGTASKS["TASK_MODULES"]``
at start. A path read from a row is only ever looked up here: it never makes
a process import the module it names, and whatever it names must be a
registered Task object.
"""

from __future__ import annotations

import importlib
import threading

from django.utils.module_loading import autodiscover_modules

from .compat import Task
from .conf import bgtasks_settings
from .exceptions import TaskNotRegistered

_tasks: dict[str, Task] = {}
# Marks the function of a stand-in task (see ``register``).
STAND_IN = "_bgtasks_stand_in"
_import_lock = threading.Lock()


def register(task: Task) -> None:
    """Record ``task`` as runnable under its ``module_path``. The first Task
    of a path is kept: later ones are ``using()`` variants of it. A
    stand-in for a task that is not registered (``rows.unregistered_task``)
    is never recorded: it would make the path look registered."""
    if getattr(task.func, STAND_IN, False):
        return
    _tasks.setdefault(task.module_path, task)


def registered_tasks() -> dict[str, Task]:
    """The registered tasks by path (a copy)."""
    return dict(_tasks)


def registered_count() -> int:
    """How many tasks are registered (it only grows)."""
    return len(_tasks)


def autodiscover() -> None:
    """Import every installed app's ``tasks`` module and ``TASK_MODULES``."""
    autodiscover_modules("tasks")
    for module in bgtasks_settings.TASK_MODULES:
        importlib.import_module(module)


def resolve(task_path: str) -> Task:
    """Return the registered task at ``task_path``, or raise TaskNotRegistered.

    A path not registered yet makes the project's task modules load
    (``autodiscover``, as a worker does at start); nothing else is imported,
    and never the module a row names: importing runs its code.
    """
    task = _tasks.get(task_path)
    if task is None:
        with _import_lock:
            autodiscover()
        task = _tasks.get(task_path)
    if task is None:
        raise TaskNotRegistered(
            f"{task_path!r} is not a registered task. Tasks are found in each "
            f"installed app's tasks module and the modules in "
            f"BGTASKS['TASK_MODULES'] (and in the modules they import)."
        )
    return task
