"""How a job's state changes: the outcomes that end an attempt or that an
operator decides, and the one function, ``transition``, that turns an outcome
into the columns it writes.

Pure: no database, no threads, no clock but the ``now`` it is given. Every
path that ends or moves a job goes through it: the worker's batched
completion (``sql/complete.py``) and its one-row fallback (``Job.record``),
the rescue of a dead worker's jobs and the put-back of a stopping worker's
(``WorkerProcess``), and the operator's actions (``JobQuerySet.retry``,
``.cancel``, ``.run_now``: the admin's). Where a failed job becomes READY
again is decided here and nowhere else, and so is the end of a running job
an operator asked to stop (``StopRequested``): whatever way it leaves
RUNNING, it ends CANCELLED, unless it succeeded before its worker heard.

A worker's outcome applies only to a job its worker still holds (RUNNING,
that worker, that attempt): the caller's update is conditional on it. An
operator's outcome applies to the jobs its ``condition`` selects.
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.db.models import F, Q
from django.db.models.functions import Greatest

from ..backoff import Backoff
from ..compat import InvalidTask
from ..conf import bgtasks_settings
from ..exceptions import JobCancelled
from .status import JobStatus


class Verdict(enum.StrEnum):
    """What an outcome made of the job."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # READY again, due after its backoff
    FAILED = "failed"
    PUT_BACK = "put back"  # READY again, due now: its worker stopped or died
    SNOOZED = "snoozed"  # READY again, later, the attempt given back
    CANCELLED = "cancelled"
    RETRIED = "retried"  # by an operator: READY again, due now
    STOP_REQUESTED = "stop requested"  # by an operator: a running job's cancel
    MADE_DUE = "made due"  # by an operator: a delayed job due now


# The verdicts that end a job.
FINISHING = frozenset({Verdict.SUCCEEDED, Verdict.FAILED, Verdict.CANCELLED})


