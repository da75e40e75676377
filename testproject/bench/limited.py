"""The benchmark's limited task (the "limited" scenario): workers that
import this module know of a limit, and claim through the limited claim."""

import time

from django_bgtasks import Limit, task


@task(limit=Limit(concurrency=2), priority=10)
def two_at_a_time(number: int) -> list[float]:
    """Runs 10 ms, at most two at once anywhere; returns its span."""
    began = time.time()
    time.sleep(0.01)
    return [began, time.time()]
