"""The worker's reading of the database's clock: a thread that waits (for
the GIL, behind the job threads) between reading the host's time and
sending its query does not put the estimate ahead of the server's."""

import time
from datetime import timedelta

import pytest
from django.db import connection

from django_bgtasks.db import database_now
from django_bgtasks.worker.clock import SAMPLES, DatabaseClock
from tests.conftest import requires_server_database

pytestmark = [requires_server_database, pytest.mark.django_db]

STALL = 0.05  # seconds: a long wait for the GIL


def stall_before_sending(stalled: int):
    """An execute wrapper that waits before sending each of the first
    ``stalled`` queries: the time between the host's reading and the
    server's is longer than the trip, as a wait for the GIL makes it."""
    calls = []

    def wrapper(execute, sql, params, many, context):
        calls.append(sql)
        if len(calls) <= stalled:
            time.sleep(STALL)
        return execute(sql, params, many, context)

    return wrapper


# The first query is the connection's warm-up: 2 stalls the first reading.
@pytest.mark.parametrize("stalled", [2, 1 + SAMPLES // 2, SAMPLES])
def test_a_wait_before_the_query_does_not_put_the_clock_ahead(stalled):
    # The database is on this host: its clock is the host's, offset zero.
    connection.ensure_connection()
    clock = DatabaseClock()
    with connection.execute_wrapper(stall_before_sending(stalled)):
        clock.sync(connection.alias)
    # One reading at least (the last) was not stalled.
    assert abs(clock.offset) < timedelta(seconds=STALL / 10)
    assert clock.now() <= database_now(connection.alias) + timedelta(seconds=STALL / 10)
