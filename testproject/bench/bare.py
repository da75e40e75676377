"""The database alone: a bare worker loop, the benchmark's ceiling.

``python -m testproject.bench.bare DATABASE_URL PROCESSES`` runs PROCESSES
processes that each, with psycopg and nothing of Django or django-bgtasks,
claim up to 100 due jobs at a time (``FOR UPDATE SKIP LOCKED``), "run"
each (the no-op task's body: a negative number returns the time it
started), and record them SUCCESSFUL in one statement. Idle, a process
waits for the queue's NOTIFY (as the workers do) or 1 s. It stores
results, but has no retries, signals, logging, heartbeat, limits or
timeouts: what the queue costs beyond it is what the rows it prints beside
ours show. PostgreSQL only. Ends on SIGTERM.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import sys
import time

import psycopg

BATCH = 100
CHANNEL = "django_bgtasks"  # django_bgtasks.notify.CHANNEL
CLAIM = """
    WITH claimable AS (
        SELECT id FROM django_bgtasks_job
        WHERE status = 'READY' AND run_after <= now()
        ORDER BY priority DESC, run_after, id
        LIMIT %s FOR UPDATE SKIP LOCKED
    )
    UPDATE django_bgtasks_job AS job
    SET status = 'RUNNING', attempts = job.attempts + 1,
        started_at = now(), last_attempted_at = now(), worker_id = NULL
    FROM claimable WHERE job.id = claimable.id
    RETURNING job.id, job.args
"""
COMPLETE = """
    UPDATE django_bgtasks_job AS job
    SET status = 'SUCCESSFUL', finished_at = now(), return_value = done.value
    FROM unnest(%s::bigint[], %s::jsonb[]) AS done(id, value)
    WHERE job.id = done.id
"""


def noop(number: int):
    return time.time() if number < 0 else number


def loop(url: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url) as connection,
    ):
        listener.execute(f"LISTEN {CHANNEL}")
        while True:
            with connection.transaction():
                jobs = connection.execute(CLAIM, [BATCH]).fetchall()
            if not jobs:
                # Until a NOTIFY (all read at once) or a second.
                select.select([listener.fileno()], [], [], 1.0)
                listener.pgconn.consume_input()
                while listener.pgconn.notifies() is not None:
                    pass
                continue
            ids = [job_id for job_id, _ in jobs]
            values = [json.dumps(noop(*args)) for _, args in jobs]
            with connection.transaction():
                connection.execute(COMPLETE, [ids, values])


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    children = [multiprocessing.Process(target=loop, args=(url,)) for _ in range(count)]
    for child in children:
        child.start()

    def stop(*_):
        for child in children:
            if child.pid:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
