"""The benchmark's task: a no-op taking one integer."""

import time

from django_bgtasks import task


@task
def noop(number: int) -> int | float:
    # A negative number is a timed job (the latency runs): it returns when
    # it started, as the Celery task of the comparison records it.
    if number < 0:
        return time.time()
    return number


@task
def count_results(values: list) -> int:
    """The benchmark chord's callback: how many results it was handed."""
    return len(values)
