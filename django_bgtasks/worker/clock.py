"""The database's clock, read from this host's.

Every time that two hosts compare (a heartbeat, a job's ``run_after``, a
retry's, a schedule's) is the database server's, so a host whose own clock
is wrong neither starts jobs early nor judges live workers dead. Statements
use the server's time where they can (``db.DatabaseNow``); what the worker
works out itself (a retry's due time, a finish) uses this clock: the host's
time plus its offset from the server's, measured at start and by the
heartbeat every minute: the reading with the fastest of a few round
trips, the server's time taken as that trip's middle, so to within half of
it. One reading was not enough: a thread that waits for the GIL between
reading the host's time and sending the query (behind the job threads, the
heartbeat) puts the estimate ahead of the server's by half that wait, and a
retry due "now" is then written as due in the server's future. The fastest
of five is that far off only if all five waited.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.utils import timezone

from ..db import database_now

# Readings per sync; the one with the fastest round trip is kept.
SAMPLES = 5


class DatabaseClock:
    """The database server's time, on this host. The offset is written by
    whichever thread syncs (a reference swap) and read by any."""

    def __init__(self):
        self.offset = timedelta(0)

    def sync(self, using: str) -> None:
        """Measure the offset now (a few round trips to the database)."""
        database_now(using)  # connected before the first trip is timed
        fastest = None
        for _ in range(SAMPLES):
            before = time.monotonic()
            local = timezone.now()
            server = database_now(using)
            trip = time.monotonic() - before
            if fastest is None or trip < fastest[0]:
                fastest = (trip, server - (local + timedelta(seconds=trip / 2)))
        self.offset = fastest[1]

    def now(self) -> datetime:
        return timezone.now() + self.offset
