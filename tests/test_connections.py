"""How many connections to the database the workers hold, counted from the
kernel's table of each process's sockets: a supervisor holds the one LISTEN
connection of its processes (PostgreSQL) and the scheduler's and
maintenance's; each of its children, once idle, two (its claims' and its
heartbeat's), whatever its job threads and its completer opened while it
worked. A child hears its wake-ups through the supervisor; a standalone
worker listens itself, and closes the connection its listener claims on
once notifications stop."""

import os
import signal
from pathlib import Path

import pytest
from django.db import connection

from django_bgtasks.models import Job, JobStatus, WorkerProcess
from tests import tasks
from tests.conftest import requires_postgresql, requires_server_database, wait_until
from tests.models import Execution

pytestmark = [pytest.mark.slow, requires_server_database]


def database_port() -> int:
    port = connection.settings_dict.get("PORT")
    return int(port) if port else {"postgresql": 5432, "mysql": 3306}[connection.vendor]


def database_connections(pid: int) -> int:
    """The established TCP connections of process ``pid`` to the database's
    port (its sockets, from /proc/PID/fd, found in /proc/PID/net/tcp*)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    port = f"{database_port():04X}"
    count = 0
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if remote.endswith(f":{port}") and state == "01" and inode in sockets:
                count += 1
    return count


def children_pids() -> list[int]:
    return sorted(WorkerProcess.objects.values_list("pid", flat=True))


def test_an_idle_supervised_worker_process_holds_two_connections(workers):
    supervisor = workers.start("--processes", "2", "--concurrency", "3")
    wait_until(lambda: len(children_pids()) == 2, timeout=60, message="two children")
    # Jobs that use the database on the job threads, and outcomes to write.
    for number in range(60):
        tasks.record.enqueue(label=str(number))
    wait_until(
        lambda: Execution.objects.count() == 60, timeout=60, message="the jobs run"
    )
    children = children_pids()
    listens = 1 if connection.vendor == "postgresql" else 0
    expected = {supervisor.pid: listens + 1, **dict.fromkeys(children, 2)}

    def held() -> dict[int, int]:
        return {pid: database_connections(pid) for pid in expected}

    # Idle for IDLE_CONNECTION_SECONDS (5), the threads that worked close
    # theirs.
    wait_until(
        lambda: held() == expected,
        timeout=30,
        message=f"idle processes' connections: {expected} (pid: count)",
    )
    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor, timeout=30) == 0


@requires_postgresql
def test_a_supervised_child_is_woken_through_its_supervisor(workers):
    supervisor = workers.start(
        "--processes", "1", "--concurrency", "1", "--poll-interval", "60"
    )
    wait_until(lambda: len(children_pids()) == 1, timeout=60, message="the child")
    [child] = children_pids()
    first = tasks.add.enqueue(1, 2)
    wait_until(
        lambda: first.refresh() or first.status == JobStatus.SUCCESSFUL,
        timeout=60,
        message="the first job",
    )
    # The child polls once a minute and holds no LISTEN connection: only
    # the supervisor's wake-up can start this within the wait.
    assert database_connections(child) <= 3  # claims, heartbeat, completer
    second = tasks.add.enqueue(3, 4)
    wait_until(
        lambda: second.refresh() or second.status == JobStatus.SUCCESSFUL,
        timeout=10,
        message="the second job, woken",
    )
    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor, timeout=30) == 0


@requires_postgresql
def test_a_standalone_workers_listener_closes_its_claims_connection(workers, tmp_path):
    """The listener of a worker without a supervisor claims an urgent job
    on a connection of its own while the worker is busy; it closes it once
    notifications stop, and the idle worker holds four connections again."""
    worker = workers.start("--concurrency", "1", "--poll-interval", "60")
    wait_until(lambda: len(children_pids()) == 1, timeout=60, message="the worker")
    registered = WorkerProcess.objects.get().last_heartbeat_at
    wait_until(
        lambda: WorkerProcess.objects.get().last_heartbeat_at > registered,
        message="a beat: the heartbeat's connection open",
    )
    gate = tmp_path / "gate"
    busy = tasks.wait_for_file.enqueue(str(gate))
    wait_until(lambda: Job.objects.running().exists(), message="the busy job")
    before = database_connections(worker.pid)
    urgent = tasks.add.using(priority=10).enqueue(1, 2)
    # Its one thread busy, only the listener's claim takes it now.
    wait_until(
        lambda: urgent.refresh() or urgent.status != JobStatus.READY,
        timeout=10,
        message="the urgent job claimed by the listener",
    )
    listening = database_connections(worker.pid)
    gate.touch()
    for result in (busy, urgent):
        wait_until(
            lambda result=result: (
                result.refresh() or result.status == JobStatus.SUCCESSFUL
            ),
            timeout=10,
            message="the jobs done",
        )
    # Claims, heartbeat, LISTEN, maintenance: the listener's claims', the
    # completer's and the job thread's closed after 5 s without work.
    assert listening == before + 1  # the listener's, for its claim
    wait_until(
        lambda: database_connections(worker.pid) == 4,
        timeout=30,
        message="an idle standalone worker's four connections",
    )
    worker.send_signal(signal.SIGTERM)
    assert workers.wait(worker, timeout=30) == 0
