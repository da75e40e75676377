"""The benchmark's task: a no-op taking one integer."""

from django_bgtasks import task


@task
def noop(number: int) -> int:
    return number
