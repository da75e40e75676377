"""Real worker processes under a supervisor, killed, timed out, restarted."""

import os
import random
import signal
import subprocess
import time

import pytest
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.conftest import requires_postgresql, requires_server_database, wait_until
from tests.models import Execution

# Several real processes each: on the Django 6.1 leg of scripts/test these
# are left to the Django 5.2 leg (they test processes, not Django).
pytestmark = pytest.mark.slow

# Heartbeats every 0.5 s, dead after 2 s: recovery in seconds.
FAST_RESCUE = {"BGTASKS_HEARTBEAT_INTERVAL": "0.5", "BGTASKS_WORKER_TIMEOUT": "2"}


def worker_rows():
    return list(WorkerProcess.objects.order_by("pk"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_supervisor_restarts_a_killed_child_and_stops_cleanly(workers):
    supervisor = workers.start(
        "--processes", "2", "--concurrency", "1", env=FAST_RESCUE
    )
    first = wait_until(
        lambda: len(worker_rows()) == 2 and worker_rows(),
        timeout=60,
        message="two worker processes",
    )
    victim = first[0]
    os.kill(victim.pid, signal.SIGKILL)
    # A new child takes its place; the dead one's row is rescued away.
    wait_until(
        lambda: (
            len(rows := worker_rows()) == 2 and victim.pk not in [r.pk for r in rows]
        ),
        timeout=30,
        message="the killed child replaced and its row rescued",
    )
    pids = [row.pid for row in worker_rows()]

    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor, timeout=30) == 0, workers.output(supervisor)
    assert not WorkerProcess.objects.exists()
    assert not any(pid_alive(pid) for pid in pids)
    output = workers.output(supervisor)
    assert "Worker process 1 died (signal 9)" in output or (
        "Worker process 2 died (signal 9)" in output
    )


def test_one_ctrl_c_drains_the_children(workers, tmp_path):
    gate = tmp_path / "gate"
    result = tasks.wait_for_file.enqueue(str(gate))
    supervisor = workers.start(
        "--processes", "2", "--concurrency", "1", new_session=True
    )
    wait_until(
        lambda: f"Job {result.id} started" in workers.output(supervisor),
        timeout=60,
        message="the job started",
    )
    # As a terminal's Ctrl-C does: SIGINT to the whole process group.
    os.killpg(supervisor.pid, signal.SIGINT)
    wait_until(
        lambda: "finishing 1 running job(s)" in workers.output(supervisor),
        message="the child draining",
    )
    gate.touch()
    assert workers.wait(supervisor, timeout=30) == 0, workers.output(supervisor)
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert "exiting at once" not in workers.output(supervisor)


def test_a_child_signalled_with_its_supervisor_drains_its_jobs(workers, tmp_path):
    """SIGTERM to the supervisor and to its child as well (a signal to the
    whole process group, as systemd's default KillMode sends it) is one
    stop request for the child: it finishes its job. Sent in that order on
    purpose: the child hears the supervisor's "stop" first, the order in
    which it once took its own signal for a second request."""
    gate = tmp_path / "gate"
    result = tasks.wait_for_file.enqueue(str(gate))
    supervisor = workers.start("--processes", "1", "--concurrency", "1")
    wait_until(
        lambda: f"Job {result.id} started" in workers.output(supervisor),
        timeout=60,
        message="the job started",
    )
    [child] = WorkerProcess.objects.values_list("pid", flat=True)
    supervisor.send_signal(signal.SIGTERM)
    wait_until(
        lambda: (
            "the supervisor received: finishing 1 running job(s)"
            in workers.output(supervisor)
        ),
        message="the child draining at its supervisor's request",
    )
    os.kill(child, signal.SIGTERM)
    wait_until(
        lambda: "SIGTERM received: already stopping" in workers.output(supervisor),
        message="the child seeing its own SIGTERM",
    )
    gate.touch()
    assert workers.wait(supervisor, timeout=30) == 0, workers.output(supervisor)
    result.refresh()
    assert result.status == "SUCCESSFUL", workers.output(supervisor)
    assert "exiting at once" not in workers.output(supervisor)


def test_the_supervisor_runs_the_system_checks_and_its_children_do_not(
    workers, tmp_path
):
    log = tmp_path / "checks.log"
    for number in range(4):
        tasks.record.enqueue(label=str(number))
    supervisor = workers.start(
        "--processes", "2", "--burst", env={"BGTASKS_TEST_CHECKS_LOG": str(log)}
    )
    assert workers.wait(supervisor) == 0
    assert Execution.objects.count() == 4
    assert log.read_text().split() == [str(supervisor.pid)]


def test_children_get_the_supervisors_settings_and_pythonpath(workers, tmp_path):
    """Settings found only through ``--pythonpath`` reach the children too
    (without it they could not import them, and crashed in a loop)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "settings_elsewhere.py").write_text("from tests.settings import *\n")
    for number in range(2):
        tasks.record.enqueue(label=str(number))
    supervisor = workers.start(
        "--processes", "1", "--burst",
        "--settings", "settings_elsewhere", "--pythonpath", str(elsewhere),
    )  # fmt: skip
    assert workers.wait(supervisor) == 0, workers.output(supervisor)
    assert Execution.objects.count() == 2


def test_max_jobs_per_child_recycles_children(workers):
    with transaction.atomic():
        for number in range(12):
            tasks.record.enqueue(label=str(number))
    supervisor = workers.start(
        "--processes",
        "1",
        "--concurrency",
        "1",
        "--max-jobs-per-child",
        "5",
        "--poll-interval",
        "0.05",
    )
    wait_until(
        lambda: Execution.objects.count() == 12, timeout=90, message="all jobs run"
    )
    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor, timeout=30) == 0
    per_process = Execution.objects.values("pid").annotate(n=Count("id"))
    assert sorted(row["n"] for row in per_process) == [2, 5, 5]
    assert "stopped (max jobs or memory reached); starting a new one" in (
        workers.output(supervisor)
    )


def test_a_timed_out_job_is_stopped_and_its_process_replaced(workers, tmp_path):
    overrun = tasks.overruns.using(max_attempts=1).enqueue(120.0)
    gate = tmp_path / "gate"
    neighbour = tasks.wait_for_file.enqueue(str(gate))
    supervisor = workers.start("--processes", "1", "--concurrency", "2")
    wait_until(
        lambda: Job.objects.get(pk=overrun.id).status == JobStatus.FAILED,
        timeout=60,
        message="the timeout recorded",
    )
    overrun.refresh()
    assert overrun.errors[0].exception_class_path.endswith("JobTimeout")
    # Its neighbour went back and runs again in the new process.
    wait_until(
        lambda: "ended itself" in workers.output(supervisor),
        message="the child replaced",
    )
    gate.touch()
    wait_until(
        lambda: Job.objects.get(pk=neighbour.id).status == JobStatus.SUCCESSFUL,
        timeout=60,
        message="the neighbour finished in a new process",
    )
    neighbour.refresh()
    assert neighbour.errors[0].exception_class_path.endswith("JobInterrupted")
    assert neighbour.attempts == 2
    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor, timeout=30) == 0


def test_a_standalone_worker_replaces_itself_after_a_timeout(workers):
    result = tasks.overruns.enqueue(120.0)  # two attempts, both time out
    process = workers.start("--concurrency", "1")
    wait_until(
        lambda: Job.objects.get(pk=result.id).status == JobStatus.FAILED,
        timeout=60,
        message="both attempts timed out",
    )
    result.refresh()
    assert [e.exception_class_path.rsplit(".", 1)[-1] for e in result.errors] == [
        "JobTimeout",
        "JobTimeout",
    ]
    assert len(set(result.worker_ids)) == 2  # a fresh worker each time
    assert process.poll() is None  # same process id, new program
    wait_until(  # the third program's row, not the second's on its way out
        lambda: (
            WorkerProcess.objects.filter(pid=process.pid)
            .exclude(pk__in=result.worker_ids)
            .exists()
        ),
        message="the fresh worker registered",
    )
    process.send_signal(signal.SIGTERM)
    assert workers.wait(process) == 0


def test_a_tasks_forked_children_are_not_the_worker(workers):
    """A task's children forked without exec (as ``multiprocessing``'s
    "fork" pools are) do not inherit the worker's signal handling, even
    when signalled as soon as they are forked: SIGTERM ends them, and the
    worker does not take it for its own stop request."""
    # In a session of its own: its task's children go with it if it fails.
    process = workers.start("--concurrency", "1", new_session=True)
    forking = tasks.forks_children_that_are_terminated.enqueue()
    wait_until(
        lambda: Job.objects.get(pk=forking.id).finished_at is not None,
        timeout=30,
        message="the forking task ended",
    )
    job = Job.objects.get(pk=forking.id)
    assert (job.status, job.return_value) == (JobStatus.SUCCESSFUL, [-15, -15])
    after = tasks.add.enqueue(1, 2)
    wait_until(
        lambda: Job.objects.get(pk=after.id).status == JobStatus.SUCCESSFUL,
        timeout=30,
        message="the worker ran on",
    )
    assert "received" not in workers.output(process)
    process.send_signal(signal.SIGTERM)
    assert workers.wait(process) == 0


def test_a_timeout_is_judged_by_retry_on_too(workers):
    result = tasks.overruns_once.enqueue(120.0)  # retries ConnectionError only
    process = workers.start("--concurrency", "1")
    wait_until(
        lambda: Job.objects.get(pk=result.id).status == JobStatus.FAILED,
        timeout=60,
        message="the job failed after its first timeout",
    )
    job = Job.objects.get(pk=result.id)
    assert job.attempts == 1
    assert job.errors[0]["exception_class_path"].endswith("JobTimeout")
    wait_until(  # it started afresh in place: its handlers are back
        lambda: (
            WorkerProcess.objects.filter(pid=process.pid)
            .exclude(pk__in=job.worker_ids)
            .exists()
        ),
        message="the fresh worker registered",
    )
    process.send_signal(signal.SIGTERM)
    assert workers.wait(process) == 0


@requires_server_database
def test_chaos(workers):
    """Two supervisors with two children each drain 5,000 jobs while a random
    child is SIGKILLed about every second; nothing is lost, nothing runs
    twice at once, and recovery after the last kill takes seconds."""
    with transaction.atomic():
        for number in range(5000):
            pause = 0.05 if number % 10 == 0 else 0.0
            tasks.chaos.enqueue(str(number), pause)
    supervisors = [
        workers.start("--processes", "2", "--concurrency", "4",
                      "--poll-interval", "0.1", env=FAST_RESCUE)
        for _ in range(2)
    ]  # fmt: skip
    wait_until(
        lambda: WorkerProcess.objects.count() >= 4,
        timeout=60,
        message="four worker processes",
    )
    rng = random.Random(7)
    kills = 0
    victim = None
    while kills < 8 and Job.objects.exclude(status=JobStatus.SUCCESSFUL).exists():
        alive = [row for row in worker_rows() if pid_alive(row.pid)]
        if alive:
            victim = rng.choice(alive)
            os.kill(victim.pid, signal.SIGKILL)
            kills += 1
            last_kill = time.monotonic()
        time.sleep(1.0)  # the chaos's own rhythm: a kill about every second
    # Recovery: the last victim judged dead and its jobs given back.
    wait_until(
        lambda: (
            not WorkerProcess.objects.filter(pk=victim.pk).exists()
            and not Job.objects.running().filter(worker_id=victim.pk).exists()
        ),
        timeout=60,
        message="the last victim's jobs rescued",
    )
    recovery = time.monotonic() - last_kill
    wait_until(
        lambda: not Job.objects.exclude(status=JobStatus.SUCCESSFUL).exists(),
        timeout=120,
        message="every job SUCCESSFUL",
    )
    drained = time.monotonic() - last_kill
    for supervisor in supervisors:
        supervisor.send_signal(signal.SIGTERM)
    for supervisor in supervisors:
        assert workers.wait(supervisor, timeout=60) == 0

    assert kills >= 5
    jobs = Job.objects.all()
    assert jobs.count() == 5000
    assert not jobs.exclude(status=JobStatus.SUCCESSFUL).exists()
    # Exactly one run recorded for each job's last claim; no run of a claim
    # the job never had.
    final = {job.pk: len(job.worker_ids) for job in jobs.only("pk", "worker_ids")}
    runs = list(Execution.objects.values_list("job_id", "claim"))
    assert len(runs) == len(set(runs))
    assert set(final.items()) <= set(runs)
    assert all(claim <= final[pk] for pk, claim in runs)
    rescued = sum(1 for claims in final.values() if claims > 1)
    # A rescued job ran beside others: its attempt was given back, and it
    # ran alone after. Only a kill while it ran alone counts an attempt.
    for attempts, alone in jobs.values_list("attempts", "runs_alone"):
        assert attempts == 1 or alone
    assert jobs.filter(runs_alone=True).count() >= 1
    print(
        f"chaos on {connection.vendor}: {kills} kills, {rescued} jobs rescued; "
        f"the last victim's jobs back {recovery:.1f} s after its kill "
        f"(WORKER_TIMEOUT 2 s), queue drained {drained:.1f} s after it"
    )
    assert rescued >= 1
    assert recovery < 2 + 3  # WORKER_TIMEOUT + a heartbeat + margin


def test_a_rescued_job_keeps_its_place_behind_a_backlog(workers, tmp_path):
    """A worker is killed while it runs a job; another worker works through
    a backlog of 10,000 enqueued after it. The rescued job starts again
    within WORKER_TIMEOUT + HEARTBEAT_INTERVAL + 2 s of the kill, before
    the backlog is done: it keeps its place."""
    gate = tmp_path / "gate"
    rescued = tasks.wait_for_file.enqueue(str(gate))
    victim = workers.start("--concurrency", "1", "--no-maintenance", env=FAST_RESCUE)
    wait_until(
        lambda: Job.objects.filter(pk=rescued.id, status=JobStatus.RUNNING).exists(),
        timeout=30,
        message="the job running",
    )
    tasks.sleep_for.enqueue_many(((0.002,), {}) for _ in range(10_000))
    rescuer = workers.start("--concurrency", "2", env=FAST_RESCUE)
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.SUCCESSFUL).exists(),
        timeout=30,
        message="the backlog under way",
    )
    victim.kill()
    killed = timezone.now()
    gate.touch()  # the next attempt runs through

    job = wait_until(
        lambda: Job.objects.filter(pk=rescued.id, status=JobStatus.SUCCESSFUL).first(),
        timeout=60,
        message="the rescued job done",
    )
    behind = Job.objects.exclude(status=JobStatus.SUCCESSFUL).count()
    rescuer.send_signal(signal.SIGTERM)
    workers.wait(rescuer, timeout=60)
    back_after = (job.last_attempted_at - killed).total_seconds()
    print(
        f"rescued job started again {back_after:.1f} s after the kill, "
        f"{behind} jobs of the backlog still behind it ({connection.vendor})"
    )
    assert job.attempts == 2
    assert back_after < 2 + 0.5 + 2  # WORKER_TIMEOUT + HEARTBEAT_INTERVAL + 2
    assert behind > 0


@requires_postgresql
@pytest.mark.skipif(
    not os.environ.get("BGTASKS_TEST_RESTART_POSTGRES"),
    reason="restarts the PostgreSQL server: set BGTASKS_TEST_RESTART_POSTGRES=1 "
    "(CI does)",
)
def test_workers_survive_a_postgresql_restart(workers):
    with transaction.atomic():
        for number in range(1500):
            tasks.chaos.enqueue(str(number), 0.01)
    processes = [workers.start("--concurrency", "4") for _ in range(2)]
    wait_until(
        lambda: Execution.objects.count() > 200, timeout=60, message="work under way"
    )
    connection.close()
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"],
        check=True,
        timeout=120,
    )
    wait_until(
        lambda: not Job.objects.exclude(status=JobStatus.SUCCESSFUL).exists(),
        timeout=120,
        message="every job SUCCESSFUL after the restart",
    )
    assert all(process.poll() is None for process in processes)
    output = "".join(workers.output(process) for process in processes)
    assert "retrying" in output  # they noticed, backed off and went on
    for process in processes:
        process.send_signal(signal.SIGTERM)
        assert workers.wait(process) == 0
    assert not Job.objects.running().exists()


def test_a_crashing_task_fails_alone_and_the_jobs_beside_it_succeed(workers):
    """A task that crashes its process (a segmentation fault) while five
    jobs run beside it, each with one attempt: the five get their attempt
    back and run alone, and succeed; the crasher runs alone, crashes again,
    and fails."""
    one = {"max_attempts": 1}
    innocents = [tasks.sleep_for.using(**one).enqueue(1.5) for _ in range(2)]
    crasher = tasks.crashes.using(**one).enqueue(0.5)
    innocents += [tasks.sleep_for.using(**one).enqueue(1.5) for _ in range(3)]
    supervisor = workers.start(
        "--processes", "1", "--concurrency", "6", env=FAST_RESCUE
    )  # fmt: skip
    started = time.monotonic()
    wait_until(
        lambda: (
            not Job.objects.exclude(
                status__in=[JobStatus.SUCCESSFUL, JobStatus.FAILED]
            ).exists()
        ),
        timeout=120,
        message="every job ended",
    )
    ended = time.monotonic() - started
    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor) == 0

    output = workers.output(supervisor)
    print(
        f"crash isolation: every job ended {ended:.1f} s after the start; "
        f"{output.count('died (signal 11')} crash(es) ({connection.vendor})"
    )
    assert output.count("died (signal 11") == 2  # beside the others, then alone
    crashed = Job.objects.get(pk=crasher.id)
    assert crashed.status == JobStatus.FAILED and crashed.runs_alone
    assert [error["exception_class_path"] for error in crashed.errors] == [
        "django_bgtasks.exceptions.WorkerLost"
    ] * 2
    for result in innocents:
        job = Job.objects.get(pk=result.id)
        assert (job.status, job.attempts, job.return_value) == (
            JobStatus.SUCCESSFUL, 1, 1.5,
        )  # fmt: skip
        assert job.runs_alone  # its first run was cut short by the crash
