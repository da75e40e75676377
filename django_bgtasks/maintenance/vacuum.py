"""Vacuuming the job table on PostgreSQL servers that run without autovacuum.

Every job leaves dead rows behind (claimed, finished, pruned). PostgreSQL's
autovacuum clears them, with the per-table settings of migration 0002. Some
servers run with ``autovacuum = off`` (CI and benchmark set-ups, some tuned
installations); there the dead rows and stale planner statistics pile up and
the queue slows down (measured: pruning ten times slower, draining a fifth
slower after a million jobs). So where autovacuum is off for the job table,
the workers' maintenance threads run ``VACUUM (ANALYZE)`` on it themselves,
when it has as many changed rows as autovacuum would wait for.
"""

from __future__ import annotations

import logging

from django.db import connections, router

from ..models import Job

logger = logging.getLogger("django_bgtasks.worker")

# Vacuum once this many rows plus this share of the live rows are dead or
# changed since the last ANALYZE: migration 0002's autovacuum settings.
THRESHOLD = 1000
SCALE_FACTOR = 0.01

_STATE = """
    SELECT
        current_setting('autovacuum')::boolean AND NOT EXISTS (
            SELECT FROM unnest(class.reloptions) AS option
            WHERE option ~* '^autovacuum_enabled=(false|off|no|0|f|n)$'
        ),
        stat.n_dead_tup,
        stat.n_mod_since_analyze,
        stat.n_live_tup
    FROM pg_class AS class
    JOIN pg_stat_user_tables AS stat ON stat.relid = class.oid
    WHERE class.oid = %s::regclass
"""


def vacuum_if_needed(using: str | None = None) -> bool:
    """On PostgreSQL with autovacuum off for the job table, ``VACUUM
    (ANALYZE)`` it if enough rows changed; return whether it ran. A vacuum
    already running (another worker's) is skipped, never waited for."""
    using = using or router.db_for_write(Job)
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    table = Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(_STATE, [connection.ops.quote_name(table)])
        row = cursor.fetchone()
        if row is None:  # no statistics yet
            return False
        autovacuum, dead, changed, live = row
        if autovacuum or max(dead, changed) < THRESHOLD + SCALE_FACTOR * live:
            return False
        # VACUUM cannot run in a transaction: it runs in autocommit, as the
        # maintenance thread's queries do.
        if not connection.get_autocommit():
            return False
        cursor.execute(
            f"VACUUM (ANALYZE, SKIP_LOCKED) {connection.ops.quote_name(table)}"
        )
    logger.debug("Vacuumed %s (%d dead rows, %d changed)", table, dead, changed)
    return True
