"""Tasks the tests enqueue. Most use the framework's own ``@task`` (Django's
``django.tasks``, or the backport on Django 5.2); the options of the database
backend come through it or through ``django_bgtasks.task``."""

import inspect
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.db import connections

from django_bgtasks import Backoff
from django_bgtasks import task as bg_task
from django_bgtasks.compat import BACKPORT
from django_bgtasks.models import Job
from django_bgtasks.unique import Unique

if BACKPORT:
    from django_tasks import task
else:
    from django.tasks import task

from .models import Effect, Execution

# Django 6.1 and the backport pass @task's extra keywords to the backend's
# task class; Django 6.0's @task takes none.
FRAMEWORK_FORWARDS_OPTIONS = any(
    parameter.kind is parameter.VAR_KEYWORD
    for parameter in inspect.signature(task).parameters.values()
)


@(task if FRAMEWORK_FORWARDS_OPTIONS else bg_task)(
    max_attempts=7, backoff=Backoff(initial=5)
)
def with_framework_options():
    return "framework"


def record_execution(result, label: str) -> int:
    """Record this run of the job of ``result`` as an Execution; its claim
    number (the unique (job, claim) constraint catches a job claimed twice
    at once)."""
    claim = len(result.worker_ids)
    Execution.objects.create(
        job_id=int(result.id),
        label=label,
        claim=claim,
        worker_id=result.worker_ids[-1],
        pid=os.getpid(),
    )
    return claim


@task
def add(a, b):
    return a + b


@task
def echo(*args, **kwargs):
    return {"args": args, "kwargs": kwargs}


@task(takes_context=True)
def record(context, label=""):
    """Log this execution; the unique (job, claim) constraint catches a job
    claimed twice at once."""
    result = context.task_result
    record_execution(result, label)
    return label


@task(priority=5, queue_name="other")
def in_other_queue():
    return "other"


@task
async def async_add(a, b):
    return a + b


@bg_task(max_attempts=3)
def always_fails(message="boom"):
    raise ValueError(message)


@bg_task(max_attempts=4, takes_context=True)
def fails_until_attempt(context, succeed_at):
    if context.attempt < succeed_at:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@bg_task(max_attempts=2, backoff={"initial": 60, "factor": 2, "jitter": 0})
def fails_with_slow_backoff():
    raise ValueError("try again later")


@task
def returns_object():
    return object()


@bg_task(max_attempts=3)
def calls_exit():
    sys.exit(3)


@task
def wait_for_file(path, timeout=30.0):
    """Run until ``path`` exists (a test creates it), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)
    return "released"


@task(takes_context=True)
def steps(context, path, pause=0.01, until=None):
    """Append a line ``pid attempt time`` to ``path`` every ``pause`` s,
    until the file ``until`` exists: a run that can be seen running."""
    with open(path, "a", buffering=1) as log:
        while until is None or not Path(until).exists():
            log.write(f"{os.getpid()} {context.attempt} {time.time():.6f}\n")
            time.sleep(pause)
    return "stepped"


@task(takes_context=True)
def on_host(context, path, pause=0.0):
    """Write ``start``/``end`` lines ``job attempt host`` to ``path`` around
    a pause of ``pause`` s; return this host's name."""
    run = f"{context.task_result.id} {context.attempt} {socket.gethostname()}"
    with open(path, "a") as log:
        log.write(f"start {run}\n")
    # Not time.sleep(): under libfaketime (a skewed host) it fails, EINVAL.
    threading.Event().wait(pause)
    with open(path, "a") as log:
        log.write(f"end {run}\n")
    return socket.gethostname()


@task
def crashes(after=0.0):
    """Crash the process (a segmentation fault) after ``after`` seconds."""
    import ctypes

    time.sleep(after)
    ctypes.string_at(0)  # reads address 0


@task
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def plain_function():
    """Not a task: the worker must refuse a job that names it."""
    return "should never run"


@bg_task(max_attempts=2)
def fails_with_odd_text():
    """Raise with text a database refuses as-is in JSON."""
    raise ValueError("nul " + chr(0) + " and " + chr(0xDCFF))


@task
def returns_text(size):
    return "x" * size


@task
def reports_progress(steps):
    from django_bgtasks import report_progress

    reported = [
        report_progress(step, steps, f"step {step}") for step in range(1, steps + 1)
    ]
    return all(reported)


