"""Sending the framework's signals for many task results at once.

``Signal.send`` looks up the signal's live receivers on every call, under the
signal's lock: about half of what sending costs when the only receivers are
the framework's own loggers. The worker sends two signals per job, so it
looks them up once per batch (a claim, a batch of outcomes) and calls them
for each result of the batch. A receiver connected meanwhile gets the next
batch's results.
"""

from __future__ import annotations

from typing import Any


class Receivers:
    """The receivers of ``signal`` for ``sender``, looked up once, to send
    the signal many times as ``signal.send(sender, **named)`` would."""

    __slots__ = ("_sync", "sender", "signal")

    def __init__(self, signal, sender):
        self.signal = signal
        self.sender = sender
        try:
            # Private, but stable since Django 5.0: (sync, async) receivers.
            sync_receivers, async_receivers = signal._live_receivers(sender)
        except (AttributeError, TypeError, ValueError):
            sync_receivers, async_receivers = None, True
        # None: let Signal.send do it (async receivers, or a Django whose
        # internals differ).
        self._sync = None if async_receivers else sync_receivers

    def send(self, **named: Any) -> None:
        """Call each receiver; an exception a receiver raises propagates, as
        from ``Signal.send``."""
        if self._sync is None:
            self.signal.send(self.sender, **named)
            return
        for receiver in self._sync:
            receiver(signal=self.signal, sender=self.sender, **named)


def send_to_each(signal, sender, results) -> None:
    """``signal.send(sender, task_result=result)`` for each result."""
    receivers = Receivers(signal, sender)
    for result in results:
        receivers.send(task_result=result)
