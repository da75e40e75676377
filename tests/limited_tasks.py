"""Tasks with limits, for tests/test_limits.py. Not in tests/tasks.py: a
worker that knows of any limit claims through the limited claim, and the
other tests' workers should not. The limit tests' workers import this
module (BGTASKS_TEST_TASK_MODULES); in the test process, the ``limited``
fixture registers these tasks for one test only."""

import time

from django_bgtasks import Limit
from django_bgtasks import task as bg_task


def span(pause: float) -> list[float]:
    """Run for ``pause`` seconds; return when the run began and ended (this
    host's clock, the one every worker of the test shares)."""
    began = time.time()
    if pause:
        time.sleep(pause)
    return [began, time.time()]


@bg_task(limit=Limit(concurrency=2))
def two_at_a_time(pause=0.05):
    return span(pause)


@bg_task(limit=Limit(concurrency=1, key="account_id"))
def one_per_account(account_id, pause=0.05):
    return span(pause)


@bg_task(limit=Limit(concurrency=1, name="shared"))
def shared_a(pause=0.05):
    return span(pause)


@bg_task(limit={"concurrency": 1, "name": "shared"})
def shared_b(pause=0.05):
    return span(pause)


@bg_task(limit=Limit(rate="5/s"))
def five_a_second(pause=0.0):
    return span(pause)


@bg_task()
def free(pause=0.0):
    """No limit of its own (its queue's, if the settings give one)."""
    return span(pause)


TASKS = [two_at_a_time, one_per_account, shared_a, shared_b, five_a_second, free]