@bg_task(max_attempts=2, timeout=0.5)
def overruns(seconds=30.0):
    """Sleeps past its half-second timeout."""
    time.sleep(seconds)
    return "finished"


@bg_task(max_attempts=3, timeout=0.5, retry_on=ConnectionError)
def overruns_once(seconds=30.0):
    """Sleeps past its timeout, which its retry_on does not list."""
    time.sleep(seconds)


@bg_task(max_attempts=10, takes_context=True)
def chaos(context, label, pause=0.0):
    """Record the run, maybe pause: the chaos test kills workers meanwhile."""
    result = context.task_result
    record_execution(result, label)
    if pause:
        time.sleep(pause)
    return label


@task
def connection_identity(break_it: bool = False) -> str:
    """Which database session this job's thread uses: the server's id for
    it, or on SQLite a random mark kept in a temporary table, which lives as
    long as its connection; ``break_it``: end that session from inside, as a
    server restart would, and fail."""
    import uuid

    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
        elif connection.vendor == "mysql":
            cursor.execute("SELECT CONNECTION_ID()")
        else:
            cursor.execute("CREATE TEMP TABLE IF NOT EXISTS session_mark (mark)")
            cursor.execute(
                "INSERT INTO session_mark SELECT %s "
                "WHERE NOT EXISTS (SELECT 1 FROM session_mark)",
                [uuid.uuid4().hex],
            )
            cursor.execute("SELECT mark FROM session_mark")
        identity = str(cursor.fetchone()[0])
        if break_it:
            connection.connection.close()  # behind Django's back
            cursor.execute("SELECT 1")  # fails: errors_occurred
    return identity


SLOW_BACKOFF = {"initial": 600, "factor": 2, "jitter": 0}


@bg_task(max_attempts=3, backoff=SLOW_BACKOFF, takes_context=True)
def steered(context, steps):
    """At its n-th claim, does what ``steps[n - 1]`` says: "retry" (after its
    backoff), "retry:SECONDS", "retry-at:ISO", "snooze:SECONDS", "fail",
    "cancel", "error"; anything else is returned."""
    from datetime import datetime

    from django_bgtasks import CancelJob, FailJob, RetryJob, SnoozeJob

    step = steps[context.attempt - 1]
    verb, _, value = step.partition(":")
    match verb:
        case "retry" if value:
            raise RetryJob("later, please", delay=float(value))
        case "retry":
            raise RetryJob("after the backoff")
        case "retry-at":
            raise RetryJob(at=datetime.fromisoformat(value))
        case "snooze":
            raise SnoozeJob(delay=float(value))
        case "fail":
            raise FailJob("this input will never work")
        case "cancel":
            try:
                raise LookupError("the order is gone")
            except LookupError as exc:
                raise CancelJob("nothing left to do") from exc
        case "error":
            raise RuntimeError("an ordinary error")
    return step


@(task if FRAMEWORK_FORWARDS_OPTIONS else bg_task)(
    max_attempts=3,
    backoff=SLOW_BACKOFF,
    retry_on=ConnectionError,
    fail_on=ConnectionRefusedError,
)
def raises_builtin(name):
    """Raises the built-in exception called ``name``: ConnectionErrors are
    retried, but ConnectionRefusedError (one of them) and the rest fail."""
    import builtins

    raise getattr(builtins, name)(name)


@bg_task(store_result=False)
def result_not_stored():
    return object()  # not JSON: neither stored nor checked


@bg_task(delete_on_success=True, max_attempts=1)
def deleted_on_success(fail=False):
    if fail:
        raise RuntimeError("kept: it failed")
    return "gone"


@bg_task(expires=timedelta(minutes=10))
def expires_soon():
    return "in time"


@bg_task(unique=True)
def unique_while_active(n):
    return n


@bg_task(unique=Unique(until="started"))
def unique_until_started(label):
    """Enqueues its own duplicate while it is the only job of its task: a
    new job, since a claimed job no longer holds its key."""
    from django_bgtasks.models import Job

    if Job.objects.filter(task_path=unique_until_started.module_path).count() == 1:
        return unique_until_started.enqueue(label).id
    return None


@bg_task(unique=True, takes_context=True)
def unique_enqueues_itself(context, label):
    """Enqueues its own duplicate while it runs: itself, since a running
    job holds its key until it finishes."""
    return unique_enqueues_itself.enqueue(label).id


# Ten years: two enqueues of a test never straddle two periods.
@bg_task(unique=Unique(period=timedelta(days=3650)))
def once_per_period(n):
    return n


