"""Workers on several hosts: each "host" is a Linux network namespace with
its own hostname (a UTS namespace), joined to this machine by a veth pair on
a private /30 that the test makes and removes, and reaching the database
through a forwarder (socat) on this side of the link, as a worker on another
machine would. The hosts share work without running a job twice; a host cut
off mid-drain has its jobs rescued by the others and, when its link comes
back, neither finishes nor runs them again; a host whose clock runs ahead
starts nothing early and judges no one dead.

Needs root, iproute2, util-linux's unshare and socat; the tests say so and
skip where a namespace cannot be made."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection

from django_bgtasks.db import database_now
from django_bgtasks.models import FINISHED_STATUSES, Job, JobStatus, WorkerProcess
from tests import tasks
from tests.conftest import (
    WorkerProcesses,
    database_url,
    requires_server_database,
    skewed_clock,
    wait_until,
)

pytestmark = [pytest.mark.slow, requires_server_database]

FAST = {"BGTASKS_HEARTBEAT_INTERVAL": "0.5", "BGTASKS_WORKER_TIMEOUT": "3"}


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    namespace: str
    link: str  # this side of the veth pair
    gateway: str  # this side's address, where the forwarder listens
    forwarder: subprocess.Popen | None = None


class Hosts:
    """Hosts made for one test, removed after it."""

    def __init__(self, workers: WorkerProcesses):
        self.workers = workers
        self.hosts: list[Host] = []
        # A subnet and names of this test process's own, so that two test
        # runs on one machine do not meet.
        self.tag = os.getpid() % 100000
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() // 50 % 250}"
        self.server = connection.settings_dict.get("HOST") or "127.0.0.1"
        self.port = (
            int(connection.settings_dict.get("PORT") or 0)
            or {
                "postgresql": 5432,
                "mysql": 3306,
            }[connection.vendor]
        )

    def add(self, name: str) -> Host:
        index = len(self.hosts)
        host = Host(
            name=name,
            namespace=f"bgtasks-{self.tag}-{index}",
            link=f"bgt{self.tag}o{index}",
            gateway=f"{self.subnet}.{index * 4 + 1}",
        )
        inside = f"bgt{self.tag}i{index}"
        address = f"{self.subnet}.{index * 4 + 2}"
        run("ip", "netns", "add", host.namespace)
        self.hosts.append(host)
        run("ip", "link", "add", host.link, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", host.namespace)
        run("ip", "addr", "add", f"{host.gateway}/30", "dev", host.link)
        run("ip", "link", "set", host.link, "up")
        in_host = ("ip", "netns", "exec", host.namespace)
        run(*in_host, "ip", "addr", "add", f"{address}/30", "dev", inside)
        run(*in_host, "ip", "link", "set", inside, "up")
        run(*in_host, "ip", "link", "set", "lo", "up")
        host.forwarder = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind={host.gateway},fork,reuseaddr",
                f"TCP:{self.server}:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its children (one a connection) go with it
        )
        wait_until(
            lambda: self._reachable(host),
            timeout=10,
            message=f"the database from {name}",
        )
        return host

    def _reachable(self, host: Host) -> bool:
        probe = subprocess.run(
            [
                "ip", "netns", "exec", host.namespace, "python3", "-c",
                "import socket; socket.create_connection"
                f"(({host.gateway!r}, {self.port}), timeout=1).close()",
            ],
            capture_output=True,
        )  # fmt: skip
        return probe.returncode == 0

    def start_worker(self, host: Host, *args: str, env: dict | None = None):
        """``runworker *args`` on ``host``: in its namespaces, named as it."""
        prefix = (
            "ip", "netns", "exec", host.namespace,
            "unshare", "--uts",
            "sh", "-c", f'hostname {host.name} && exec "$@"', "sh",
        )  # fmt: skip
        url = database_url(host=host.gateway, port=self.port)
        return self.workers.start(
            *args, env={**(env or {}), "DATABASE_URL": url}, prefix=prefix
        )

    def cut(self, host: Host) -> None:
        """Cut the host's link: its packets are lost, no connection is
        refused or reset (as when a cable or a switch goes)."""
        run("ip", "link", "set", host.link, "down")

    def mend(self, host: Host) -> None:
        run("ip", "link", "set", host.link, "up")

    def remove_all(self) -> None:
        """Everything the hosts made, each part whatever became of the
        others: the processes in each namespace (a supervisor's children
        too), the forwarders with their forked children, the links, the
        namespaces."""
        self.workers.stop_all()
        for host in self.hosts:
            listed = subprocess.run(
                ["ip", "netns", "pids", host.namespace], capture_output=True, text=True
            )
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            if host.forwarder is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(host.forwarder.pid, signal.SIGKILL)
                host.forwarder.wait()
            # The pair at once (the namespace's end would go with the
            # namespace, but only once the kernel gets round to it).
            subprocess.run(["ip", "link", "delete", host.link], capture_output=True)
            subprocess.run(["ip", "netns", "delete", host.namespace])


def namespaces_unavailable() -> str | None:
    """Why hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool, package in [("ip", "iproute2"), ("unshare", "util-linux")]:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt: {package})"
    if shutil.which("socat") is None:
        return "socat is not installed (apt: socat)"
    probe = f"bgtasks-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "delete", probe])
    return None


@pytest.fixture
def hosts(workers):
    why = namespaces_unavailable()
    if why:
        pytest.skip(why)
    made = Hosts(workers)
    yield made
    made.remove_all()


