"""The benchmark's workload on Celery, for the comparison: the same no-op
task taking one integer, Redis as broker and result store, as a Celery user
would set it up (``celery -A testproject.bench.celery_app worker -c 2``).

Only the benchmark imports this, and only where Celery and a Redis client
are installed (``pip install "celery[redis]"``). ``BENCH_REDIS_URL`` names
the Redis database (default: ``redis://127.0.0.1:6379/15``).
"""

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
QUEUE = "bgtasks-bench"
STARTS = "bgtasks-bench:starts"  # "number wall-clock" of each start, in order
DONE = "bgtasks-bench:done"  # how many tasks ran

app = Celery("bgtasks_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
client = redis.Redis.from_url(REDIS_URL)


@app.task(name="bench.noop")
def noop(number: int) -> int:
    # Counted, and its start time kept for the latency runs (negative
    # numbers): the benchmark's own bookkeeping, one Redis call each.
    if number < 0:
        client.rpush(STARTS, f"{-number} {time.time()}")
    client.incr(DONE)
    return number
