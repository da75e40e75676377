"""The database alone: a bare worker loop, the benchmark's ceiling.

``python -m testproject.bench.bare PROCESSES [POLL]``, the database as
JSON in the environment's ``BGTASKS_BARE_DATABASE`` (its Django connection's
``vendor`` and its settings' ``NAME``, ``USER``, ``PASSWORD``, ``HOST``,
``PORT``), runs
PROCESSES processes that each, with the database's driver and nothing of
Django or django-bgtasks, claim up to 100 due jobs at a time (``FOR UPDATE
SKIP LOCKED``), "run" each (the no-op task's body: a negative number
returns the time it started), and record them SUCCESSFUL in one statement.
It stores results, but has no retries, signals, logging, heartbeat, limits,
paused queues or timeouts: what the queue costs beyond it is what the rows
it prints beside ours show. Times are the database's, in UTC, as the
queue's are. It prints ``ready`` once every process is connected (and
listening), ends on SIGTERM, and ends with an error if a process ends.

- PostgreSQL (psycopg): the claim is one ``UPDATE ... RETURNING``, the
  outcomes one ``UPDATE ... FROM unnest``; idle, a process waits for the
  queue's NOTIFY (as the workers do) or POLL seconds (1 by default).
- MariaDB 10.6+ (mysqlclient; MySQL 8 untried): the claim is a locking read
  and an ``UPDATE`` in one transaction at REPEATABLE READ (as the workers'
  is; one the server undid to break a deadlock is made again), the outcomes
  one ``UPDATE`` joined to a JSON document of them (``JSON_TABLE``); idle, a
  process polls every POLL seconds (there is no NOTIFY).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import queue
import select
import signal
import sys
import time

BATCH = 100
CHANNEL = "django_bgtasks"  # django_bgtasks.notify.CHANNEL
TABLE = "django_bgtasks_job"
IDLE_WAIT = 1.0  # seconds: the poll, by default

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
    WHERE status = 'READY' AND run_after <= UTC_TIMESTAMP(6)
    ORDER BY priority DESC, run_after, id
    LIMIT %s FOR UPDATE SKIP LOCKED
"""
MYSQL_CLAIM = f"""
    UPDATE {TABLE} FORCE INDEX (PRIMARY)
    SET status = 'RUNNING', attempts = attempts + 1,
        started_at = UTC_TIMESTAMP(6), last_attempted_at = UTC_TIMESTAMP(6),
        worker_id = NULL
    WHERE id IN ({{ids}})
"""
# The document's rows first (STRAIGHT_JOIN), each finding its job by the
# primary key: left to itself the planner may read every RUNNING job.
MYSQL_COMPLETE = f"""
    UPDATE JSON_TABLE(%s, '$[*]' COLUMNS (
            id BIGINT PATH '$[0]', value LONGTEXT PATH '$[1]'
        )) AS done
        STRAIGHT_JOIN {TABLE} AS job FORCE INDEX (PRIMARY) ON job.id = done.id
    SET job.status = 'SUCCESSFUL', job.finished_at = UTC_TIMESTAMP(6),
        job.return_value = done.value
"""


def noop(number: int):
    return time.time() if number < 0 else number


def loop_postgresql(database: dict, ready, poll: float) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    conninfo = make_conninfo(
        dbname=database["NAME"],
        user=database["USER"] or None,
        password=database["PASSWORD"] or None,
        host=database["HOST"] or None,
        port=database["PORT"] or None,
    )
    with (
        psycopg.connect(conninfo, autocommit=True) as listener,
        psycopg.connect(conninfo) as connection,
    ):
        listener.execute(f"LISTEN {CHANNEL}")
        ready.put(os.getpid())
        while True:
            with connection.transaction():
                jobs = connection.execute(POSTGRESQL_CLAIM, [BATCH]).fetchall()
            if not jobs:
                # Until a NOTIFY (all read at once) or the poll's time.
                select.select([listener.fileno()], [], [], poll)
                listener.pgconn.consume_input()
                while listener.pgconn.notifies() is not None:
                    pass
                continue
            ids = [job_id for job_id, _ in jobs]
            values = [json.dumps(noop(*args)) for _, args in jobs]
            with connection.transaction():
                connection.execute(POSTGRESQL_COMPLETE, [ids, values])


# A transaction the server undid: a deadlock, a lock wait timeout.
MYSQL_UNDONE = {1213, 1205}


def loop_mysql(database: dict, ready, poll: float) -> None:
    import MySQLdb

    host = database["HOST"]
    # As Django's backend connects: a HOST that is a path is a socket.
    where = {"unix_socket": host} if host.startswith("/") else {"host": host}
    if database["PORT"]:
        where["port"] = int(database["PORT"])
    connection = MySQLdb.connect(
        **where,
        user=database["USER"],
        password=database["PASSWORD"],
        database=database["NAME"],
        charset="utf8mb4",
        autocommit=True,
    )
    cursor = connection.cursor()
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    ready.put(os.getpid())
    while True:
        try:
            cursor.execute("START TRANSACTION")
            cursor.execute(MYSQL_CANDIDATES, [BATCH])
            jobs = cursor.fetchall()
            if jobs:
                ids = ", ".join(str(job_id) for job_id, _ in jobs)
                cursor.execute(MYSQL_CLAIM.format(ids=ids))
            cursor.execute("COMMIT")
        except MySQLdb.OperationalError as exc:
            if exc.args[0] not in MYSQL_UNDONE:
                raise
            cursor.execute("ROLLBACK")
            continue
        if not jobs:
            time.sleep(poll)
            continue
        done = [[job_id, json.dumps(noop(*json.loads(args)))] for job_id, args in jobs]
        cursor.execute(MYSQL_COMPLETE, [json.dumps(done)])


LOOPS = {"postgresql": loop_postgresql, "mysql": loop_mysql}


def run(database: dict, ready, poll: float) -> None:
    """One bare loop (a child process), until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    LOOPS[database["vendor"]](database, ready, poll)


def main() -> None:
    count = int(sys.argv[1])
    poll = float(sys.argv[2]) if len(sys.argv) > 2 else IDLE_WAIT
    database = json.loads(os.environ["BGTASKS_BARE_DATABASE"])
    if database["vendor"] not in LOOPS:
        raise SystemExit(f"No bare loop for {database['vendor']}.")
    ready = multiprocessing.Queue()
    children = [
        multiprocessing.Process(target=run, args=(database, ready, poll), daemon=True)
        for _ in range(count)
    ]
    stopping = []

    def stop(*_):
        stopping.append(True)
        for child in children:
            if child.pid is not None and child.exitcode is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.start()
    started = 0
    while started < count and not stopping:
        try:
            ready.get(timeout=1)
            started += 1
        except queue.Empty:
            if not all(child.is_alive() for child in children):
                stop()
                raise SystemExit("A bare loop ended before it started.") from None
    if stopping:
        return
    print("ready", flush=True)
    # Until SIGTERM, or until a loop ends (then the figures would be of
    # fewer loops than asked for: an error).
    multiprocessing.connection.wait([child.sentinel for child in children])
    if not stopping:
        stop()
        raise SystemExit("A bare loop ended.")
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
