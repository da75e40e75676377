"""The database alone: a bare worker loop, the benchmark's ceiling.

``python -m testproject.bench.bare DATABASE_URL PROCESSES [POLL]`` runs PROCESSES
processes that each, with the database's driver and nothing of Django or
django-bgtasks, claim up to 100 due jobs at a time (``FOR UPDATE SKIP
LOCKED``), "run" each (the no-op task's body: a negative number returns the
time it started), and record them SUCCESSFUL in one statement. It stores
results, but has no retries, signals, logging, heartbeat, limits, paused
queues or timeouts: what the queue costs beyond it is what the rows it
prints beside ours show. It prints ``ready`` once every process is
connected (and listening), and ends on SIGTERM.

- PostgreSQL (psycopg): the claim is one ``UPDATE ... RETURNING``, the
  outcomes one ``UPDATE ... FROM unnest``; idle, a process waits for the
  queue's NOTIFY (as the workers do) or 1 s.
- MySQL 8 / MariaDB 10.6+ (mysqlclient): the claim is a locking read and an
  ``UPDATE`` in one transaction at REPEATABLE READ (as the workers' is), the
  outcomes one ``UPDATE`` joined to a JSON document of them (``JSON_TABLE``);
  idle, a process polls every POLL seconds (1 by default; there is no
  NOTIFY).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import select
import signal
import sys
import time
from urllib.parse import urlsplit

BATCH = 100
CHANNEL = "django_bgtasks"  # django_bgtasks.notify.CHANNEL
TABLE = "django_bgtasks_job"
IDLE_WAIT = 1.0  # seconds: PostgreSQL's, and MySQL's poll by default

POSTGRESQL_CLAIM = f"""
    WITH claimable AS (
        SELECT id FROM {TABLE}
        WHERE status = 'READY' AND run_after <= now()
        ORDER BY priority DESC, run_after, id
        LIMIT %s FOR UPDATE SKIP LOCKED
    )
    UPDATE {TABLE} AS job
    SET status = 'RUNNING', attempts = job.attempts + 1,
        started_at = now(), last_attempted_at = now(), worker_id = NULL
    FROM claimable WHERE job.id = claimable.id
    RETURNING job.id, job.args
"""
POSTGRESQL_COMPLETE = f"""
    UPDATE {TABLE} AS job
    SET status = 'SUCCESSFUL', finished_at = now(), return_value = done.value
    FROM unnest(%s::bigint[], %s::jsonb[]) AS done(id, value)
    WHERE job.id = done.id
"""

# The READY index of every queue, named (an unnamed plan of a small table
# may lock every row it reads): django_bgtasks/sql/claim.py.
MYSQL_CANDIDATES = f"""
    SELECT id, args FROM {TABLE} FORCE INDEX (bgtasks_job_ready_any_idx)
    WHERE status = 'READY' AND run_after <= NOW(6)
    ORDER BY priority DESC, run_after, id
    LIMIT %s FOR UPDATE SKIP LOCKED
"""
MYSQL_CLAIM = f"""
    UPDATE {TABLE} FORCE INDEX (PRIMARY)
    SET status = 'RUNNING', attempts = attempts + 1,
        started_at = NOW(6), last_attempted_at = NOW(6), worker_id = NULL
    WHERE id IN ({{ids}})
"""
# The document's rows first (STRAIGHT_JOIN), each finding its job by the
# primary key: left to itself the planner may read every RUNNING job.
MYSQL_COMPLETE = f"""
    UPDATE JSON_TABLE(%s, '$[*]' COLUMNS (
            id BIGINT PATH '$[0]', value LONGTEXT PATH '$[1]'
        )) AS done
        STRAIGHT_JOIN {TABLE} AS job FORCE INDEX (PRIMARY) ON job.id = done.id
    SET job.status = 'SUCCESSFUL', job.finished_at = NOW(6),
        job.return_value = done.value
"""


def noop(number: int):
    return time.time() if number < 0 else number


def loop_postgresql(url: str, ready, poll: float = IDLE_WAIT) -> None:
    import psycopg

    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url) as connection,
    ):
        listener.execute(f"LISTEN {CHANNEL}")
        ready.put(os.getpid())
        while True:
            with connection.transaction():
                jobs = connection.execute(POSTGRESQL_CLAIM, [BATCH]).fetchall()
            if not jobs:
                # Until a NOTIFY (all read at once) or a second.
                select.select([listener.fileno()], [], [], poll)
                listener.pgconn.consume_input()
                while listener.pgconn.notifies() is not None:
                    pass
                continue
            ids = [job_id for job_id, _ in jobs]
            values = [json.dumps(noop(*args)) for _, args in jobs]
            with connection.transaction():
                connection.execute(POSTGRESQL_COMPLETE, [ids, values])


def loop_mysql(url: str, ready, poll: float = IDLE_WAIT) -> None:
    import MySQLdb

    parts = urlsplit(url)
    connection = MySQLdb.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        charset="utf8mb4",
        autocommit=True,
    )
    cursor = connection.cursor()
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    ready.put(os.getpid())
    while True:
        cursor.execute("START TRANSACTION")
        cursor.execute(MYSQL_CANDIDATES, [BATCH])
        jobs = cursor.fetchall()
        if jobs:
            ids = ", ".join(str(job_id) for job_id, _ in jobs)
            cursor.execute(MYSQL_CLAIM.format(ids=ids))
        cursor.execute("COMMIT")
        if not jobs:
            time.sleep(poll)
            continue
        done = [[job_id, json.dumps(noop(*json.loads(args)))] for job_id, args in jobs]
        cursor.execute(MYSQL_COMPLETE, [json.dumps(done)])


LOOPS = {"postgres": loop_postgresql, "postgresql": loop_postgresql}
LOOPS.update(dict.fromkeys(("mysql", "mariadb"), loop_mysql))


def run(url: str, ready, poll: float) -> None:
    """One bare loop (a child process), until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    LOOPS[urlsplit(url).scheme](url, ready, poll)


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    poll = float(sys.argv[3]) if len(sys.argv) > 3 else IDLE_WAIT
    if urlsplit(url).scheme not in LOOPS:
        raise SystemExit(f"No bare loop for {url!r}: PostgreSQL or MySQL only.")
    ready = multiprocessing.Queue()
    children = [
        multiprocessing.Process(target=run, args=(url, ready, poll))
        for _ in range(count)
    ]
    for child in children:
        child.start()

    def stop(*_):
        for child in children:
            if child.pid:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    started = 0
    while started < count:
        try:
            ready.get(timeout=1)
            started += 1
        except queue.Empty:
            if not all(child.is_alive() for child in children):
                stop()
                raise SystemExit("A bare loop ended before it started.") from None
    print("ready", flush=True)
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
