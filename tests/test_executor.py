"""The executor's threads: which waiting job starts next, and the pause an
urgent claim asks for."""

import threading
import time

import pytest
from django.utils import timezone

from django_bgtasks.models import Job, JobStatus
from django_bgtasks.worker.executor import Executor
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """An executor with one thread, recording the jobs it starts and ends."""

    def __init__(self, max_pause: float = 30.0):
        self.started: list[int] = []
        self.outcomes: dict[int, object] = {}
        self.executor = Executor(
            concurrency=1,
            worker_id="test-worker",
            using="default",
            on_start=lambda job: self.started.append(job.pk),
            on_done=lambda job: None,
            on_finished=self._finished,
            give_up=threading.Event(),
        )
        self.executor.MAX_PAUSE = max_pause

    def _finished(self, job, task, outcome, elapsed_ms):
        self.outcomes[job.pk] = outcome

    def __enter__(self):
        self.executor.start()
        return self

    def __exit__(self, *exc_info):
        self.executor.resume()
        self.executor.stop()
        for thread in self.executor._threads:
            thread.join(10)


def running_job(priority: int = 0, number: int = 1) -> Job:
    now = timezone.now()
    return Job.objects.create(
        task_path="tests.tasks.add",
        args=[number, 1],
        priority=priority,
        status=JobStatus.RUNNING,
        attempts=1,
        run_after=now,
        enqueued_at=now,
    )


def test_a_paused_thread_starts_no_job_until_resumed():
    job = running_job()
    with Recorder() as recorder:
        recorder.executor.pause()
        recorder.executor.submit([job])
        # Bounded look for the thing that must not happen: nothing to wait for.
        assert not wait_for(lambda: recorder.started, seconds=0.3)
        recorder.executor.resume()
        wait_until(lambda: job.pk in recorder.outcomes, message="the job to run")
    assert recorder.started == [job.pk]
    assert recorder.outcomes[job.pk].return_value == 2


def test_the_best_waiting_job_starts_first_after_a_pause():
    """The urgent job claimed during the pause starts before the ones
    claimed earlier."""
    low, high = running_job(priority=0, number=1), running_job(priority=50, number=2)
    with Recorder() as recorder:
        recorder.executor.pause()
        recorder.executor.submit([low])
        recorder.executor.submit([high])
        recorder.executor.resume()
        wait_until(lambda: len(recorder.outcomes) == 2, message="both jobs to run")
    assert recorder.started == [high.pk, low.pk]
    assert recorder.outcomes[high.pk].return_value == 3
    # The result task_started was sent with, for task_finished to reuse.
    assert recorder.outcomes[high.pk].task_result.id == str(high.pk)


def test_a_pause_nobody_ends_lasts_at_most_max_pause():
    job = running_job()
    with Recorder(max_pause=0.05) as recorder:
        recorder.executor.pause()  # and never resumed
        recorder.executor.submit([job])
        wait_until(lambda: job.pk in recorder.outcomes, message="the job to run")
    assert recorder.started == [job.pk]


def wait_for(predicate, seconds: float) -> bool:
    """Whether ``predicate`` came true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
