"""Tasks declared with this backend's options under the framework's other
backends: a project switches ``TASKS`` (to run tasks at once in its tests,
say) without touching its tasks."""

import importlib

import pytest
from django.test import override_settings

from django_bgtasks import Backoff
from django_bgtasks.base import DatabaseTask
from django_bgtasks.compat import BACKPORT, TaskResultStatus, task_backends
from tests.tasks import FRAMEWORK_FORWARDS_OPTIONS

FRAMEWORK = "django_tasks" if BACKPORT else "django.tasks"
needs_forwarding = pytest.mark.skipif(
    not FRAMEWORK_FORWARDS_OPTIONS, reason="Django 6.0's @task takes no options"
)


def backend(name: str) -> dict:
    return {"default": {"BACKEND": name}}


MODULES = ["tests.other_backend_tasks", "tests.framework_decorated_tasks"]


def declared_under(tasks_setting: dict, module: str = MODULES[0]):
    """``module``, imported afresh with ``TASKS`` so."""
    with override_settings(TASKS=tasks_setting):
        return importlib.reload(importlib.import_module(module))


@pytest.fixture(autouse=True)
def declared_again_after():
    yield
    for module in MODULES:
        importlib.reload(importlib.import_module(module))


def test_our_decorator_keeps_its_options_under_the_frameworks_immediate_backend():
    setting = backend(f"{FRAMEWORK}.backends.immediate.ImmediateBackend")
    module = declared_under(setting)
    assert isinstance(module.doubled, DatabaseTask)
    assert module.doubled.max_attempts == 2
    with override_settings(TASKS=setting):
        result = module.doubled.enqueue(21)
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)


@needs_forwarding
def test_tasks_with_our_options_run_under_our_immediate_backend():
    setting = backend("django_bgtasks.testing.ImmediateBackend")
    module = declared_under(setting)
    framework = declared_under(setting, MODULES[1])
    assert framework.tripled.backoff == Backoff(initial=1)
    with override_settings(TASKS=setting):
        assert module.doubled.enqueue(4).return_value == 8
        assert framework.tripled.enqueue(2).return_value == 6
        many = framework.tripled.enqueue_many([((1,), {}), ((2,), {})])
        assert [result.return_value for result in many] == [3, 6]
        later = module.doubled.using(max_attempts=3, timeout=1)
        assert later.enqueue(5).return_value == 10


@needs_forwarding
def test_tasks_with_our_options_are_collected_by_our_dummy_backend():
    setting = backend("django_bgtasks.testing.DummyBackend")
    framework = declared_under(setting, MODULES[1])
    with override_settings(TASKS=setting):
        result = framework.tripled.enqueue(3)
        assert result.status == TaskResultStatus.READY
        assert [r.args for r in task_backends["default"].results] == [[3]]


@needs_forwarding
def test_a_backoff_in_seconds_or_a_dict_through_the_frameworks_decorator():
    setting = backend("django_bgtasks.backend.DatabaseBackend")
    assert declared_under(setting, MODULES[1]).tripled.backoff == Backoff(initial=1)
    assert declared_under(setting).doubled.backoff == Backoff.coerce(1)