# Outcomes of an attempt, reported by the worker that holds the job --------


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The task returned ``return_value`` (JSON, checked). ``delete``: the
    job's row goes once its success is recorded (``delete_on_success``)."""

    return_value: Any = None
    delete: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The task raised ``error``, or its job could not be run. ``retryable``
    False: a retry cannot cure it (an unknown task, a corrupt row, a return
    value that cannot be stored)."""

    error: BaseException
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """The task asked to be retried (``RetryJob``): after ``delay`` or at
    ``at`` (neither: its backoff). The attempt counts."""

    error: BaseException
    delay: timedelta | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Snoozed:
    """The task asked to run again later (``SnoozeJob``), after ``delay`` or
    at ``at``; the attempt does not count and no error is recorded."""

    error: BaseException
    delay: timedelta | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """The job's ``expires_at`` had passed when its worker came to start
    it: it never runs. The claim's attempt is given back."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class CancelledItself:
    """The task cancelled its job (``CancelJob``); ``error`` records why."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The attempt ran past the job's timeout; its process is ended.
    ``retryable`` False: the task's ``retry_on``/``fail_on`` say not."""

    error: BaseException
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The worker stopped (asked to, or for a neighbour's timeout) before the
    job finished and gives it back: the attempt does not count. ``error``
    (if any) is recorded as the attempt's."""

    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """The job's worker died (it stopped heartbeating) while running it. If
    the job ran beside others, the attempt does not count and the job runs
    alone from then on; if it ran alone (it had to, or ``alone``: its
    worker had one thread), the crash was its own."""

    error: BaseException
    alone: bool = False


# Outcomes an operator decides, for many jobs at once ------------------------


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A job that has not started (READY, or WAITING in a workflow) will
    not run."""

    wakes_workers: ClassVar[bool] = False

    def condition(self, now: datetime) -> Q:
        return Q(status__in=[JobStatus.READY, JobStatus.WAITING])


@dataclass(frozen=True, slots=True)
class StopRequested:
    """A running job is asked to stop (its cancel, by ``by``): its worker
    hears of it and the job ends CANCELLED (see ``transition``). The job is
    asked once: a second request keeps the first's time and author."""

    by: str | None = None

    wakes_workers: ClassVar[bool] = False

    def condition(self, now: datetime) -> Q:
        return Q(status=JobStatus.RUNNING, cancel_requested_at__isnull=True)


@dataclass(frozen=True, slots=True)
class Retried:
    """A failed or cancelled job runs again, due now. Its attempts are
    extended, not reset: a job that used them all gets one more."""

    wakes_workers: ClassVar[bool] = True

    def condition(self, now: datetime) -> Q:
        return Q(status__in=[JobStatus.FAILED, JobStatus.CANCELLED])


@dataclass(frozen=True, slots=True)
class MadeDue:
    """A delayed job is due now."""

    wakes_workers: ClassVar[bool] = True

    def condition(self, now: datetime) -> Q:
        return Q(status=JobStatus.READY, run_after__gt=now)


WorkerOutcome = (
    Succeeded
    | Failed
    | RetryRequested
    | Snoozed
    | CancelledItself
    | Expired
    | TimedOut
    | Interrupted
    | Lost
)
OperatorOutcome = Cancelled | StopRequested | Retried | MadeDue
Outcome = WorkerOutcome | OperatorOutcome

# An operator's actions by name, with the outcomes each applies: their
# conditions say which jobs each changes (a job's admin page offers the
# actions that apply to it; ``manage.py bgtasks`` counts them in a dry run).
OPERATOR_ACTIONS: dict[str, tuple[OperatorOutcome, ...]] = {
    "retry": (Retried(),),
    "cancel": (Cancelled(), StopRequested()),
    "run_now": (MadeDue(),),
}


@dataclass(frozen=True, slots=True)
class Transition:
    """What an outcome makes of a job: the verdict, and the columns to write
    (by field name; values, or expressions over the row's own columns for an
    operator's outcome)."""

    verdict: Verdict
    changes: dict[str, Any]
    deletes: bool = False  # the row goes instead (the changes are its last state)

    @property
    def finishes(self) -> bool:
        """Whether the job ends here (the framework's ``task_finished``)."""
        return self.verdict in FINISHING

    @property
    def void_if_asked_to_stop(self) -> bool:
        """Whether this end of an attempt must not be written if an operator
        has asked the job to stop since its holder last looked: the write is
        conditional on no request, and the outcome decided again with one.
        A success stands, and so does an end CANCELLED."""
        return self.verdict not in (Verdict.SUCCEEDED, Verdict.CANCELLED)


def transition(job, outcome: Outcome, *, now: datetime) -> Transition:
    """The verdict and column changes ``outcome`` makes of ``job``.

    ``job`` is the job as its holder knows it (``attempts``,
    ``max_attempts``, ``backoff``, ``errors``, ``worker_id``,
    ``runs_alone``, ``cancel_requested_at`` and ``_by``); an operator's
    outcome needs none and may be given None.

    A job its holder knows was asked to stop (``cancel_requested_at`` set)
    ends CANCELLED, however the attempt ended: it is not retried, put back or
    failed, and a task that returns once it was asked returns because it was.
    """
    match outcome:
        case Succeeded() if job.cancel_requested_at is None:  # the common case
            return Transition(
                Verdict.SUCCEEDED,
                {
                    "status": JobStatus.SUCCESSFUL,
                    "return_value": outcome.return_value,
                    "finished_at": now,
                    "worker_id": None,
                },
                outcome.delete,
            )
        case _ if (
            job is not None
            and job.cancel_requested_at is not None
            and isinstance(outcome, WorkerOutcome)
        ):
            return _cancelled_on_request(job, outcome, now)
        case Failed(error, retryable):
            errors = _with_error(job, error, now)
            if retryable and job.attempts < job.max_attempts:
                return _retry(job, errors, now)
            return _failed(errors, now)
        case RetryRequested(error, delay, at):
            errors = _with_error(job, error, now)
            if job.attempts < job.max_attempts:
                return _retry(job, errors, now, _later(now, delay, at))
            return _failed(errors, now)
        case Snoozed(_, delay, at):
            return _ended(
                Verdict.SNOOZED,
                status=JobStatus.READY,
                attempts=max(job.attempts - 1, 0),
                run_after=_later(now, delay, at),
            )
        case Expired(error):
            return _ended(
                Verdict.CANCELLED,
                status=JobStatus.CANCELLED,
                attempts=max(job.attempts - 1, 0),
                errors=_with_error(job, error, now),
                finished_at=now,
            )
        case CancelledItself(error):
            return _ended(
                Verdict.CANCELLED,
                status=JobStatus.CANCELLED,
                errors=_with_error(job, error, now),
                finished_at=now,
            )
        case TimedOut(error, retryable):
            return transition(job, Failed(error, retryable), now=now)
        case Interrupted(error):
            # Not the job's doing: the attempt is given back, and the job
            # keeps its place in the queue (its priority and run_after).
            errors = _with_error(job, error, now) if error else job.error_list
            return _ended(
                Verdict.PUT_BACK,
                status=JobStatus.READY,
                attempts=max(job.attempts - 1, 0),
                errors=errors,
            )
        case Lost(error, alone):
            errors = _with_error(job, error, now)
            if not (alone or job.runs_alone):
                # Its process died while it ran beside other jobs, and any
                # of them may have crashed it: the attempt is given back,
                # and from now on it runs alone, where a crash is its own.
                return _ended(
                    Verdict.PUT_BACK,
                    status=JobStatus.READY,
                    attempts=max(job.attempts - 1, 0),
                    errors=errors,
                    runs_alone=True,
                )
            if job.attempts < job.max_attempts:
                # Its place kept: a rescued job is not sent behind the jobs
                # enqueued while its worker was dying.
                return _ended(Verdict.PUT_BACK, status=JobStatus.READY, errors=errors)
            return _failed(errors, now)
        case Cancelled():
            return Transition(
                Verdict.CANCELLED,
                {"status": JobStatus.CANCELLED, "finished_at": now},
            )
        case Retried():
            return Transition(
                Verdict.RETRIED,
                {
                    "status": JobStatus.READY,
                    "run_after": now,
                    "finished_at": None,
                    "return_value": None,
                    "progress": None,
                    "max_attempts": Greatest("max_attempts", F("attempts") + 1),
                    # An operator's retry runs it, whatever its expiry said.
                    "expires_at": None,
                    # Nor is it still asked to stop.
                    "cancel_requested_at": None,
                    "cancel_requested_by": None,
                },
            )
        case StopRequested(by):
            return Transition(
                Verdict.STOP_REQUESTED,
                {"cancel_requested_at": now, "cancel_requested_by": by},
            )
        case MadeDue():
            return Transition(Verdict.MADE_DUE, {"run_after": now})
    raise TypeError(f"Not an outcome: {outcome!r}")


def _cancelled_on_request(job, outcome: WorkerOutcome, now: datetime) -> Transition:
    """A job asked to stop has left RUNNING without succeeding: CANCELLED,
    with an error that says who asked and when (raised from what ended the
    attempt, if anything did)."""
    by = f" by {job.cancel_requested_by}" if job.cancel_requested_by else ""
    at = job.cancel_requested_at.isoformat()
    error = JobCancelled(f"The job was cancelled{by} (asked at {at}).")
    error.__cause__ = getattr(outcome, "error", None)
    return _ended(
        Verdict.CANCELLED,
        status=JobStatus.CANCELLED,
        errors=_with_error(job, error, now),
        finished_at=now,
    )


def _ended(verdict: Verdict, **changes: Any) -> Transition:
    """The end of an attempt: the job leaves its worker."""
    return Transition(verdict, {**changes, "worker_id": None})


def _later(
    now: datetime, delay: timedelta | None, at: datetime | None
) -> datetime | None:
    """When a job asked to run again is due: ``at``, or ``delay`` from
    ``now`` (the database's clock); None if it named no time."""
    if at is not None:
        return at
    return None if delay is None else now + delay


def _failed(errors: list[dict], now: datetime) -> Transition:
    return _ended(
        Verdict.FAILED, status=JobStatus.FAILED, errors=errors, finished_at=now
    )


def _retry(
    job, errors: list[dict], now: datetime, due: datetime | None = None
) -> Transition:
    """READY again, due at ``due`` or else after the job's backoff."""
    if due is None:
        try:
            backoff = Backoff.coerce(job.backoff or bgtasks_settings.BACKOFF)
        except InvalidTask:  # a corrupt stored backoff: the default
            backoff = Backoff.coerce(bgtasks_settings.BACKOFF)
        due = now + backoff.delay(job.attempts)
    return _ended(
        Verdict.RETRYING, status=JobStatus.READY, run_after=due, errors=errors
    )


def _with_error(job, error: BaseException, now: datetime) -> list[dict]:
    """The job's errors, with ``error`` as its current attempt's."""
    entry = error_entry(error, attempt=job.attempts, worker_id=job.worker_id, at=now)
    return [*job.error_list, entry]


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def storable_text(text: str) -> str:
    """``text`` as every supported database stores it in JSON: NUL characters
    and lone surrogates (which an exception message may hold) escaped."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_entry(
    exc: BaseException, *, attempt: int, worker_id: str | None, at: datetime
) -> dict[str, Any]:
    """One attempt's error, as stored in ``Job.errors``."""
    return {
        "exception_class_path": storable_text(class_path(type(exc))),
        "traceback": storable_text("".join(traceback.format_exception(exc))),
        "attempt": attempt,
        "worker_id": worker_id,
        "at": at.isoformat(),
    }
