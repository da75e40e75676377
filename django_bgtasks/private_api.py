"""Every speed-up that leans on a private API of Django, the tasks framework
or a database driver, in one place.

Each one saves measurable time on a hot path (a claim, an outcome, an
enqueue) and is used nowhere else. Each has a guard test in
``tests/test_private_api.py`` that fails when the library changes under it,
so an upgrade that breaks one is caught by the suite, not in production:

- ``model_from_row``: a model instance built from its field values without
  ``Model.__init__`` (the claim's rows, thousands per second);
- ``wrap_cursor``: a driver cursor of our choosing wrapped as Django wraps
  its own (``connection._prepare_cursor``: the insert's cursor on psycopg 3);
- ``new_result``, ``result_maker`` and ``set_field``: the framework's
  frozen ``TaskResult`` made and updated without ``__init__`` (whose
  normalising pass would copy arguments that are JSON already), its slots
  set through their descriptors;
- ``Receivers``: a signal's receivers looked up once per batch
  (``Signal._live_receivers``), not once per send;
- ``skip_health_check``, ``keep_open`` and ``saw_error``: a connection's
  health check, its ``CONN_MAX_AGE`` deadline and whether a query on it
  failed (``health_check_done``, ``close_at``, ``errors_occurred``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from types import MemberDescriptorType
from typing import Any

from django.db.models.base import ModelState

# Model instances ------------------------------------------------------------


def model_from_row(model, using: str, values: dict[str, Any]):
    """An instance of ``model`` loaded from database ``using``, with
    ``values`` (every concrete field, by attname) as its ``__dict__``: what
    ``Model.from_db`` makes, without the per-field work of ``__init__``."""
    state = ModelState()
    state.adding = False
    state.db = using
    values["_state"] = state
    instance = model.__new__(model)
    instance.__dict__ = values
    return instance


# Cursors ----------------------------------------------------------------------


def wrap_cursor(connection, raw_cursor):
    """``raw_cursor``, a driver cursor on ``connection``'s connection, wrapped
    as Django wraps its own cursors: its errors, thread checks, and the query
    log under DEBUG or in ``assertNumQueries``."""
    return connection._prepare_cursor(raw_cursor)


def skip_health_check(connection) -> None:
    """Count ``connection`` (open) as health-checked, so its next query is
    not preceded by ``CONN_HEALTH_CHECKS``' round trip."""
    connection.health_check_done = True


def saw_error(connection) -> bool:
    """Whether a query on ``connection`` failed (but for a data or integrity
    error) since its last commit or rollback: it may be unusable."""
    return connection.errors_occurred


def keep_open(connection) -> None:
    """Let ``connection`` (open) live on past its ``CONN_MAX_AGE``: it is
    closed only when an error leaves it unusable. For a worker's threads,
    which are not requests: ``CONN_MAX_AGE = 0`` (Django's default) would
    otherwise close it after every job."""
    connection.close_at = None


# The framework's results ------------------------------------------------------

_new = object.__new__
# Results are frozen dataclasses (with slots); this sets a field all the same.
set_field = object.__setattr__


@functools.cache
def _field_setters(cls) -> dict[str, Callable[[Any, Any], None]]:
    """A setter for each field of the dataclass ``cls``, by name: its slot's
    own ``__set__`` (nearly half the cost of ``object.__setattr__``, which
    looks the name up on the class each time), else ``set_field``."""
    setters = {}
    for field in dataclasses.fields(cls):
        slot = next(
            (vars(k)[field.name] for k in cls.__mro__ if field.name in vars(k)),
            None,
        )
        setters[field.name] = (
            slot.__set__
            if isinstance(slot, MemberDescriptorType)
            else functools.partial(_set_named, field.name)
        )
    return setters


def _set_named(name: str, result, value) -> None:
    set_field(result, name, value)


