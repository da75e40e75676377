"""Running claimed jobs on a pool of threads, and recording each outcome."""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import (
    close_old_connections,
    connections,
    reset_queries,
)

from ..backend import DatabaseBackend, task_for_job
from ..compat import TaskContext, task_started
from ..conf import bgtasks_settings
from ..dispatch import Receivers
from ..exceptions import (
    InvalidReturnValue,
    InvalidTaskArguments,
    TaskExited,
)
from ..models import Job
from ..progress import current_job
from ..serialization import NotJSON, check_size, to_json_sized

logger = logging.getLogger("django_bgtasks.worker")


@dataclass(slots=True)
class Outcome:
    """How one attempt ended."""

    return_value: Any = None
    error: BaseException | None = None
    # False for errors a retry cannot cure (unknown task, corrupt row,
    # unstorable return value).
    retryable: bool = True
    # The TaskResult sent with task_started, if the task got that far: the
    # same object goes with task_finished, brought up to date.
    task_result: Any = None


def run_attempt(job: Job, started: Receivers) -> tuple[Outcome, Any]:
    """Run the task of a claimed job once, sending ``task_started`` to
    ``started``. Returns the outcome and the task (None if the job's task
    could not be found)."""
    try:
        task = task_for_job(job)
    except Exception as exc:
        return Outcome(error=exc, retryable=False), None
    if not isinstance(job.args, list) or not isinstance(job.kwargs, dict):
        error = InvalidTaskArguments(
            f"The job's stored arguments are corrupt: args must be a JSON list "
            f"and kwargs a JSON object, not {type(job.args).__name__} and "
            f"{type(job.kwargs).__name__}."
        )
        return Outcome(error=error, retryable=False), task

    task_result = job.to_task_result(task)
    progress_token = current_job.set(job)
    try:
        # A receiver that raises fails the attempt like the task would.
        started.send(task_result=task_result)
        if task.takes_context:
            value = task.call(
                TaskContext(task_result=task_result), *job.args, **job.kwargs
            )
        else:
            value = task.call(*job.args, **job.kwargs)
    except SystemExit as exc:
        error = _chained(
            TaskExited(
                f"The task called sys.exit({exc.code!r}); a task cannot stop the "
                f"worker."
            ),
            exc,
        )
        return Outcome(error=error, task_result=task_result), task
    except BaseException as exc:
        return Outcome(error=exc, task_result=task_result), task
    finally:
        current_job.reset(progress_token)
    try:
        value, bound = to_json_sized(value, "return value")
        check_size(value, "Return values", bgtasks_settings.MAX_PAYLOAD_BYTES, bound)
    except NotJSON as exc:
        error = InvalidReturnValue(f"The task's {exc} It must be JSON.")
        return Outcome(error=error, retryable=False, task_result=task_result), task
    return Outcome(return_value=value, task_result=task_result), task


def _chained(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` with a traceback, raised from ``cause``."""
    try:
        raise error from cause
    except BaseException as raised:
        return raised


class Executor:
    """``concurrency`` daemon threads running jobs handed to ``submit``.

    Daemon threads, so a worker that has given its unfinished jobs back can
    exit without waiting for them. ``on_done(job)`` is called after each job.
    """

    # The longest pause(): a claim that takes longer must not stall the rest.
    MAX_PAUSE = 0.05

    def __init__(
        self,
        *,
        concurrency: int,
        worker_id: str,
        using: str,
        on_start,
        on_done,
        on_finished,
        give_up: threading.Event,
    ):
        self.worker_id = worker_id
        self.using = using
        self.on_start = on_start
        self.on_done = on_done
        self.on_finished = on_finished
        self.give_up = give_up
        # Claim order, also among the jobs waiting for a thread (--prefetch):
        # a high-priority job claimed later still starts first. A heap under
        # a lock, and a token per entry in a SimpleQueue that threads wait
        # on: while jobs wait, a thread takes the next without blocking,
        # where queue.PriorityQueue's condition variable costs a thread
        # switch per job.
        self._heap: list[tuple] = []
        self._heap_lock = threading.Lock()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        # Cleared while an urgent claim is on its way: see pause().
        self._may_start = threading.Event()
        self._may_start.set()
        # task_started's receivers, looked up once per batch of jobs.
        self._started_receivers = Receivers(task_started, DatabaseBackend)
        self._threads = [
            threading.Thread(
                target=self._work, name=f"bgtasks-job-{number}", daemon=True
            )
            for number in range(1, concurrency + 1)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Run ``jobs``, best first, as threads free up."""
        self._started_receivers = Receivers(task_started, DatabaseBackend)
        self._put([(0, -job.priority, job.run_after, job.id, job) for job in jobs])

    def pause(self) -> None:
        """Hold back the threads from starting more jobs until ``resume()``
        (or for at most ``MAX_PAUSE`` seconds), leaving the GIL to an urgent
        claim; see ``Worker._claim_urgent``."""
        self._may_start.clear()

    def resume(self) -> None:
        self._may_start.set()

    def stop(self) -> None:
        """Let each thread exit once the jobs handed to it have run."""
        self.resume()
        self._put(
            [(1, number, None, None, None) for number in range(len(self._threads))]
        )

    def _put(self, entries: list[tuple]) -> None:
        with self._heap_lock:
            for entry in entries:
                heapq.heappush(self._heap, entry)
        for _ in entries:
            self._tokens.put(None)

    def _next_job(self) -> Job | None:
        self._tokens.get()
        if not self._may_start.is_set():
            # Which job is next is decided after the pause: the urgent one,
            # if its claim has come in.
            self._may_start.wait(self.MAX_PAUSE)
        with self._heap_lock:
            return heapq.heappop(self._heap)[-1]

    def _work(self) -> None:
        try:
            while (job := self._next_job()) is not None:
                try:
                    if self.give_up.is_set():
                        continue  # the worker is exiting and gave the job back
                    self.on_start(job)
                    self.execute(job)
                except Exception:
                    logger.exception("Job %s: unexpected error in the worker", job.pk)
                finally:
                    self.on_done(job)
        finally:
            connections.close_all()

    def execute(self, job: Job) -> None:
        """Run one claimed job; hand its outcome to ``on_finished``."""
        if logger.isEnabledFor(logging.INFO):
            logger.info("Job %s started: %s", job.pk, describe(job))
        started = time.monotonic()
        outcome, task = run_attempt(job, self._started_receivers)
        elapsed_ms = (time.monotonic() - started) * 1000
        # After each job: a connection the task broke, or one past its
        # CONN_MAX_AGE, is not handed to the next job on this thread.
        close_old_connections()
        if settings.DEBUG:
            reset_queries()
        if self.give_up.is_set():
            # The worker is exiting and has given its jobs back (or is about
            # to): this outcome belongs to no one now.
            logger.warning(
                "Job %s ended after its worker gave it back; outcome discarded",
                job.pk,
            )
            return
        self.on_finished(job, task, outcome, elapsed_ms)


def describe(job: Job) -> str:
    return (
        f"{job.task_path} (queue {job.queue_name}, attempt "
        f"{job.attempts}/{job.max_attempts})"
    )
