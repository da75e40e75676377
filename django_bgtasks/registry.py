"""The tasks a worker may run, and the only way from a job's path to a task.

Every Task bound to a DatabaseBackend registers itself here when it is
created (the backend's ``validate_task`` runs for each new Task). A worker
imports each installed app's ``tasks`` module and ``BGTASKS["TASK_MODULES"]``
at start. A job whose ``task_path`` is not registered may still be found by
importing its module, but only a module inside an installed app or listed in
``TASK_MODULES``: a path read from a row never makes the worker import
arbitrary code, and whatever it names must be a registered Task object.
"""

from __future__ import annotations

import importlib
import threading

from django.apps import apps
from django.utils.module_loading import autodiscover_modules

from .compat import Task
from .conf import bgtasks_settings
from .exceptions import TaskNotRegistered

_tasks: dict[str, Task] = {}
_import_lock = threading.Lock()


def register(task: Task) -> None:
    """Record ``task`` as runnable under its ``module_path``. The first Task
    of a path is kept: later ones are ``using()`` variants of it."""
    _tasks.setdefault(task.module_path, task)


def registered_tasks() -> dict[str, Task]:
    """The registered tasks by path (a copy)."""
    return dict(_tasks)


def autodiscover() -> None:
    """Import every installed app's ``tasks`` module and ``TASK_MODULES``."""
    autodiscover_modules("tasks")
    for module in bgtasks_settings.TASK_MODULES:
        importlib.import_module(module)


def resolve(task_path: str) -> Task:
    """Return the registered task at ``task_path``, or raise TaskNotRegistered."""
    task = _tasks.get(task_path)
    if task is not None:
        return task
    module_name, _, name = task_path.rpartition(".")
    if not module_name or not _may_import(module_name):
        raise TaskNotRegistered(
            f"{task_path!r} is not a registered task. Tasks are found in each "
            f"installed app's tasks module and the modules in "
            f"BGTASKS['TASK_MODULES']."
        )
    with _import_lock:
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise TaskNotRegistered(
                f"{task_path!r} is not a registered task: its module cannot be "
                f"imported ({exc})."
            ) from exc
    task = _tasks.get(task_path)
    if task is None:
        raise TaskNotRegistered(
            f"{task_path!r} is not a registered task: {module_name} defines no "
            f"task {name!r} for a django_bgtasks backend."
        )
    return task


def _may_import(module_name: str) -> bool:
    """Whether a module named in a job row may be imported to find its task."""
    allowed = [config.name for config in apps.get_app_configs()]
    allowed += bgtasks_settings.TASK_MODULES
    return any(
        module_name == package or module_name.startswith(package + ".")
        for package in allowed
    )
