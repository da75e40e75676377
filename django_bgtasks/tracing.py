"""Spans through OpenTelemetry, where ``opentelemetry-api`` is installed (the
``tracing`` extra); the project configures the SDK and its exporter.

An enqueue is a PRODUCER span, ``enqueue <task path>``, in the caller's
trace (the request's, under an instrumented Django); its jobs store its
context (W3C trace context, ``Job.trace_context``). Each attempt of a job
is a CONSUMER span, ``run <task path>``, the child of that enqueue span: the
run shows in the trace of the request that enqueued it, however long after
and on whichever host. A failed attempt's span has status ERROR and the
exception.

Without the package, or with no SDK configured (no span is recorded, and
there is no context to store), a job stores nothing, and each enqueue and
attempt costs a test or two. A stored context that cannot be read (a row
written by hand) gives a run span of its own trace, never an error. An
error raised by what tracing calls (a project's span processor or
propagator) is logged, never raised: the enqueue or the attempt goes on
without its span, or its stored context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from .models.transitions import Failed, TimedOut

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the optional extra is not installed
    trace = None

logger = logging.getLogger("django_bgtasks.tracing")

SYSTEM = "django_bgtasks"
_tracer = None if trace is None else trace.get_tracer(SYSTEM)
_NOTHING = contextlib.nullcontext(None)


def _active_tracer():
    """The tracer, or None where spans would record nothing: without the
    package, or while the API's own provider stands in for the SDK's (its
    spans record nothing, and cost some microseconds each)."""
    tracer = _tracer
    if tracer is None:
        return None
    if isinstance(tracer, trace.ProxyTracer) and isinstance(
        trace.get_tracer_provider(),
        trace.ProxyTracerProvider | trace.NoOpTracerProvider,
    ):
        return None
    return tracer


def enqueued(task_path: str, queue_name: str, backend: str, count: int = 1):
    """A context manager around an enqueue of ``count`` jobs: its value is
    the trace context the jobs store (a dict), or None."""
    tracer = _active_tracer()
    if tracer is None:
        return _NOTHING
    return _enqueue_span(tracer, task_path, queue_name, backend, count)


@contextlib.contextmanager
def _enqueue_span(tracer, task_path, queue_name, backend, count):
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": queue_name,
        "bgtasks.task": task_path,
        "bgtasks.backend": backend,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    what = f"the enqueue of {task_path}"
    with _logging_its_errors(
        lambda: tracer.start_as_current_span(
            f"enqueue {task_path}", kind=SpanKind.PRODUCER, attributes=attributes
        ),
        what,
    ) as started:
        carrier: dict[str, str] = {}
        if started is not None:
            try:
                propagate.inject(carrier)
            except Exception:
                carrier.clear()  # a part of it may have been written
                logger.exception("Tracing: no context stored for %s", what)
        yield carrier or None


def running(job):
    """A context manager around an attempt of ``job``: its value is the
    span, to be given the attempt's ``outcome`` (``ended``), or None."""
    tracer = _active_tracer()
    if tracer is None:
        return _NOTHING
    return _run_span(tracer, job)


def _run_span(tracer, job):
    return _logging_its_errors(lambda: _start_run_span(tracer, job), f"job {job.pk}")


def _start_run_span(tracer, job):
    return tracer.start_as_current_span(
        f"run {job.task_path}",
        context=_stored(job.trace_context),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue_name,
            "messaging.message.id": str(job.pk),
            "bgtasks.task": job.task_path,
            "bgtasks.attempt": job.attempts,
        },
        # The worker's outcome says how it failed; a raise here would be
        # the worker's own error.
        record_exception=False,
        set_status_on_exception=False,
    )


@contextlib.contextmanager
def _logging_its_errors(start_span, what: str):
    """The current span's context manager that ``start_span()`` makes, the
    errors it raises itself logged instead: its value is None if it could
    not start. What the body raises goes through it, and on."""
    try:
        span_manager = start_span()
        span = span_manager.__enter__()
    except Exception:
        logger.exception("Tracing: no span for %s, which goes on without one", what)
        span_manager = None
    if span_manager is None:
        # Outside the except: the body's own errors are not chained to it.
        yield None
        return
    try:
        yield span
    except BaseException as exc:
        try:
            span_manager.__exit__(type(exc), exc, exc.__traceback__)
        except Exception as error:
            if error is not exc:
                logger.exception("Tracing: the span of %s did not end", what)
        raise
    try:
        span_manager.__exit__(None, None, None)
    except Exception:
        logger.exception("Tracing: the span of %s did not end", what)


def _stored(trace_context: Any):
    """The context a job stored, or None (a new trace) where there is none
    or it cannot be read."""
    if not isinstance(trace_context, Mapping):
        return None
    carrier = {k: v for k, v in trace_context.items() if isinstance(v, str)}
    try:
        return propagate.extract(carrier)
    except Exception:
        return None


def ended(span, outcome) -> None:
    """Give an attempt's span its outcome (``models/transitions.py``): a
    failure or a timeout is an ERROR with its exception; a retry, snooze or
    cancel the task asked for is not."""
    if span is None:
        return
    try:
        span.set_attribute("bgtasks.outcome", type(outcome).__name__)
        if isinstance(outcome, Failed | TimedOut):
            error = outcome.error
            span.record_exception(error)
            span.set_status(
                Status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
            )
    except Exception:
        logger.exception("Tracing: an attempt's outcome could not be given to its span")
