"""A task with this backend's options through the framework's own ``@task``
(see ``other_backend_tasks``)."""

from django_bgtasks.compat import BACKPORT
from tests.tasks import FRAMEWORK_FORWARDS_OPTIONS

if BACKPORT:
    from django_tasks import task
else:
    from django.tasks import task


def tripled(number):
    return number * 3


# Django 6.0's @task takes no options (the tests that use this skip there).
if FRAMEWORK_FORWARDS_OPTIONS:
    tripled = task(max_attempts=2, backoff={"initial": 1})(tripled)
