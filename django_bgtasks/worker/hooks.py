"""Moments of a worker's life that tests wait for, instead of sleeping.

A ``Worker`` calls its hooks at a few moments (never once per job): a
claim has returned, the outcomes of a batch are written, the main loop has
done a round and waits, holding nothing (an idle poll) or not. ``Hooks`` does nothing;
``RecordedHooks`` counts each moment and lets another thread wait for a
count, with a deadline::

    hooks = RecordedHooks()
    worker = Worker(burst=False, hooks=hooks)
    ...
    hooks.wait_for("idle_polls", 3, timeout=5)
"""

from __future__ import annotations

import threading
import time
from collections import Counter


class Hooks:
    """The moments a worker reports; this class ignores them."""

    def claimed(self, count: int, *, urgent: bool) -> None:
        """A claim returned ``count`` jobs (``urgent``: the listener's)."""

    def written(self, count: int) -> None:
        """The outcomes of ``count`` attempts are committed (or given up)."""

    def idle_poll(self) -> None:
        """The main loop holds no job and waits for one."""

    def waiting(self) -> None:
        """The main loop has done its round and waits for work."""


class RecordedHooks(Hooks):
    """Counts the moments: ``claims``, ``urgent_claims``, ``jobs_claimed``,
    ``batches_written``, ``jobs_written``, ``idle_polls``, ``loop_waits``."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self._changed = threading.Condition()

    def _add(self, **amounts: int) -> None:
        with self._changed:
            self.counts.update(amounts)
            self._changed.notify_all()

    def claimed(self, count: int, *, urgent: bool) -> None:
        if urgent:
            self._add(urgent_claims=1, jobs_claimed=count)
        else:
            self._add(claims=1, jobs_claimed=count)

    def written(self, count: int) -> None:
        self._add(batches_written=1, jobs_written=count)

    def idle_poll(self) -> None:
        self._add(idle_polls=1)

    def waiting(self) -> None:
        self._add(loop_waits=1)

    def __getitem__(self, name: str) -> int:
        with self._changed:
            return self.counts[name]

    def wait_for(self, name: str, count: int, *, timeout: float = 10.0) -> int:
        """Wait until moment ``name`` has been counted ``count`` times; raise
        TimeoutError after ``timeout`` seconds. Returns the count."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.counts[name] < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{name}: {self.counts[name]} after {timeout} s, not {count}"
                    )
                self._changed.wait(left)
            return self.counts[name]
