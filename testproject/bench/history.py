"""A realistic history of finished jobs, written fast by the database
itself: ``seed_history`` makes millions of rows with server-side SQL
(PostgreSQL: ``generate_series``; MariaDB: its sequence engine; SQLite
and MySQL: a recursive CTE) in chunks of one statement each.

The mix is ``seed_jobs``'s, finished: 94% SUCCESSFUL with a result, 5%
FAILED after 3 attempts with their errors, 1% CANCELLED before they
started; eight task paths, three queues, a few priorities, enqueued over
the last ``days`` days in the order of their ids (as a real table grows).
Rows are drawn from their number, not at random, so a size gives the same
table on every database.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.db import connection

from django_bgtasks.models import Job

TASKS = [
    "testproject.demo.tasks.make_thumbnail",
    "testproject.demo.tasks.count_photos",
    "shop.tasks.send_receipt",
    "shop.tasks.sync_stock",
    "reports.tasks.nightly_report",
    "mail.tasks.send_newsletter",
    "search.tasks.reindex",
    "billing.tasks.charge_card",
]
QUEUES = ["default", "images", "other"]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "shop/tasks.py", line 42, in charge_card\n'
    "    gateway.charge(order)\n"
    "ConnectionError: the payment gateway timed out\n"
)
BACKOFF = {"initial": 10, "factor": 2, "maximum": 3600, "jitter": 0.1}
WORKER = "host1.4242.seed"
ERRORS = [
    {
        "exception_class_path": "builtins.ConnectionError",
        "traceback": TRACEBACK,
        "attempt": attempt,
        "worker_id": WORKER,
        "at": "2026-12-01T12:00:00+00:00",
    }
    for attempt in (1, 2, 3)
]
# Rows per statement (and transaction).
CHUNK = 250_000


def seed_history(
    count: int, *, days: int = 7, say: Callable[[str], None] = lambda text: None
) -> None:
    """Add ``count`` finished jobs, enqueued over the last ``days`` days."""
    span = days * 86400
    for first in range(1, count + 1, CHUNK):
        last = min(count, first + CHUNK - 1)
        sql = _insert(connection.vendor, first, last, count, span)
        with connection.cursor() as cursor:
            if connection.vendor == "mysql" and not connection.mysql_is_mariadb:
                cursor.execute(f"SET SESSION cte_max_recursion_depth = {CHUNK + 1}")
            cursor.execute(sql)
        say(f"  {last:,} of {count:,} finished jobs written")


def analyze() -> None:
    """Refresh the planner's statistics of the job table (PostgreSQL: and
    its visibility map, as autovacuum would after a large insert, then a
    checkpoint, so that the writing of gigabytes is not measured with the
    next figures)."""
    table = connection.ops.quote_name(Job._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"VACUUM (ANALYZE) {table}")
            cursor.execute("CHECKPOINT")
        elif connection.vendor == "mysql":
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
        else:
            cursor.execute("ANALYZE")


def _case(number: str, values: list[str], quote: Callable[[str], str]) -> str:
    """SQL choosing ``values[number % len(values)]``."""
    whens = " ".join(
        f"WHEN {index} THEN {quote(value)}" for index, value in enumerate(values)
    )
    return f"CASE {number} % {len(values)} {whens} END"


def _insert(vendor: str, first: int, last: int, count: int, span: int) -> str:
    """One statement adding the rows numbered ``first`` to ``last`` of
    ``count``, the n-th enqueued ``span * (count - n) / count`` seconds ago."""
    table = Job._meta.db_table

    def text(value: str) -> str:
        if vendor == "mysql":  # where a backslash escapes in a literal
            value = value.replace("\\", "\\\\")
        return "'" + value.replace("'", "''") + "'"

    def as_json(value) -> str:
        literal = text(json.dumps(value))
        return f"{literal}::jsonb" if vendor == "postgresql" else literal

    # Seconds before now of the enqueue, the start and the end.
    # (Two seconds more, so that no time is in the future.)
    enqueued = f"(({count} - n) * {span / count} + 2)"
    started = f"({enqueued} - ((n * 7) % 500) / 1000.0)"
    finished = f"({started} - ((n * 11) % 1000) / 1000.0)"
    if vendor == "postgresql":
        numbers = f"generate_series({first}::bigint, {last}::bigint) AS n"
        args = "jsonb_build_array(n)"

        def ago(seconds):
            return f"(now() - ({seconds}) * interval '1 second')"

    elif vendor == "mysql":
        numbers = "numbers"
        if connection.mysql_is_mariadb:
            numbers = f"(SELECT seq AS n FROM seq_{first}_to_{last}) AS numbers"
        args = "JSON_ARRAY(n)"

        def ago(seconds):
            micro = f"ROUND(({seconds}) * 1000000)"
            return f"(UTC_TIMESTAMP(6) - INTERVAL {micro} MICROSECOND)"

    else:
        numbers = "numbers"
        args = "json_array(n)"

        def ago(seconds):
            modifier = f"'-' || ({seconds}) || ' seconds'"
            return f"strftime('%Y-%m-%d %H:%M:%f', 'now', {modifier})"

    # Of each 1,000 rows: 50 FAILED, 10 CANCELLED, the rest SUCCESSFUL.
    draw = "((n * 7919) % 1000)"
    failed, cancelled = f"{draw} < 50", f"{draw} < 60"
    select = f"""
        SELECT
            {_case("n", TASKS, text)}, 'default', {_case("(n * 13)", QUEUES, text)},
            {_case("(n * 17)", ["0", "0", "0", "10", "-10"], str)},
            CASE WHEN {failed} THEN 'FAILED' WHEN {cancelled} THEN 'CANCELLED'
                ELSE 'SUCCESSFUL' END,
            {args}, {as_json({})}, {ago(enqueued)}, {ago(enqueued)},
            CASE WHEN {failed} OR NOT {cancelled} THEN {ago(started)} END,
            CASE WHEN {failed} OR NOT {cancelled} THEN {ago(started)} END,
            CASE WHEN {failed} THEN {ago(finished)} WHEN {cancelled}
                THEN {ago(enqueued + " - 1")} ELSE {ago(finished)} END,
            CASE WHEN {failed} THEN 3 WHEN {cancelled} THEN 0 ELSE 1 END, 3,
            {as_json(BACKOFF)},
            CASE WHEN {failed} THEN {as_json([WORKER] * 3)} WHEN {cancelled}
                THEN {as_json([])} ELSE {as_json([WORKER])} END,
            CASE WHEN {failed} THEN {as_json(ERRORS)} ELSE {as_json([])} END,
            CASE WHEN {failed} OR {cancelled} THEN NULL
                ELSE {as_json({"ok": True})} END
        FROM {numbers}
    """
    columns = (
        "task_path, backend, queue_name, priority, status, args, kwargs, "
        "run_after, enqueued_at, started_at, last_attempted_at, finished_at, "
        "attempts, max_attempts, backoff, worker_ids, errors, return_value"
    )
    if numbers != "numbers":
        return f"INSERT INTO {table} ({columns}) {select}"
    # SQLite and MySQL: the numbers from a recursive CTE.
    recursive = (
        f"WITH RECURSIVE numbers(n) AS (SELECT {first} UNION ALL "
        f"SELECT n + 1 FROM numbers WHERE n < {last})"
    )
    return f"INSERT INTO {table} ({columns}) {recursive} {select}"
