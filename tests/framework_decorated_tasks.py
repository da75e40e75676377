"""A task with this backend's options through the framework's own ``@task``
(see ``other_backend_tasks``)."""

from django_bgtasks.compat import BACKPORT

if BACKPORT:
    from django_tasks import task
else:
    from django.tasks import task


@task(max_attempts=2, backoff={"initial": 1})
def tripled(number):
    return number * 3
