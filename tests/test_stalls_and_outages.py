"""Workers that stop being heard for a while, for their own reasons (a
stalled process) or for everyone's (a database outage): a stalled worker
ends as it resumes rather than run a rescued job beside its new run; after
an outage longer than WORKER_TIMEOUT no live worker is judged dead."""

import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction

from django_bgtasks.db import database_now
from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.conftest import requires_postgresql, requires_server_database, wait_until

pytestmark = pytest.mark.slow

# Stall limit: (WORKER_TIMEOUT - HEARTBEAT_INTERVAL) / 2 = 0.75 s.
FAST = {"BGTASKS_HEARTBEAT_INTERVAL": "0.5", "BGTASKS_WORKER_TIMEOUT": "2"}


def step_lines(path) -> list[tuple[int, int, float]]:
    """The lines ``tasks.steps`` wrote: (pid, attempt, time)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        pid, attempt, at = line.split()
        lines.append((int(pid), int(attempt), float(at)))
    return lines


def all_threads_stopped(pid: int) -> bool:
    """Whether the kernel reports every thread of a process stopped ("T")."""
    states = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/stat") as stat:
            # The name in parentheses may hold spaces; the state follows it.
            states.append(stat.read().rsplit(")", 1)[1].split()[0])
    return all(state == "T" for state in states)


def reachable_now():
    """The database's time, or None while it cannot be reached."""
    try:
        return database_now(connection.alias)
    except OperationalError:
        connection.close()
        return None


@requires_server_database
def test_a_stalled_worker_ends_as_it_resumes_and_runs_nothing_beside_the_new_run(
    workers, tmp_path
):
    log, done = tmp_path / "steps", tmp_path / "done"
    job = tasks.steps.enqueue(str(log), 0.005, str(done))
    stalled = workers.start("--concurrency", "1", "--no-maintenance", env=FAST)
    wait_until(lambda: len(step_lines(log)) > 10, timeout=30, message="the first run")

    os.kill(stalled.pid, signal.SIGSTOP)
    # kill() returns before the process is off its CPU: the stall starts
    # when the kernel reports it stopped, not when the signal was sent.
    wait_until(lambda: all_threads_stopped(stalled.pid), timeout=10, message="the stop")
    stopped = time.time()
    rescuer = workers.start("--concurrency", "1", env=FAST)
    wait_until(
        lambda: sum(pid == rescuer.pid for pid, _, _ in step_lines(log)) > 10,
        timeout=30,
        message="the rescuer running the job again",
    )
    resumed = time.time()
    os.kill(stalled.pid, signal.SIGCONT)
    status = workers.wait(stalled, timeout=10)
    done.touch()
    wait_until(
        lambda: Job.objects.filter(pk=job.id, status=JobStatus.SUCCESSFUL).exists(),
        timeout=30,
        message="the new run done",
    )
    rescuer.send_signal(signal.SIGTERM)
    workers.wait(rescuer)

    lines = step_lines(log)
    old_run = [at for pid, _, at in lines if pid == stalled.pid]
    after_resume = [at for at in old_run if at >= resumed]
    print(
        f"stalled {resumed - stopped:.1f} s; the old run wrote {len(after_resume)} "
        f"step(s) after resuming (a step every 5 ms); the process ended with "
        f"status {status} ({connection.vendor})"
    )
    # Ended by the kernel, at the stall guard's timer: before it ran again.
    assert status == -signal.SIGALRM
    assert after_resume == [] and max(old_run) < stopped
    final = Job.objects.get(pk=job.id)
    assert final.status == JobStatus.SUCCESSFUL and {a for _, a, _ in lines} == {1, 2}


@requires_postgresql
@pytest.mark.skipif(
    not os.environ.get("BGTASKS_TEST_RESTART_POSTGRES"),
    reason="stops the PostgreSQL server: set BGTASKS_TEST_RESTART_POSTGRES=1 (CI does)",
)
def test_after_an_outage_longer_than_the_worker_timeout_no_live_worker_is_judged_dead(
    workers, tmp_path
):
    """Three workers run six jobs; PostgreSQL is down for 10 s, longer than
    WORKER_TIMEOUT (6 s). One worker beats every 2.5 s, so it is heard
    again up to 2.5 s after the others: they must not judge it dead. One
    of the judges is a supervisor (its maintenance, which has no heartbeat
    of its own, judges for its child)."""
    timeout = 6
    gate = tmp_path / "gate"
    with transaction.atomic():
        jobs = [tasks.wait_for_file.enqueue(str(gate), 120) for _ in range(6)]
    env = {"BGTASKS_WORKER_TIMEOUT": str(timeout), "BGTASKS_HEARTBEAT_INTERVAL": "0.5"}
    slow_beat = {**env, "BGTASKS_HEARTBEAT_INTERVAL": "2.5"}
    processes = [
        workers.start(
            *supervised, "--concurrency", "2", "--poll-interval", "0.1", env=beat
        )
        for supervised, beat in [
            (["--processes", "1"], env),
            ([], env),
            ([], slow_beat),
        ]
    ]
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.RUNNING).count() == 6,
        timeout=60,
        message="six jobs running",
    )
    # Until every worker has beaten steadily for a full timeout (and so may
    # judge others).
    first_start = WorkerProcess.objects.order_by("-started_at")[0].started_at
    wait_until(
        lambda: (
            database_now(connection.alias)
            > first_start + timedelta(seconds=timeout + 1)
        ),
        timeout=30,
        message="the workers settled",
    )

    connection.close()
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    pg_ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main"]
    subprocess.run([*pg_ctl, "stop"], check=True, timeout=120)
    down = time.monotonic()
    try:
        time.sleep(timeout + 4)  # the outage itself
    finally:
        subprocess.run([*pg_ctl, "start"], check=True, timeout=120)
    outage = time.monotonic() - down
    back = wait_until(reachable_now, timeout=60, message="PostgreSQL back")
    # Two timeouts and more after it is back: long enough for any wrong
    # judgement to be made and acted on.
    wait_until(
        lambda: (
            database_now(connection.alias) > back + timedelta(seconds=2 * timeout + 3)
        ),
        timeout=60,
        message="two timeouts after the outage",
    )
    gate.touch()
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).count() == 6,
        timeout=60,
        message="every job done",
    )
    outputs = "".join(workers.output(process) for process in processes)
    alive = [process.poll() is None for process in processes]
    for process in processes:
        process.send_signal(signal.SIGTERM)
        workers.wait(process)

    print(f"outage of {outage:.1f} s with WORKER_TIMEOUT {timeout} s: no rescue")
    assert alive == [True, True, True]
    assert "Rescued" not in outputs
    for job in Job.objects.filter(pk__in=[result.id for result in jobs]):
        assert (job.attempts, job.errors) == (1, []), job.errors
    assert not Job.objects.running().exists()
