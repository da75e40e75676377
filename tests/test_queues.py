"""Pausing queues: no claim takes a paused queue's jobs, on any worker, from
its next claim; a resume wakes its workers. Real workers on each database."""

import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from django_bgtasks.models import Job, JobStatus, Queue
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.conftest import run_in_process, wait_until


def statuses(*results) -> list[str]:
    return [Job.objects.get(pk=result.id).status for result in results]


@pytest.mark.django_db(transaction=True)
def test_a_paused_queue_starts_nothing_and_runs_again_once_resumed():
    images = tasks.echo.using(queue_name="images").enqueue("image")
    default = tasks.echo.enqueue("default")
    assert Queue.objects.pause("images", by="tests") == 1

    worker = run_in_process()  # a burst worker: it ends with images paused

    assert statuses(images, default) == ["READY", "SUCCESSFUL"]
    assert worker is not None
    assert Queue.objects.resume("images") == 1
    run_in_process()
    assert statuses(images, default) == ["SUCCESSFUL", "SUCCESSFUL"]


@pytest.mark.django_db(transaction=True)
def test_a_worker_of_one_paused_queue_claims_nothing_from_it():
    images = tasks.echo.using(queue_name="images").enqueue("image")
    Queue.objects.pause("images")
    run_in_process(queues=["images"])
    run_in_process(queues=["images", "default"])
    assert statuses(images) == ["READY"]


@pytest.mark.django_db
def test_pause_and_resume_say_what_they_changed_and_who_paused():
    assert Queue.objects.pause("emails", "images", by="alice") == 2
    assert Queue.objects.pause("emails", by="bob") == 0  # paused already
    emails = Queue.objects.get(name="emails")
    assert emails.is_paused and emails.paused_by == "alice"
    assert Queue.objects.paused_names() == {"emails", "images"}
    assert Queue.objects.resume("emails", "never-paused") == 1
    assert Queue.objects.paused_names() == {"images"}
    assert not Queue.objects.get(name="emails").is_paused
    with pytest.raises(ValueError, match="queue name"):
        Queue.objects.pause("")
    with pytest.raises(ValueError, match="queue name"):
        Queue.objects.pause("x" * 65)


@pytest.mark.django_db
def test_run_jobs_leaves_a_paused_queues_jobs():
    images = tasks.echo.using(queue_name="images").enqueue("image")
    Queue.objects.pause("images")
    assert run_jobs() == []
    Queue.objects.resume("images")
    assert [r.id for r in run_jobs()] == [images.id]


@pytest.mark.django_db
def test_the_queues_command(capsys):
    call_command("queues", "list")
    assert "No queue is paused." in capsys.readouterr().out
    call_command("queues", "pause", "images", "emails", "--by", "ops")
    assert "Paused 2 queue(s)" in capsys.readouterr().out
    call_command("queues", "list")
    listing = capsys.readouterr().out
    assert "emails: paused at" in listing and "by ops" in listing
    call_command("queues", "resume", "emails")
    assert "Resumed 1 queue(s)" in capsys.readouterr().out
    assert Queue.objects.paused_names() == {"images"}
    with pytest.raises(CommandError, match="queue name"):
        call_command("queues", "pause", "x" * 65)


def started_in(queue: str) -> int:
    return Job.objects.filter(queue_name=queue, started_at__isnull=False).count()


@pytest.mark.slow
def test_a_pause_holds_on_running_workers_and_their_replacements(workers):
    """Workers already running stop starting a queue's jobs at their next
    claim after the pause commits; a worker started while it is paused
    starts none; a resume wakes them."""
    postgres = connection.vendor == "postgresql"
    # On PostgreSQL a long poll: only NOTIFY can wake them within the test.
    poll = "30" if postgres else "0.2"
    first = workers.start(
        "--concurrency", "2", "--prefetch", "0", "--poll-interval", poll
    )
    tasks.sleep_for.using(queue_name="images").enqueue_many(
        ((0.05,), {}) for _ in range(400)
    )
    wait_until(lambda: started_in("images") >= 5, timeout=30, message="jobs running")
    Queue.objects.pause("images")
    paused_at = time.monotonic()
    # Within a claim or two, the starts stop: count them, then check none
    # follows.
    settled = wait_until(
        lambda: (
            Job.objects.filter(queue_name="images", status=JobStatus.RUNNING).count()
            == 0
        ),
        timeout=10,
        message="the running jobs finished",
    )
    assert settled
    started = started_in("images")
    second = workers.start("--concurrency", "2", "--poll-interval", poll)
    time.sleep(1.5)  # the time a start would take to show; nothing to wait for
    assert started_in("images") == started
    print(
        f"{started} job(s) started; the last running one ended "
        f"{time.monotonic() - paused_at:.2f} s after the pause"
    )

    resumed = time.monotonic()
    Queue.objects.resume("images")
    wait_until(lambda: started_in("images") > started, timeout=5, message="a start")
    woke = time.monotonic() - resumed
    print(f"first start {woke * 1000:.0f} ms after the resume ({connection.vendor})")
    if postgres:
        assert woke < 1.0  # NOTIFY, not the 30 s poll
    for process in (first, second):
        process.terminate()
        workers.wait(process)
