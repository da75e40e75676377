"""The demo: its views with a real image, its thumbnail job, and ``rundemo``."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from io import BytesIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import check_password
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models.signals import post_save
from django.urls import reverse
from PIL import Image, ImageDraw

from django_bgtasks.models import Job, JobStatus
from testproject.demo.management.commands.rundemo import (
    addrport,
    base_url,
    ensure_superuser,
)
from testproject.demo.models import Photo

from .conftest import ROOT, run_in_process, wait_until

TASK_PATH = "testproject.demo.tasks.make_thumbnail"


def png_bytes(size: tuple[int, int] = (640, 480)) -> bytes:
    """A real PNG image, made in memory."""
    image = Image.new("RGB", size, "navy")
    ImageDraw.Draw(image).ellipse((40, 40, size[0] - 40, size[1] - 40), fill="orange")
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_upload(name: str = "photo.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, png_bytes(), content_type="image/png")


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


# The views ------------------------------------------------------------------


@pytest.mark.django_db
def test_upload_creates_photo_and_one_ready_job(client, media_root):
    assert client.get(reverse("demo:upload")).status_code == 200

    response = client.post(reverse("demo:upload"), {"image": png_upload()})

    photo = Photo.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("demo:photo", args=[photo.pk])
    assert (media_root / photo.image.name).is_file()
    job = Job.objects.get()
    assert job.task_path == TASK_PATH
    assert job.queue_name == "images"
    assert job.status == JobStatus.READY
    assert job.args == [photo.pk]
    assert job.kwargs == {}
    assert photo.job_id == str(job.pk)

    page = client.get(response["Location"]).content.decode()
    assert 'id="job-status">READY<' in page
    assert 'http-equiv="refresh"' in page
    assert 'id="thumbnail"' not in page


@pytest.mark.django_db
def test_upload_of_a_non_image_is_refused_without_a_job(client, media_root):
    not_an_image = SimpleUploadedFile("photo.png", b"not a PNG", "image/png")

    response = client.post(reverse("demo:upload"), {"image": not_an_image})

    assert response.status_code == 200
    assert response.context["form"].errors["image"]
    assert not Photo.objects.exists()
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_worker_makes_the_thumbnail(client, media_root):
    response = client.post(reverse("demo:upload"), {"image": png_upload()})
    photo = Photo.objects.get()

    worker = run_in_process(queues=["images"])

    assert worker.jobs_claimed == 1
    job = Job.objects.get()
    assert job.status == JobStatus.SUCCESSFUL, job.errors
    photo.refresh_from_db()
    assert photo.thumbnail
    assert job.return_value == {"width": 200, "height": 150, "url": photo.thumbnail.url}
    with Image.open(media_root / photo.thumbnail.name) as thumbnail:
        assert thumbnail.format == "JPEG"
        assert thumbnail.size == (200, 150)

    page = client.get(response["Location"]).content.decode()
    assert 'id="job-status">SUCCESSFUL<' in page
    assert f'<img id="thumbnail" src="{photo.thumbnail.url}"' in page
    assert 'http-equiv="refresh"' not in page


@pytest.mark.django_db(transaction=True)
def test_failure_after_enqueue_in_the_view_leaves_no_job(client, media_root):
    """The upload view enqueues inside its transaction: when the transaction
    fails after the enqueue (here the photo's second save), the job goes with
    it. The failure comes from a post_save receiver, not a mocked database."""
    seen_inside = []

    def fail_on_job_id_save(sender, instance, update_fields=None, **kwargs):
        if update_fields and "job_id" in update_fields:
            seen_inside.append(Job.objects.filter(pk=instance.job_id).exists())
            raise RuntimeError("saving the photo failed")

    post_save.connect(fail_on_job_id_save, sender=Photo)
    try:
        with pytest.raises(RuntimeError, match="saving the photo failed"):
            client.post(reverse("demo:upload"), {"image": png_upload()})
    finally:
        post_save.disconnect(fail_on_job_id_save, sender=Photo)

    assert seen_inside == [True]  # the job row existed inside the transaction
    assert not Job.objects.exists()
    assert not Photo.objects.exists()


def registered_in_the_test_project(**environment) -> list[str]:
    """The task paths a process of the test project registers."""
    script = (
        "import django; django.setup()\n"
        "from django_bgtasks import registry\n"
        "registry.autodiscover()\n"
        "print(' '.join(sorted(registry.registered_tasks())))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    env.pop("BGTASKS_TASK_MODULES", None)
    output = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, **environment},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return output.split()


def test_the_demo_registers_only_its_own_tasks():
    """The admin's task filter lists registered tasks: the benchmark's no-op
    is not one of the demo's, and only the benchmark's workers load it."""
    demo = registered_in_the_test_project()
    assert demo and all(path.startswith("testproject.demo.") for path in demo)
    bench = registered_in_the_test_project(
        BGTASKS_TASK_MODULES="testproject.bench.noop"
    )
    assert set(bench) == {
        *demo,
        "testproject.bench.noop.noop",
        "testproject.bench.noop.count_results",
        "testproject.bench.noop.sleep_10ms",
    }


# rundemo's parts --------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["8000", "127.0.0.1:8000", "0.0.0.0:80", "[::1]:8000", "localhost:65535"]
)
def test_addrport_accepts(value):
    assert addrport(value) == value


@pytest.mark.parametrize(
    "value", ["", "web", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", ":8000", "1:99999"]
)
def test_addrport_refuses(value):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a port or host:port"):
        addrport(value)


def test_rundemo_validates_addrport():
    with pytest.raises(CommandError, match="'web' is not a port or host:port"):
        call_command("rundemo", "--addrport=web")


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("8000", "http://127.0.0.1:8000/"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080/"),
        ("[::1]:8000", "http://[::1]:8000/"),
        ("localhost:9000", "http://localhost:9000/"),
    ],
)
def test_base_url(value, url):
    assert base_url(value) == url


@pytest.mark.django_db
def test_ensure_superuser_sets_a_fresh_password_each_time():
    first = ensure_superuser()
    second = ensure_superuser()

    user = get_user_model().objects.get()
    assert user.username == "admin"
    assert user.is_superuser and user.is_staff and user.is_active
    assert first != second
    assert user.check_password(second)
    assert not user.check_password(first)


# rundemo, for real ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_opener(*handlers) -> urllib.request.OpenerDirector:
    """A urllib opener that ignores any proxy settings of the environment."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), *handlers)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class RunDemo:
    """``manage.py rundemo`` on a fresh SQLite file, output in a log file.

    It runs in a process group of its own, so ``ctrl_c()`` can signal the
    whole group as a terminal's Ctrl-C does.
    """

    def __init__(self, tmp_path: Path, port: int):
        self.database = tmp_path / "demo.sqlite3"
        self.log = tmp_path / "rundemo.log"
        self.url = f"http://127.0.0.1:{port}/"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": f"sqlite:///{self.database}",
            "MEDIA_ROOT": str(tmp_path / "media"),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "rundemo",
                    f"--addrport=127.0.0.1:{port}",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ctrl_c(self) -> None:
        """SIGINT to rundemo's process group, as a terminal sends it."""
        os.killpg(self.process.pid, signal.SIGINT)

    def manage(self, *args: str) -> None:
        """Run another ``manage.py`` command on the demo's database."""
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def wait_until_ready(self) -> int:
        """Wait until the server answers and the worker has registered;
        return the worker's pid."""

        def server_up():
            self.check_running()
            return (self.get("") or (None,))[0] == 200

        def worker_rows():
            self.check_running()
            return self.query("SELECT pid FROM django_bgtasks_workerprocess")

        wait_until(server_up, timeout=60, message="the demo's server to answer")
        [(pid,)] = wait_until(worker_rows, timeout=30, message="the worker")
        return pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> dict[str, int]:
        found = re.findall(r"Started (\w+) \(pid (\d+)\)", self.output())
        return {name: int(pid) for name, pid in found}

    def check_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(
                f"rundemo exited with code {self.process.returncode}:\n{self.output()}"
            )

    def query(self, sql: str, params=()) -> list[tuple] | None:
        """Rows of ``sql`` on the demo's database; None before the table
        exists (rundemo migrates it first)."""
        uri = f"file:{self.database}?mode=ro"  # never creates the file
        connection = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            return connection.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return None
        finally:
            connection.close()

    def get(self, path: str, opener=None) -> tuple[int, str] | None:
        """Status and body of a GET; None if the server does not answer."""
        try:
            with (opener or local_opener()).open(self.url + path, timeout=5) as page:
                return page.status, page.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return None

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rundemo did not exit within {timeout} s:\n{self.output()}")

    def clean_up(self) -> None:
        """After a failed test: stop rundemo and its children, whatever it
        takes (they run in their own sessions)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.child_pids().values():
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_rundemo(tmp_path):
    demos = []

    def start(port: int | None = None) -> RunDemo:
        demos.append(RunDemo(tmp_path, port or free_port()))
        return demos[-1]

    yield start
    for demo in demos:
        demo.clean_up()


def upload_over_http(demo: RunDemo, png: bytes) -> str:
    """Upload ``png`` through the form as a browser does; return the URL the
    upload redirected to."""
    opener = local_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    status, form = demo.get("", opener)
    assert status == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)[1]
    boundary = "demo-test-boundary"
    body = b"".join(
        [
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="csrfmiddlewaretoken"\r\n\r\n{token}\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="photo.png"\r\nContent-Type: image/png\r\n\r\n'.encode(),
            png,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    request = urllib.request.Request(
        demo.url,
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with opener.open(request, timeout=10) as page:  # follows the redirect
        assert page.status == 200
        return page.url


def test_rundemo_serves_the_demo_and_stops_cleanly_on_ctrl_c(start_rundemo):
    demo = start_rundemo()
    worker_pid = demo.wait_until_ready()
    pids = demo.child_pids()
    assert pids["runworker"] == worker_pid

    # The admin login printed is the admin's real password.
    password = re.search(r"Admin login: admin / (\S+)", demo.output())[1]
    [(encoded, is_superuser)] = demo.query(
        "SELECT password, is_superuser FROM auth_user WHERE username = 'admin'"
    )
    assert is_superuser
    assert check_password(password, encoded)
    assert f"{demo.url}admin/" in demo.output()

    # The web process enqueues, the worker process makes the thumbnail.
    photo_url = upload_over_http(demo, png_bytes())
    assert re.fullmatch(rf"{demo.url}photos/\d+/", photo_url)

    def thumbnail_shown():
        demo.check_running()
        page = demo.get(photo_url[len(demo.url) :])[1]
        return 'id="job-status">SUCCESSFUL<' in page and 'id="thumbnail"' in page

    wait_until(thumbnail_shown, timeout=30, message="the thumbnail")

    demo.ctrl_c()

    assert demo.wait(timeout=40) == 0, demo.output()
    assert "Demo stopped." in demo.output()
    assert demo.query("SELECT id FROM django_bgtasks_workerprocess") == []
    assert pid_gone(pids["runworker"])
    assert pid_gone(pids["runserver"])
    assert demo.get("") is None


def test_rundemo_ctrl_c_lets_the_running_job_finish(start_rundemo, tmp_path):
    """One Ctrl-C drains the worker: the job it is running finishes. (Had the
    worker seen the terminal's SIGINT as well as rundemo's SIGTERM, it would
    have exited at once and put the job back to READY.)"""
    demo = start_rundemo()
    demo.wait_until_ready()
    release = tmp_path / "release"
    enqueue = "from tests.tasks import wait_for_file; wait_for_file.enqueue({!r})"
    demo.manage("shell", "-c", enqueue.format(str(release)))
    job_status = "SELECT status, return_value FROM django_bgtasks_job"
    wait_until(
        lambda: "Job 1 started" in demo.output(),
        timeout=30,
        message="the job to start",
    )

    demo.ctrl_c()
    # The worker reacts to the SIGTERM rundemo sends it, and nothing else.
    wait_until(
        lambda: "SIGTERM received" in demo.output(),
        message="rundemo to forward SIGTERM to the worker",
    )
    assert "SIGTERM received: finishing 1 running job(s)" in demo.output()
    assert demo.process.poll() is None  # waiting for the worker
    release.touch()

    assert demo.wait(timeout=40) == 0, demo.output()
    assert demo.query(job_status) == [("SUCCESSFUL", '"released"')]
    assert "exiting at once" not in demo.output()


def test_rundemo_stops_the_worker_and_fails_when_the_server_cannot_start(
    start_rundemo,
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        demo = start_rundemo(port=taken.getsockname()[1])

        code = demo.wait(timeout=60)

    assert code == 1
    assert "runserver exited with code 1" in demo.output()
    pids = demo.child_pids()
    assert set(pids) == {"runserver", "runworker"}
    assert all(pid_gone(pid) for pid in pids.values())
    assert demo.query("SELECT id FROM django_bgtasks_workerprocess") == []
