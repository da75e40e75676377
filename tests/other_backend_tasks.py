"""Tasks with this backend's options, declared as a project declares them;
``tests/test_other_backends.py`` imports this module afresh under other
``TASKS`` settings. (``framework_decorated_tasks``: the same through the
framework's own ``@task``.)"""

from django_bgtasks import task


@task(max_attempts=2, backoff=1, timeout=5)
def doubled(number):
    return number * 2