def new_result(cls, *fields: Iterable[tuple[str, Any]]):
    """A ``TaskResult`` of class ``cls`` with the ``(name, value)`` pairs of
    ``fields`` (every dataclass field, in one or more iterables), made
    without ``__init__``."""
    result = _new(cls)
    setters = _field_setters(cls)
    for pairs in fields:
        for name, value in pairs:
            setters[name](result, value)
    return result


def result_maker(
    cls, shared: Iterable[tuple[str, Any]], names: Iterable[str]
) -> Callable[..., Any]:
    """A function making ``TaskResult``s of class ``cls`` like
    ``new_result``: every result has the ``(name, value)`` pairs of
    ``shared``; the function takes the values of the fields ``names``, in
    order (the fields differing from one result to the next). For many
    results at once (a bulk enqueue's)."""
    shared = list(shared)
    make = _straight_maker(cls, tuple(name for name, _ in shared), tuple(names))
    return functools.partial(make, *(value for _, value in shared))


@functools.cache
def _straight_maker(cls, names: tuple[str, ...], more: tuple[str, ...]):
    """A function taking the values of the fields ``names``, then ``more``,
    and making a result of class ``cls`` with them: written out as
    straight-line code, as dataclasses writes ``__init__`` (a loop over
    the setters cost a third of a bulk enqueue's results)."""
    setters = _field_setters(cls)
    namespace: dict[str, Any] = {"_new": _new, "_cls": cls}
    body = ["    result = _new(_cls)"]
    for n, name in enumerate((*names, *more)):
        namespace[f"_set{n}"] = setters[name]
        body.append(f"    _set{n}(result, value{n})")
    parameters = ", ".join(f"value{n}" for n in range(len(names) + len(more)))
    code = f"def make({parameters}):\n" + "\n".join(body) + "\n    return result"
    exec(code, namespace)
    return namespace["make"]


# Signals ----------------------------------------------------------------------


class Receivers:
    """The receivers of ``signal`` for ``sender``, looked up once, to send
    the signal many times as ``signal.send(sender, **named)`` would.

    ``Signal.send`` looks up the live receivers on every call, under the
    signal's lock: about half of what a send costs when the only receivers
    are the framework's own loggers, and the worker sends two signals per
    job. A receiver connected meanwhile gets the next batch's results.
    """

    __slots__ = ("_sync", "sender", "signal")

    def __init__(self, signal, sender):
        self.signal = signal
        self.sender = sender
        try:
            # (sync receivers, async receivers), since Django 5.0.
            sync_receivers, async_receivers = signal._live_receivers(sender)
        except (AttributeError, TypeError, ValueError):
            sync_receivers, async_receivers = None, True
        # None: let Signal.send do it (async receivers, or a Django whose
        # internals differ).
        self._sync = None if async_receivers else sync_receivers

    @property
    def looked_up(self) -> bool:
        """Whether the receivers were looked up once (False: each send goes
        through ``Signal.send``)."""
        return self._sync is not None

    def send(self, **named: Any) -> None:
        """Call each receiver; an exception a receiver raises propagates, as
        from ``Signal.send``."""
        if self._sync is None:
            self.signal.send(self.sender, **named)
            return
        for receiver in self._sync:
            receiver(signal=self.signal, sender=self.sender, **named)

    def send_robust(self, **named: Any) -> list[tuple[Any, Exception]]:
        """Call every receiver, whatever the others raise, as
        ``Signal.send_robust`` does; returns the receivers that raised, each
        with its exception (for the caller to log: it knows the job)."""
        if self._sync is None:
            return [
                (receiver, response)
                for receiver, response in self.signal.send_robust(self.sender, **named)
                if isinstance(response, Exception)
            ]
        errors = []
        for receiver in self._sync:
            try:
                receiver(signal=self.signal, sender=self.sender, **named)
            except Exception as exc:
                errors.append((receiver, exc))
        return errors


def send_to_each(signal, sender, results) -> None:
    """``signal.send(sender, task_result=result)`` for each result."""
    receivers = Receivers(signal, sender)
    for result in results:
        receivers.send(task_result=result)
