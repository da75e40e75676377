"""How many connections to the database the workers hold, counted from the
kernel's table of each process's sockets: a supervisor holds the one LISTEN
connection of its processes (PostgreSQL) and the scheduler's and
maintenance's; each of its children, once idle, two (its claims' and its
heartbeat's), whatever its job threads, its completer and the thread that
claims for it when notified opened while it worked. A child hears its
wake-ups through the supervisor."""

import os
import signal
from pathlib import Path

import pytest
from django.db import connection

from django_bgtasks.models import JobStatus, WorkerProcess
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
    # the supervisor's wake-up can start this within the wait. Its
    # connections: claims, heartbeat, the completer's, and that of the
    # thread that read the wake-up (it claimed the job: the child was idle).
    assert database_connections(child) <= 4
    second = tasks.add.enqueue(3, 4)
    wait_until(
        lambda: second.refresh() or second.status == JobStatus.SUCCESSFUL,
        timeout=10,
        message="the second job, woken",
    )
    supervisor.send_signal(signal.SIGTERM)
    assert workers.wait(supervisor, timeout=30) == 0


@requires_postgresql
def test_an_idle_standalone_worker_holds_four_connections(workers):
    """A worker without a supervisor listens itself; the jobs a NOTIFY
    announces while it is idle are claimed on its listener's thread, whose
    connection for them is closed again once notifications stop."""
    worker = workers.start("--concurrency", "2", "--poll-interval", "60")
    wait_until(lambda: len(children_pids()) == 1, timeout=60, message="the worker")
    for number in range(3):
        job = tasks.add.enqueue(number, 1)
        wait_until(
            lambda job=job: job.refresh() or job.status == JobStatus.SUCCESSFUL,
            timeout=10,
            message="a notified job",
        )
    # Claims, heartbeat, LISTEN, maintenance: the listener's claims',
    # the completer's and the job threads' closed after 5 s without work.
    wait_until(
        lambda: database_connections(worker.pid) == 4,
        timeout=30,
        message="an idle standalone worker's four connections",
    )
    worker.send_signal(signal.SIGTERM)
    assert workers.wait(worker, timeout=30) == 0