@task
def total(values, extra=0):
    """A chord's callback: the sum of its members' results (None counts 0)."""
    return sum(value or 0 for value in values) + extra


@bg_task(max_attempts=1)
def fails_at_once(*args):
    raise ValueError("this step fails")


@bg_task(max_attempts=10, takes_context=True)
def workflow_step(context, *values, label="", pause=0.0):
    """A workflow step for the kill tests: records each run, maybe pauses,
    and returns its label with what it was handed."""
    result = context.task_result
    record_execution(result, label)
    if pause:
        time.sleep(pause)
    return [label, *values]


@bg_task(max_attempts=10, takes_context=True)
def claimed_step(context, *values, label="", pause=0.0, gate=""):
    """workflow_step that also names the claim that ran it: returns
    ``[label, claim, *values]``, so a step handed a result from a run whose
    end was never recorded (a killed one) shows it. ``gate``: a file to wait
    for (at most 30 s) before returning."""
    result = context.task_result
    claim = record_execution(result, label)
    if pause:
        time.sleep(pause)
    deadline = time.monotonic() + 30
    while gate and not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} did not appear")
        time.sleep(0.01)
    return [label, claim, *values]


@bg_task(atomic=True, max_attempts=10, takes_context=True)
def counts_once(context, label="", pause=0.0, fail=False, unstorable=False):
    """An atomic task: its Effect row commits with its success, or not at all."""
    Effect.objects.create(job_id=int(context.task_result.id), label=label)
    if pause:
        time.sleep(pause)
    if fail:
        raise ValueError("this run's writes are rolled back")
    if unstorable:
        return object()
    return label


@bg_task(atomic=True, takes_context=True)
def taken_away_while_it_runs(context):
    """An atomic task whose job another worker takes (a rescue, as seen
    from a second connection) before it ends."""
    job_id = int(context.task_result.id)

    def take_it():
        Job.objects.filter(pk=job_id).update(worker_id="another-worker")
        connections.close_all()

    thread = threading.Thread(target=take_it)
    thread.start()
    thread.join()
    Effect.objects.create(job_id=job_id, label="taken away")
    return "done"


@bg_task(max_attempts=3, takes_context=True)
def until_cancelled(context, path, via="context", timeout=60.0):
    """Record the run, then run until its job is asked to stop (read from the
    context, or with ``django_bgtasks.cancel_requested()``); write the time
    it noticed (``time.time()``) to ``path`` and return. A later attempt (a
    retry) returns at once."""
    from django_bgtasks import cancel_requested

    record_execution(context.task_result, "until_cancelled")
    if context.attempt > 1:
        return "ran again"
    asked = (lambda: context.cancel_requested) if via == "context" else cancel_requested
    deadline = time.monotonic() + timeout
    while not asked():
        if time.monotonic() > deadline:
            raise TimeoutError("never asked to stop")
        time.sleep(0.005)
    Path(path).write_text(f"{time.time():.6f}")
    return "noticed"


@bg_task(max_attempts=3, takes_context=True)
def reports_until_stopped(context, steps=6000, pause=0.01):
    """Record the run, then report progress step by step (a minute in all)."""
    from django_bgtasks import report_progress

    record_execution(context.task_result, "reports")
    for step in range(steps):
        report_progress(step, steps, "working")
        time.sleep(pause)
    return "all reported"


@bg_task(max_attempts=3, takes_context=True)
def ignores_cancel(context, seconds=60.0):
    """Record the run, then sleep, deaf to any request to stop."""
    record_execution(context.task_result, "ignores")
    time.sleep(seconds)
    return "slept"


def terminated_child(*, by_itself: bool) -> int:
    """Fork a child without exec and end it with SIGTERM, sent by the child
    itself or by this thread as soon as it is forked (as a pool's terminate
    may, before the child has run a line). Its exit code: -15 where SIGTERM
    ended it, 3 where it did not."""
    child = os.fork()
    if child == 0:
        try:
            if by_itself:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                time.sleep(2)  # not ended by the SIGTERM: ends with 3
        finally:
            os._exit(3)
    if not by_itself:
        os.kill(child, signal.SIGTERM)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


@task
def forks_children_that_are_terminated():
    """Forks two children, ends each with SIGTERM (``terminated_child``) and
    returns their exit codes, -15 each where SIGTERM ends them: a task's
    children's signals are theirs, not the worker's."""
    return [terminated_child(by_itself=True), terminated_child(by_itself=False)]
