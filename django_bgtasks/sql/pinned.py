"""Running a claim's statements on PostgreSQL with their plan pinned.

A claim must walk its READY index in claim order and stop at its limit, and
it is the worker's hottest statement. Where the cursor sends a text as one
simple query (Django's default cursors), a claim is sent with ``NO_SORT``
before it, in the implicit transaction of that one message, and run as a
statement prepared once per connection (``run_pinned``): planned once, not
at every claim. ``sql/claim.py`` and ``sql/limited.py`` use it.
"""

from __future__ import annotations

import functools
import hashlib
import re

from django.db import DatabaseError

from ..db import sqlstate

# Sorting off (the claims' plans walk the READY index in claim order), and
# scans of whole tables: a plan kept for a connection's life, made while
# the job table was empty, read the whole table to find each claimed row
# by its id once the table had grown (a third of the drain's rate while it
# lasted, until the next ANALYZE). And JIT: a plan that must still sort (a
# merge of a few rows) or scan (the few paused queues) then costs so much
# that PostgreSQL would compile it, some 300 ms each time.
NO_SORT = (
    "SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off; SET LOCAL jit = off; "
)


def can_pin_plan(connection, cursor) -> bool:
    """Whether ``NO_SORT`` can lead the claim's query string: the cursor
    binds parameters on the client and sends the text as one simple query
    (psycopg 2, and psycopg 3's ClientCursor, Django's default), and no
    transaction is open that SET LOCAL would outlast the claim in."""
    if connection.in_atomic_block or not connection.get_autocommit():
        return False
    raw = cursor.cursor
    if type(raw).__module__.startswith("psycopg2"):
        return True
    try:
        from psycopg import ClientCursor
    except ImportError:
        return False
    return isinstance(raw, ClientCursor)


# A prepared statement's plan made once, for any parameters: left to
# itself, PostgreSQL planned the front anew at each run (its estimate of
# the generic plan's cost was no better than a custom one's), as long as
# running it.
GENERIC_PLAN = "SET LOCAL plan_cache_mode = force_generic_plan; "


def run_pinned(connection, cursor, statements, params, *, prepared):
    """Run a claim's ``statements`` (where ``can_pin_plan``) as one message
    (one implicit transaction: a failure in any undoes them all), under
    ``NO_SORT``, each as a statement prepared on this connection if
    ``prepared``, and return each one's rows.

    Prepared: planning a claim took about as long as running it, on every
    claim (the limited claim's front, of a dozen parts; the plain claim's
    0.24 of its 0.79 ms on an idle database). Planned once (``GENERIC_PLAN``), under the
    settings of the plain claim's every run: sorting off (the READY index's
    order, whatever the statistics say) and JIT off (sorting "off" makes a
    plan's cost so large that PostgreSQL would compile it, a second each
    time). A connection that loses them (a pooler in transaction mode hands
    out another) prepares them again, and one that cannot keep them runs
    the texts.

    psycopg 2 keeps the rows of the last statement only (the one result
    returned then): a caller sends it no message whose other rows it needs
    (``last_result_only``)."""
    if prepared and None not in (names := _prepared_names(connection)):
        # (None in names: this connection keeps no prepared statement.)
        rows = _execute_prepared(cursor, statements, params, names)
        if rows is not None:
            return rows
    cursor.execute(NO_SORT + "; ".join(statements), params)
    return results(cursor)


def _prepared_names(connection) -> set:
    """The statements prepared on this connection's current link to the
    server, by name."""
    state = getattr(connection, "_bgtasks_prepared", None)
    raw = connection.connection
    # The link itself, not its id(): a new one may reuse a closed one's id.
    if state is None or state[0] is not raw:
        state = connection._bgtasks_prepared = (raw, set())
    return state[1]


def _execute_prepared(cursor, statements, params, names):
    """``_execute`` of statements prepared (made if need be): their rows,
    or None if the connection lost them again as soon as they were made
    (it is then marked as keeping none)."""
    settings = NO_SORT + GENERIC_PLAN
    forms = [_prepared_forms(sql) for sql in statements]
    for _ in (1, 2):
        for name, prepare, _ in forms:
            if name not in names:
                try:
                    cursor.execute(prepare)
                except DatabaseError as exc:
                    # Prepared already (by this process, under this name
                    # made of the text): behind a pooler, a connection may
                    # hold some of them and not others.
                    if sqlstate(exc) != "42P05":
                        raise
                names.add(name)
        try:
            # The settings are sent with each run: a plan is made again
            # when PostgreSQL sees fit (new statistics), under that run's.
            cursor.execute(settings + "; ".join(run for _, _, run in forms), params)
            return results(cursor)
        except DatabaseError as exc:
            if sqlstate(exc) != "26000":  # not "no such prepared statement"
                raise
            names.clear()
    names.add(None)
    return None


def results(cursor) -> list[list]:
    """The rows of each statement of the message just run that returns
    rows (the settings before them return none)."""
    if last_result_only(cursor):
        return [cursor.fetchall()]
    # psycopg 3's result says how many columns it has: its ``description``
    # makes a column object for each at every look (a tenth of a claim's
    # Python, for the claim's 22 columns).
    raw = cursor.cursor
    results = []
    while True:
        if raw.pgresult is not None and raw.pgresult.nfields:
            results.append(cursor.fetchall())
        if not cursor.nextset():
            return results


def last_result_only(cursor) -> bool:
    """Whether the driver keeps only the last result of a message of
    several statements (psycopg 2)."""
    return type(cursor.cursor).__module__.startswith("psycopg2")


@functools.lru_cache(maxsize=64)
def _prepared_forms(sql: str) -> tuple[str, str, str]:
    """The name, ``PREPARE`` and ``EXECUTE`` of ``sql``: its named
    parameters become $1, $2..., and ``%%`` (a ``%`` in a literal, as
    ``cursor.execute`` takes it with parameters) ``%`` again, since the
    ``PREPARE`` is sent without parameters."""
    order: list[str] = []

    def number(match) -> str:
        key = match.group(1)
        if key is None:
            return "%"
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    body = re.sub(r"%%|%\((\w+)\)s", number, sql)
    name = "bgtasks_claim_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    arguments = ", ".join(f"%({key})s" for key in order)
    execute = f"EXECUTE {name}({arguments})" if order else f"EXECUTE {name}"
    return name, f"PREPARE {name} AS {body}", execute
