"""The database's clock, read from this host's.

Every time that two hosts compare (a heartbeat, a job's ``run_after``, a
retry's, a schedule's) is the database server's, so a host whose own clock
is wrong neither starts jobs early nor judges live workers dead. Statements
use the server's time where they can (``db.DatabaseNow``); what the worker
works out itself (a retry's due time, a finish) uses this clock: the host's
time plus its offset from the server's, measured at start and by the
heartbeat every minute (to within half a round trip).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.utils import timezone

from ..db import database_now


class DatabaseClock:
    """The database server's time, on this host. The offset is written by
    whichever thread syncs (a reference swap) and read by any."""

    def __init__(self):
        self.offset = timedelta(0)

    def sync(self, using: str) -> None:
        """Measure the offset now (a round trip to the database)."""
        before = time.monotonic()
        local = timezone.now()
        server = database_now(using)
        half_trip = timedelta(seconds=(time.monotonic() - before) / 2)
        self.offset = server - (local + half_trip)

    def now(self) -> datetime:
        return timezone.now() + self.offset