def runs(path) -> list[tuple[str, int, int, str]]:
    """The lines ``tasks.on_host`` wrote: (start or end, job, attempt, host)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        moment, job, attempt, host = line.split()
        lines.append((moment, int(job), int(attempt), host))
    return lines


def registered_hosts() -> set[str]:
    return set(WorkerProcess.objects.values_list("hostname", flat=True))


def all_ended(ids) -> bool:
    return (
        not Job.objects.filter(pk__in=ids)
        .exclude(status__in=FINISHED_STATUSES)
        .exists()
    )


def test_hosts_share_the_work_and_run_no_job_twice(hosts, tmp_path):
    log = tmp_path / "runs"
    first, second = hosts.add("host-a"), hosts.add("host-b")
    # A supervisor of two processes on one host, one process on the other.
    hosts.start_worker(first, "--processes", "2", "--concurrency", "2")
    hosts.start_worker(second, "--concurrency", "2")
    wait_until(
        lambda: registered_hosts() == {"host-a", "host-b"},
        timeout=60,
        message="a worker on each host",
    )
    ids = [int(tasks.on_host.enqueue(str(log), 0.01).id) for _ in range(300)]
    wait_until(lambda: all_ended(ids), timeout=120, message="the drain")

    jobs = Job.objects.filter(pk__in=ids)
    assert Counter(jobs.values_list("status", flat=True)) == {JobStatus.SUCCESSFUL: 300}
    assert set(jobs.values_list("attempts", flat=True)) == {1}
    started = Counter(job for moment, job, _, _ in runs(log) if moment == "start")
    assert started == Counter(ids)  # each job ran once, on one host
    by_host = Counter(jobs.values_list("return_value", flat=True))
    assert set(by_host) == {"host-a", "host-b"}, by_host


def test_a_host_cut_off_mid_drain_has_its_jobs_rescued_and_does_not_finish_or_redo_them(
    hosts, tmp_path, workers
):
    log = tmp_path / "runs"
    first, second = hosts.add("host-a"), hosts.add("host-b")
    cut_off = hosts.start_worker(first, "--concurrency", "2", env=FAST)
    wait_until(
        lambda: registered_hosts() == {"host-a"}, timeout=60, message="host-a's worker"
    )
    held = {int(tasks.on_host.enqueue(str(log), 2.0).id) for _ in range(2)}
    wait_until(
        lambda: (
            Job.objects.filter(
                pk__in=held, status=JobStatus.RUNNING, worker__hostname="host-a"
            ).count()
            == 2
        ),
        timeout=30,
        message="host-a running both jobs",
    )
    hosts.start_worker(second, "--concurrency", "2", env=FAST)
    hosts.cut(first)
    ids = [*held, *(int(tasks.on_host.enqueue(str(log), 0.1).id) for _ in range(4))]
    wait_until(
        lambda: (
            Job.objects.filter(pk__in=held, status=JobStatus.SUCCESSFUL).count() == 2
        ),
        timeout=60,
        message="host-a's jobs rescued and run on host-b",
    )
    rescued = {
        job.pk: (job.return_value, job.worker_id, job.finished_at)
        for job in Job.objects.filter(pk__in=held)
    }
    assert {outcome[0] for outcome in rescued.values()} == {"host-b"}

    hosts.mend(first)

    def heard_back() -> bool:
        # Either its finishes were refused first (then it held nothing,
        # so it registers again and goes on), or its heartbeat found its
        # row gone first (then it ends this process for a fresh one).
        output = workers.output(cut_off)
        return "was judged dead and its jobs were rescued" in output or all(
            f"Job {job} was taken from this worker" in output for job in held
        )

    wait_until(heard_back, timeout=60, message="host-a hearing of the rescue")
    wait_until(lambda: all_ended(ids), timeout=60, message="the drain")

    after = {
        job.pk: (job.return_value, job.worker_id, job.finished_at)
        for job in Job.objects.filter(pk__in=held)
    }
    assert after == rescued  # host-a's finishes, late, changed nothing
    lines = runs(log)
    for job in held:
        # Started on host-a before the cut, on host-b after it, and not
        # again on host-a after the link came back.
        assert [
            host for moment, number, _, host in lines
            if number == job and moment == "start"
        ] == ["host-a", "host-b"]  # fmt: skip
    assert Counter(Job.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        JobStatus.SUCCESSFUL: 6
    }


def test_a_host_whose_clock_runs_ahead_starts_nothing_early_and_judges_no_one_dead(
    hosts, tmp_path
):
    log = tmp_path / "runs"
    normal, ahead = hosts.add("host-a"), hosts.add("host-b")
    hosts.start_worker(normal, "--concurrency", "2", env=FAST)
    hosts.start_worker(ahead, "--concurrency", "2", env={**FAST, **skewed_clock(120)})
    wait_until(
        lambda: registered_hosts() == {"host-a", "host-b"},
        timeout=60,
        message="a worker on each host",
    )
    workers_before = set(WorkerProcess.objects.values_list("pk", flat=True))
    due = database_now(connection.alias) + timedelta(seconds=4)
    delayed = [
        int(tasks.on_host.using(run_after=due).enqueue(str(log)).id) for _ in range(20)
    ]
    ids = [int(tasks.on_host.enqueue(str(log), 0.05).id) for _ in range(100)]
    wait_until(lambda: all_ended(ids + delayed), timeout=60, message="the drain")

    jobs = Job.objects.filter(pk__in=ids + delayed)
    assert set(jobs.values_list("attempts", flat=True)) == {1}  # none rescued
    assert set(jobs.values_list("return_value", flat=True)) == {"host-a", "host-b"}
    for job in Job.objects.filter(pk__in=delayed):
        assert job.started_at >= due
    # Both still registered: neither judged the other dead.
    assert set(WorkerProcess.objects.values_list("pk", flat=True)) == workers_before
