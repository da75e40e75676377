"""Workers behind PgBouncer in transaction mode (Debian's ``pgbouncer``, started
by the test on a loopback port): a pooled connection hears no NOTIFY, so a
worker says so and polls; with ``LISTEN_DATABASE`` naming a direct
connection, it is woken at once. Enqueues through it prepare nothing."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.db import connection

from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.conftest import ROOT, database_url, requires_postgresql, wait_until

pytestmark = [pytest.mark.slow, requires_postgresql]

WARNING = "does not hear a NOTIFY"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pgbouncer():
    """A PgBouncer in transaction mode in front of the test's PostgreSQL;
    yields its port."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.skip("pgbouncer is not installed (apt: pgbouncer)")
    settings = connection.settings_dict
    home = Path(tempfile.mkdtemp(prefix="bgtasks-pgbouncer-"))
    home.chmod(0o777)  # it drops root for the postgres user
    port = free_port()
    user = settings.get("USER") or "postgres"
    (home / "users.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={settings.get("HOST") or "127.0.0.1"} port={settings.get("PORT") or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/users.txt
pool_mode = transaction
default_pool_size = 10
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
logfile = {home}/pgbouncer.log
pidfile = {home}/pgbouncer.pid
"""
    )
    for path in home.iterdir():
        path.chmod(0o666)
    command = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]  # it will not run as root
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_until(lambda: _accepts(port), timeout=15, message="PgBouncer listening")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def through(port: int) -> str:
    """The test database's URL, through PgBouncer."""
    direct = database_url()
    host_port = f"{connection.settings_dict.get('HOST') or '127.0.0.1'}"
    at = direct.index("@") + 1
    path = direct.index("/", at)
    return f"{direct[:at]}{host_port}:{port}{direct[path:]}"


def idle(workers, process) -> bool:
    return "No job is due: waiting for one" in workers.output(process)


def test_a_worker_behind_pgbouncer_says_it_cannot_listen_and_polls(workers, pgbouncer):
    worker = workers.start(
        "--concurrency", "1", "--poll-interval", "0.5", "-v", "2",
        env={"DATABASE_URL": through(pgbouncer)},
    )  # fmt: skip
    wait_until(
        lambda: WARNING in workers.output(worker), timeout=30, message="the warning"
    )
    result = tasks.add.enqueue(2, 3)
    wait_until(
        lambda: Job.objects.filter(pk=result.id, status=JobStatus.SUCCESSFUL).exists(),
        timeout=30,
        message="the job run by polling",
    )
    worker.terminate()
    workers.wait(worker)


def test_with_a_direct_listen_database_a_worker_behind_pgbouncer_is_woken(
    workers, pgbouncer
):
    worker = workers.start(
        "--concurrency", "1", "--poll-interval", "60", "-v", "2",
        env={
            "DATABASE_URL": through(pgbouncer),
            "BGTASKS_TEST_LISTEN_URL": database_url(),
        },
    )  # fmt: skip
    wait_until(lambda: idle(workers, worker), timeout=30, message="the worker idle")
    enqueued = time.monotonic()
    result = tasks.add.enqueue(2, 3)
    wait_until(
        lambda: Job.objects.filter(pk=result.id, status=JobStatus.SUCCESSFUL).exists(),
        timeout=20,  # polling every 60 s would not make it
        message="the job run on its NOTIFY",
    )
    woken_after = time.monotonic() - enqueued
    worker.terminate()
    workers.wait(worker)
    print(
        f"behind PgBouncer, LISTEN direct: job done {woken_after * 1000:.0f} ms after"
    )
    assert WARNING not in workers.output(worker)
    assert woken_after < 20


ENQUEUE_THROUGH_POOLER = """
from django.db import connection, transaction
from django_bgtasks.sql.insert import _straight_to_server
from tests import tasks
for number in range(5):
    tasks.add.enqueue(number, b=0)
    with transaction.atomic():
        tasks.add.enqueue(number, b=1)
tasks.add.enqueue_many([((9,), {"b": 2}), ((9,), {"b": 3})])
print("straight:", _straight_to_server(connection))
"""


@pytest.mark.django_db(transaction=True)
def test_enqueues_through_pgbouncer_are_not_prepared(pgbouncer):
    """A pooler in transaction mode hands a transaction any server
    connection: statements prepared on one are missing on the next, and
    their names may be another client's. The enqueue prepares only on a
    connection straight to PostgreSQL (the tests' own), so processes one
    after another through PgBouncer (their server connections shared)
    enqueue without an error."""
    from django_bgtasks.sql.insert import _straight_to_server

    connection.ensure_connection()
    assert _straight_to_server(connection)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": through(pgbouncer),
    }
    manage = ROOT / "manage.py"
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, str(manage), "shell", "-c", ENQUEUE_THROUGH_POOLER],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "straight: False" in done.stdout
    assert Job.objects.filter(task_path__endswith=".add").count() == 3 * 12
