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


@task(priority=10)
def sleep_10ms(number: int) -> list[float]:
    """The limited scenario's 10 ms job, unlimited (``limited.py`` has it
    limited); returns its span."""
    began = time.time()
    time.sleep(0.01)
    return [began, time.time()]
