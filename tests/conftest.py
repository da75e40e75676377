"""Fixtures: real worker processes on the test database, and bounded waits."""

from __future__ import annotations

import contextlib
import gc
import glob
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from django_bgtasks import registry
from django_bgtasks.sql import limited as limited_claim
from django_bgtasks.worker import Worker, WorkerExit

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, *, timeout: float = 10.0, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after
    ``timeout`` seconds. Returns what the predicate returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout} s waiting for {message}")
        time.sleep(0.02)


def read_on_another_connection(read):
    """``read()`` in another thread, on that thread's own connection (closed
    after): what other connections see, committed."""

    def on_other_connection():
        try:
            return read()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as other:
        return other.submit(on_other_connection).result(timeout=30)


def database_url(*, host: str | None = None, port: int | None = None) -> str:
    """A DATABASE_URL naming the test database, for worker subprocesses
    (reaching the server at ``host``:``port`` if given)."""
    settings = connection.settings_dict
    vendor = connection.vendor
    if vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[vendor]
    user = quote(settings.get("USER") or "")
    password = settings.get("PASSWORD")
    credentials = f"{user}:{quote(password)}@" if password else f"{user}@"
    host = host or settings.get("HOST") or "127.0.0.1"
    port = port or settings.get("PORT")
    port_part = f":{port}" if port else ""
    return f"{scheme}://{credentials}{host}{port_part}/{settings['NAME']}"


def run_in_process(**options) -> Worker:
    """Run a Worker in this process until it drains (burst) and return it."""
    options.setdefault("burst", True)
    options.setdefault("concurrency", 1)
    worker = Worker(**options)
    # A bug in the worker ends run() with FAILED (logged), not an exception.
    assert worker.run() != WorkerExit.FAILED
    return worker


class WorkerProcesses:
    """Start ``manage.py runworker`` processes on the test database."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        # Started in a session of their own: killed with what they started.
        self.sessions: list[int] = []
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            "PYTHONUNBUFFERED": "1",
        }

    def start(
        self,
        *args: str,
        env: dict | None = None,
        new_session: bool = False,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.Popen:
        """Start ``runworker *args``; ``prefix``: a command that runs it
        (and execs it, so that the process is the worker's)."""
        log = self.tmp_path / f"worker-{len(self.processes) + 1}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*prefix, sys.executable, str(ROOT / "manage.py"), "runworker", *args],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        self.processes.append((process, log))
        if new_session:
            self.sessions.append(process.pid)
        return process

    def output(self, process: subprocess.Popen) -> str:
        for candidate, log in self.processes:
            if candidate is process:
                return log.read_text(errors="replace")
        raise ValueError("not one of ours")

    def wait(self, process: subprocess.Popen, timeout: float = 60.0) -> int:
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(
                f"runworker did not exit within {timeout} s:\n{self.output(process)}"
            )

    def run(self, *args: str, timeout: float = 60.0, env: dict | None = None):
        """Run one worker to completion; return (exit code, output)."""
        process = self.start(*args, env=env)
        code = self.wait(process, timeout)
        return code, self.output(process)

    def stop_all(self) -> None:
        for session in self.sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()


@pytest.fixture
def workers(transactional_db, tmp_path):
    """Worker subprocesses; any still running are killed after the test."""
    processes = WorkerProcesses(tmp_path)
    yield processes
    processes.stop_all()


@pytest.fixture(autouse=True)
def garbage_collector_restored():
    """runworker tunes its process's garbage collector: a test that runs the
    command in this process leaves it as it found it."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()
    else:
        gc.disable()


def lose_this_connection() -> None:
    """MySQL/MariaDB: end this thread's connection to the test database from
    another (a KILL, as a server restart or a network cut would); its next
    statement raises the driver's own error."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        victim = cursor.fetchone()[0]

    def kill() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"KILL {int(victim)}")
        finally:
            connection.close()

    killer = threading.Thread(target=kill)
    killer.start()
    killer.join(30)


def kill_other_connections() -> int:
    """Kill every other connection to the test database (as a server restart
    or a network cut would). Returns how many were killed."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return len(cursor.fetchall())
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            ids = [row[0] for row in cursor.fetchall()]
            for connection_id in ids:
                cursor.execute(f"KILL {int(connection_id)}")
            return len(ids)
    raise NotImplementedError(connection.vendor)


# A declared schedule (BGTASKS_TEST_SCHEDULES) firing each second.
EVERY_SECOND = {
    "tick": {
        "task": "tests.tasks.record",
        "cron": "* * * * * *",  # the sixth field is seconds
        "kwargs": {"label": "tick"},
    }
}


def skewed_clock(seconds: int) -> dict[str, str]:
    """The environment that runs a process with its clock ``seconds`` ahead
    under libfaketime (Debian's faketime), preloaded into the process itself
    so that signals reach it (the ``faketime`` command runs it as a child)."""
    libraries = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not libraries:
        pytest.skip("faketime is not installed (apt: faketime)")
    return {
        "LD_PRELOAD": libraries[0],
        "FAKETIME": f"+{seconds}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def vendor() -> str:
    return connection.vendor


SCREENSHOTS = Path(
    os.environ.get("BGTASKS_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots")
)


@pytest.fixture
def screenshots(request) -> Path:
    """Where browser tests save their screenshots (reported at the end)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    request.config.stash[screenshots_taken] = True
    return SCREENSHOTS


screenshots_taken = pytest.StashKey[bool]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.stash.get(screenshots_taken, False):
        terminalreporter.write_line(f"Browser screenshots: {SCREENSHOTS}")


requires_server_database = pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "sqlite").startswith("sqlite"),
    reason="needs a database server (PostgreSQL or MariaDB/MySQL)",
)
requires_postgresql = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql")),
    reason="PostgreSQL only",
)


@pytest.fixture
def limited(monkeypatch):
    """tests/limited_tasks.py's tasks, registered for this test only: a
    process that knows of a limit claims through the limited claim, which
    the other tests' claims should not."""
    monkeypatch.setattr(registry, "_tasks", dict(registry._tasks))
    # Not what an earlier test's claims saw (sql/limited.py looks again
    # once a minute).
    monkeypatch.setattr(limited_claim, "_UNDECLARED", {})
    module = importlib.import_module("tests.limited_tasks")
    for task in module.TASKS:
        registry.register(task)
    return module


# The databases of the tests of queues on several databases: mark a test
# ``@pytest.mark.django_db(databases=BOTH_DATABASES)`` (with transaction=True
# for worker subprocesses) and ask for the ``elsewhere`` fixture.
BOTH_DATABASES = ["default", "other"]
# The environment of worker subprocesses that know the "elsewhere" backend.
ELSEWHERE_ENV = {"BGTASKS_TEST_ELSEWHERE": "1"}


@pytest.fixture
def elsewhere(settings):
    """The "elsewhere" task backend, whose jobs live in the second test
    database ("other"), beside "default"; returns its alias. Worker
    subprocesses need ``env=ELSEWHERE_ENV`` to know it."""
    from tests.settings import ELSEWHERE_BACKEND

    settings.TASKS = {**settings.TASKS, "elsewhere": ELSEWHERE_BACKEND}
    return "elsewhere"
