"""``manage.py rundemo``: the whole demo in one command.

Migrates the database, gives the ``admin`` superuser a fresh password, then
runs the development server and a worker side by side until Ctrl-C (SIGINT),
SIGTERM or SIGHUP. The two run in their own sessions, so a Ctrl-C in the
terminal reaches this process only; it sends each child one SIGTERM (the
worker finishes its running jobs) and waits for them. A second Ctrl-C sends
the worker a second SIGTERM, its "exit at once".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.core.management.commands.runserver import naiveip_re
from django.db import connections
from django.utils.crypto import get_random_string

MANAGE_PY = Path(__file__).resolve().parents[4] / "manage.py"
ADMIN_USERNAME = "admin"
# The worker's own --shutdown-timeout is 30 s; this leaves it time to clean up.
STOP_TIMEOUT = 35.0


def addrport(value: str) -> str:
    """``[host:]port`` as runserver takes it, with a port from 1 to 65535."""
    match = naiveip_re.match(value)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a port or host:port (e.g. 127.0.0.1:8000)"
        )
    return value


def base_url(value: str) -> str:
    """The URL a browser on this machine opens for runserver's ``value``."""
    match = naiveip_re.match(value)
    host = match["addr"] or "127.0.0.1"
    if host in {"0", "0.0.0.0"}:
        host = "127.0.0.1"
    return f"http://{host}:{match['port']}/"


def ensure_superuser(username: str = ADMIN_USERNAME) -> str:
    """Create (or reactivate) superuser ``username`` with a fresh random
    password, and return the password."""
    user_model = get_user_model()
    user, _ = user_model._default_manager.get_or_create(
        **{user_model.USERNAME_FIELD: username}
    )
    user.is_active = user.is_staff = user.is_superuser = True
    password = get_random_string(16)
    user.set_password(password)
    user.save()
    return password


class Command(BaseCommand):
    help = (
        "Run the demo: migrate, reset the admin password, then run the "
        "development server and a worker until Ctrl-C."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--addrport",
            type=addrport,
            default="127.0.0.1:8000",
            help="Where the development server listens: port or host:port "
            "(default: 127.0.0.1:8000).",
        )

    def handle(self, *args, **options):
        call_command("migrate", verbosity=0, interactive=False)
        password = ensure_superuser()
        url = base_url(options["addrport"])
        self.stdout.write(self.style.SUCCESS("django-bgtasks demo"))
        self.stdout.write(f"  Upload a photo: {url}")
        self.stdout.write(f"  Admin:          {url}admin/")
        self.stdout.write(f"  Admin login: {ADMIN_USERNAME} / {password}")
        self.stdout.write("  Press Ctrl-C to stop.")
        self.stdout.flush()
        connections.close_all()  # the children open their own

        self.signals = 0
        # SIGHUP too: a closed terminal must not leave the children running.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.children: dict[str, subprocess.Popen] = {}
        try:
            self._start("runserver", options["addrport"], "--noreload")
            # Later the worker also runs the scheduler.
            self._start("runworker", "--concurrency", "2")
            exited = self._wait_for_signal_or_exit()
        finally:
            self._stop_children()
        if exited:
            name, code = exited
            raise CommandError(f"{name} exited with code {code}; the demo stopped.")
        self.stdout.write("Demo stopped.")

    def _on_signal(self, signum, frame):
        # Only count: the main loop acts (printing here could re-enter I/O).
        self.signals += 1

    def _start(self, *args: str) -> None:
        """Start ``manage.py *args`` in its own session, so that terminal
        signals reach this command only."""
        self.children[args[0]] = child = subprocess.Popen(
            [sys.executable, str(MANAGE_PY), *args],
            cwd=MANAGE_PY.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.stdout.write(f"Started {args[0]} (pid {child.pid})")
        self.stdout.flush()

    def _wait_for_signal_or_exit(self) -> tuple[str, int] | None:
        """Wait for a signal (return None) or a child's exit (return its name
        and exit code)."""
        while not self.signals:
            for name, child in self.children.items():
                if child.poll() is not None:
                    return name, child.returncode
            time.sleep(0.1)
        self.stdout.write("Stopping: the worker finishes its running jobs first.")
        self.stdout.flush()
        return None

    def _stop_children(self) -> None:
        """SIGTERM each running child once; SIGKILL any still running after
        STOP_TIMEOUT seconds. A second signal to this command sends the worker
        a second SIGTERM, which makes it exit at once."""
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        worker = self.children.get("runworker")
        hurried = False
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(child.poll() is None for child in self.children.values()):
            if time.monotonic() > deadline:
                for name, child in self.children.items():
                    if child.poll() is None:
                        self.stderr.write(f"{name} did not stop; killing it.")
                        child.kill()
                        child.wait()
                break
            if self.signals >= 2 and not hurried and worker and worker.poll() is None:
                worker.terminate()
                hurried = True
            time.sleep(0.1)
