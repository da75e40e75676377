"""Make the admin screenshots of the documentation in a real headless Chromium.

Run from anywhere, with a Python that has the package, Selenium and Pillow
(the test virtualenv has them)::

    .venv-test/django52/bin/python docs/screenshots.py

Needs Debian's ``chromium`` and ``chromium-driver`` (or ``chromium-browser`` and
``chromedriver`` on the PATH). Everything runs on a fresh SQLite database and
media folder in a temporary directory, deleted at the end: the repository's
``db.sqlite3`` and ``media/`` are not touched, and no other database is used.

The script migrates, creates a superuser, then makes the data of the demo
project (``testproject``) through the public API: photos and their thumbnail
jobs (``testproject.demo.tasks.make_thumbnail``), photo counts
(``count_photos``), a cancelled job, delayed jobs, and schedules. It runs the
jobs with ``manage.py runworker --burst``: most succeed; a truncated upload
fails all three attempts, with a traceback each; a photo deleted before its
job ran fails at once; a photo whose file was missing at first succeeds at
its second attempt. Retries are made due with ``Job.objects...run_now()``, the
admin's "Run now", rather than waited for.

Then it starts ``manage.py runserver --noreload`` on a free port of
127.0.0.1, logs into the admin and saves, in ``docs/_static/`` (or
``--output``): dashboard.png, jobs.png, job-failed.png, schedules.png,
schedule-form.png and workers.png, each 1280 pixels wide (a change list
wider than that widens the window, up to 1600), the viewport's 800 high or
the whole page. A live ``runworker --processes 2`` runs while the dashboard
and the worker list are taken, then is stopped with SIGTERM. The files are
written only once all of them are made; a PNG larger than ``--max-bytes`` is
saved with a 256-colour palette. Every process the script starts is stopped
before it exits, on an error, SIGTERM or Ctrl-C too; the temporary directory
goes with them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = ROOT / "manage.py"
STATIC = ROOT / "docs" / "_static"
WIDTH, HEIGHT = 1280, 800
MAX_WIDTH = 1600  # a change list may widen the window up to this
MAX_BYTES = 250_000
USERNAME = "admin"
STOP_TIMEOUT = 40.0  # the worker's own --shutdown-timeout is 30 s

# The demo's photos: name, two colours of the sky, one of the ground.
PHOTOS = [
    ("harbour-at-dawn.jpg", (250, 180, 120), (90, 130, 200), (40, 70, 110)),
    ("alpine-lake.jpg", (120, 170, 230), (210, 230, 250), (40, 90, 60)),
    ("city-lights.jpg", (20, 20, 60), (90, 40, 120), (30, 30, 40)),
    ("autumn-forest.jpg", (230, 200, 150), (250, 230, 200), (150, 70, 20)),
    ("desert-road.jpg", (90, 160, 230), (240, 220, 180), (200, 150, 90)),
    ("market-stalls.jpg", (200, 220, 240), (250, 250, 250), (170, 60, 50)),
    ("snowy-ridge.jpg", (150, 180, 220), (230, 240, 250), (235, 240, 245)),
    ("garden-party.jpg", (140, 200, 240), (230, 245, 255), (70, 140, 50)),
]


class Failure(Exception):
    """The screenshots could not be made; the message says why."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=STATIC,
        help=f"Folder of the PNG files (default: {STATIC.relative_to(ROOT)}).",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=MAX_BYTES,
        help=f"A larger PNG is saved with a palette (default: {MAX_BYTES}).",
    )
    options = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        print("Install Chromium and its driver (apt: chromium chromium-driver).")
        return 2
    # SIGTERM ends the script as Ctrl-C does: through the clean-up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bgtasks-screenshots-") as folder:
        run = Run(Path(folder), options.output, options.max_bytes)
        try:
            run.make_data()
            run.take_screenshots(chromium, chromedriver)
            run.stop_all()
            run.publish()
        except Failure as exc:
            print(f"Failed: {exc}", file=sys.stderr)
            return 1
        finally:
            run.stop_all()
    return 0


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, pause: float = 0.2
):
    """Call ``condition`` until it returns something true, and return that;
    raise Failure naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photo_bytes(sky_top, sky_bottom, ground, seed: int) -> bytes:
    """A landscape-like JPEG: a sky gradient, a sun, three rows of hills."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = 1600, 1067
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / height
        colour = tuple(
            int(a + (b - a) * t) for a, b in zip(sky_top, sky_bottom, strict=True)
        )
        draw.line([(0, y), (width, y)], fill=colour)
    sun = (rng.randint(200, 1400), rng.randint(120, 380))
    draw.ellipse([sun[0] - 70, sun[1] - 70, sun[0] + 70, sun[1] + 70], "#fff3c4")
    for layer in range(3):
        base = 600 + layer * 140
        points = [(0, height)]
        for x in range(0, width + 100, 100):
            points.append((x, base + rng.randint(-90, 60)))
        points.append((width, height))
        shade = tuple(max(0, c - 25 * (2 - layer)) for c in ground)
        draw.polygon(points, fill=shade)
    image = image.filter(ImageFilter.GaussianBlur(2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


class Run:
    """One run: its temporary database, media, processes and browser."""

    def __init__(self, folder: Path, output: Path, max_bytes: int):
        self.folder = folder
        self.output = output
        self.max_bytes = max_bytes
        self.logs = folder / "logs"
        self.logs.mkdir()
        self.shots = folder / "shots"  # copied to ``output`` once all are made
        self.shots.mkdir()
        self.media = folder / "media"
        self.password = secrets.token_urlsafe(16)
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.driver = None
        self.url = ""
        self.jobs: dict[str, str] = {}  # a name of this script's -> job id
        # The server, the workers and this process read the same settings.
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "MEDIA_ROOT": str(self.media),
            "DEBUG": "true",  # runserver serves the admin's static files
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.update(self.env)

    # Processes ---------------------------------------------------------------

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start ``manage.py *args`` in its own session, output to a log."""
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, str(MANAGE_PY), *args],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append((name, process))
        print(f"Started {' '.join(args)} (pid {process.pid})")
        return process

    def stop(self, name: str, process: subprocess.Popen) -> None:
        """SIGTERM ``process`` and wait for it; SIGKILL it after a while."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop after SIGTERM; killing it.")
                # Its session's process group: a supervisor's children too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ValueError):
            self.processes.remove((name, process))

    def stop_all(self) -> None:
        if self.driver is not None:
            with contextlib.suppress(Exception):
                self.driver.quit()
            self.driver = None
        for name, process in reversed(list(self.processes)):
            self.stop(name, process)

    def publish(self) -> None:
        """Copy the screenshots to ``output``: all of them, or none if one
        could not be made."""
        for shot in sorted(self.shots.glob("*.png")):
            shutil.copyfile(shot, self.output / shot.name)
            print(f"Saved {self.output / shot.name}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def burst(self) -> None:
        """Run the due jobs with ``runworker --burst`` and wait for its exit."""
        from django.db import connections

        connections.close_all()  # the worker writes the SQLite file meanwhile
        process = self.start("burst", "runworker", "--burst", "--concurrency", "2")
        try:
            code = process.wait(120)
        except subprocess.TimeoutExpired:
            raise Failure(
                f"runworker --burst still running after 120 s:\n"
                f"{self.log_tail('burst')}"
            ) from None
        finally:
            self.stop("burst", process)
        if code:
            raise Failure(
                f"runworker --burst exited with {code}:\n{self.log_tail('burst')}"
            )

    # Data --------------------------------------------------------------------

    def make_data(self) -> None:
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.files.base import ContentFile
        from django.core.files.storage import default_storage
        from django.core.management import call_command
        from django.db import transaction

        from django_bgtasks.models import Job, JobStatus, Schedule
        from testproject.demo.models import Photo
        from testproject.demo.tasks import count_photos, make_thumbnail

        call_command("migrate", verbosity=0, interactive=False)
        call_command("sync_schedules", verbosity=0)  # the demo's, in BGTASKS
        get_user_model().objects.create_superuser(
            USERNAME, "admin@example.com", self.password
        )

        def upload(name: str, data: bytes | None):
            """A photo as the demo's upload view makes it: the photo and its
            thumbnail job in one transaction. ``data`` None: the file is not
            in storage (yet)."""
            with transaction.atomic():
                if data is None:
                    photo = Photo.objects.create(image=f"photos/{name}")
                else:
                    photo = Photo.objects.create(image=ContentFile(data, name=name))
                result = make_thumbnail.enqueue(photo.pk)
                photo.job_id = result.id
                photo.save(update_fields=["job_id"])
            return photo

        pictures = {
            name: photo_bytes(top, bottom, ground, seed)
            for seed, (name, top, bottom, ground) in enumerate(PHOTOS)
        }
        for name in list(pictures)[:6]:
            upload(name, pictures[name])
        count_photos.enqueue()

        # An upload cut short: Pillow reads the header, then fails on every
        # attempt ("image file is truncated").
        truncated = upload("IMG_2041.jpg", pictures["desert-road.jpg"][:6000])
        self.jobs["truncated"] = truncated.job_id
        # A photo deleted before its thumbnail was made: one attempt only,
        # since retrying cannot help.
        gone = Photo.objects.create(
            image=ContentFile(pictures["city-lights.jpg"], name="duplicate.jpg")
        )
        self.jobs["gone"] = make_thumbnail.using(max_attempts=1).enqueue(gone.pk).id
        gone.delete()
        # A photo whose file reaches storage late: the first attempt fails,
        # the second succeeds.
        late = upload("night-market.jpg", None)
        self.jobs["late"] = late.job_id
        # A job cancelled before it ran.
        cancelled = upload("blurry-test-shot.jpg", pictures["snowy-ridge.jpg"])
        Job.objects.filter(pk=cancelled.job_id).cancel()

        # Schedules made in the admin or with the ORM, besides the demo's
        # declared one; each a task of the demo.
        weekday = Schedule(
            name="weekday-photo-report",
            task_path="testproject.demo.tasks.count_photos",
            cron="30 9 * * mon-fri",
            timezone="Europe/Paris",
        )
        nightly = Schedule(
            name="nightly-cover-thumbnail",
            task_path="testproject.demo.tasks.make_thumbnail",
            cron="0 2 * * *",
            timezone="America/New_York",
            args=[1],
            queue_name="images",
        )
        hourly = Schedule(
            name="hourly-photo-count",
            task_path="testproject.demo.tasks.count_photos",
            interval=timedelta(hours=1),
            enabled=False,
        )
        for schedule in (weekday, nightly, hourly):
            schedule.full_clean()
            schedule.save()
        # "Run now" from the schedule list: jobs linked to their schedule.
        weekday.run_now()
        Schedule.objects.get(name="demo-count-photos").run_now()

        self.burst()
        # The late file arrives; the retries are made due now rather than
        # waited for (the admin's "Run selected delayed jobs now").
        stored = default_storage.save(
            late.image.name, ContentFile(pictures["garden-party.jpg"])
        )
        if stored != late.image.name:
            raise Failure(f"{late.image.name} was stored as {stored}")

        def settled():
            jobs = Job.objects.filter(pk__in=[self.jobs["truncated"], late.job_id])
            if all(job.status != JobStatus.READY for job in jobs):
                return True
            jobs.run_now()
            self.burst()
            return False

        wait_until(settled, 120, "the retries to end", pause=0)

        for name in list(pictures)[6:]:
            upload(name, pictures[name])
        self.burst()

        # Jobs for later: a batch at night, a count in three quarters of an
        # hour, and one photo's thumbnail due now (no worker runs it yet).
        for photo in Photo.objects.exclude(thumbnail="")[:2]:
            make_thumbnail.using(run_after=timedelta(hours=6), priority=-10).enqueue(
                photo.pk
            )
        count_photos.using(run_after=timedelta(minutes=45)).enqueue()
        upload("sunflower-field.jpg", pictures["autumn-forest.jpg"])
        self.check_data()

    def check_data(self) -> None:
        from django_bgtasks.models import Job, JobStatus

        expected = {
            "truncated": (JobStatus.FAILED, 3),
            "gone": (JobStatus.FAILED, 1),
            "late": (JobStatus.SUCCESSFUL, 2),
        }
        for name, (status, attempts) in expected.items():
            job = Job.objects.get(pk=self.jobs[name])
            if (job.status, job.attempts) != (status, attempts):
                raise Failure(
                    f"the {name!r} job is {job.status} after {job.attempts} "
                    f"attempt(s), not {status} after {attempts}:\n"
                    f"{self.log_tail('burst')}"
                )
        counts = {
            status: Job.objects.filter(status=status).count() for status in JobStatus
        }
        print("Jobs:", ", ".join(f"{s.label} {n}" for s, n in counts.items()))

    # Screenshots -------------------------------------------------------------

    def take_screenshots(self, chromium: str, chromedriver: str) -> None:
        from django.db import connections

        from django_bgtasks.models import WorkerProcess

        connections.close_all()
        port = free_port()
        server = self.start("runserver", "runserver", "--noreload", f"127.0.0.1:{port}")
        self.url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: self.answers(f"{self.url}/admin/login/", server),
            60,
            "runserver to answer",
        )
        self.driver = self.open_browser(chromium, chromedriver)
        self.log_in()

        # Two processes under a supervisor, on one queue: the other keeps
        # its due job, so the dashboard shows a lag.
        worker = self.start(
            "worker", "runworker", "--queues", "default", "--processes", "2"
        )

        def worker_alive():
            if worker.poll() is not None:
                raise Failure(f"runworker exited:\n{self.log_tail('worker')}")
            alive = [w for w in WorkerProcess.objects.all() if w.is_alive()]
            connections.close_all()
            return len(alive) >= 2

        wait_until(worker_alive, 60, "the live workers' heartbeats")
        self.shot(
            "dashboard.png",
            "/admin/django_bgtasks/jobdashboard/",
            "Background tasks dashboard",
            full_page=1600,
        )
        self.shot(
            "workers.png",
            "/admin/django_bgtasks/workerprocess/",
            "Select worker process",
            height=400,  # one row per worker: the rest is blank
            sidebar=False,
        )
        self.stop("worker", worker)
        print("Stopped the live worker")

        self.shot(
            "jobs.png",
            "/admin/django_bgtasks/job/",
            "Select job",
            full_page=1000,
            sidebar=False,
        )
        self.shot(
            "job-failed.png",
            f"/admin/django_bgtasks/job/{self.jobs['truncated']}/change/",
            "View job",
            full_page=3200,
            ready=".bgtasks-traceback",
        )
        self.shot(
            "schedules.png",
            "/admin/django_bgtasks/schedule/",
            "Select schedule",
            sidebar=False,
        )
        self.schedule_form()

    def answers(self, url: str, server: subprocess.Popen) -> bool:
        if server.poll() is not None:
            raise Failure(f"runserver exited:\n{self.log_tail('runserver')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def open_browser(self, chromium: str, chromedriver: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--user-data-dir={self.folder / 'chromium'}",
        ]:
            options.add_argument(argument)
        service = Service(chromedriver, log_output=str(self.logs / "driver.log"))
        return webdriver.Chrome(service=service, options=options)

    def log_in(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get(f"{self.url}/admin/login/")
        self.driver.find_element(By.NAME, "username").send_keys(USERNAME)
        self.driver.find_element(By.NAME, "password").send_keys(self.password)
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        WebDriverWait(self.driver, 20).until(
            expected_conditions.title_contains("Site administration")
        )

    def open(
        self, path: str, title: str, ready: str | None = None, sidebar: bool = True
    ) -> None:
        """Open ``path``, with the admin's navigation sidebar open or closed
        (``sidebar``, as its toggle leaves it); check the page is the one
        meant (``title`` in its title), not a login page or an error, and that
        ``ready`` (a CSS selector) shows."""
        from selenium.webdriver.common.by import By

        self.driver.execute_script(
            "localStorage.setItem('django.admin.navSidebarIsOpen', arguments[0])",
            "true" if sidebar else "false",
        )
        self.driver.get(f"{self.url}{path}")
        wait_until(
            lambda: (
                self.driver.execute_script("return document.readyState") == "complete"
            ),
            20,
            f"{path} to load",
        )
        page_title = self.driver.title
        if title not in page_title or "Log in" in page_title:
            raise Failure(f"{path} shows {page_title!r}, not {title!r}")
        if ready:
            wait_until(
                lambda: self.driver.find_elements(By.CSS_SELECTOR, ready),
                20,
                f"{ready} on {path}",
            )

    def shot(
        self,
        name: str,
        path: str,
        title: str,
        *,
        full_page: int = 0,
        height: int = HEIGHT,
        ready: str | None = None,
        sidebar: bool = True,
    ) -> None:
        self.open(path, title, ready, sidebar)
        self.save(name, full_page=full_page, height=height)

    def save(self, name: str, *, full_page: int = 0, height: int = HEIGHT) -> None:
        """Save the page: the viewport, ``WIDTH`` by ``height``; or with
        ``full_page`` the whole page, at most ``full_page`` pixels high. A
        change list wider than the viewport widens it, up to ``MAX_WIDTH``,
        so that no column is scrolled out of the picture."""
        from PIL import Image

        driver = self.driver

        def resize(width: int, height: int) -> None:
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {
                    "width": width,
                    "height": height,
                    "deviceScaleFactor": 1,
                    "mobile": False,
                },
            )
            # The layout at the new size, a frame later.
            driver.execute_async_script(
                "const done = arguments[0];"
                "requestAnimationFrame(() => requestAnimationFrame(done))"
            )

        width = WIDTH
        try:
            resize(width, height)
            while width < MAX_WIDTH:
                hidden = driver.execute_script(
                    "const table = document.querySelector('.results');"
                    "return table ? table.scrollWidth - table.clientWidth : 0"
                )
                if hidden <= 0:
                    break
                width = min(MAX_WIDTH, width + hidden + 10)
                resize(width, height)
            if full_page:
                content = driver.execute_script(
                    "return Math.max(document.documentElement.scrollHeight,"
                    " document.body.scrollHeight)"
                )
                height = min(full_page, int(content))
                resize(width, height)
            data = driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "fromSurface": True}
            )["data"]
        finally:
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
        target = self.shots / name
        image.save(target, optimize=True)
        if target.stat().st_size > self.max_bytes:
            image.quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)
        size = target.stat().st_size
        print(f"Made {name} ({image.width}x{image.height}, {size // 1000} KB)")
        if size > self.max_bytes:
            raise Failure(f"{name} is {size} bytes, above {self.max_bytes}")

    def schedule_form(self) -> None:
        """The add form with a cron expression typed: its preview of the next
        planned times shows, in the schedule's zone and in the user's."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        self.open("/admin/django_bgtasks/schedule/add/", "Add schedule")
        driver = self.driver
        driver.find_element(By.NAME, "name").send_keys("monday-photo-digest")
        Select(driver.find_element(By.NAME, "task_path")).select_by_value(
            "testproject.demo.tasks.count_photos"
        )
        Select(driver.find_element(By.NAME, "timezone")).select_by_value("Europe/Paris")
        driver.find_element(By.NAME, "cron").send_keys("0 8 * * mon")
        upcoming = driver.find_element(By.ID, "bgtasks-upcoming")
        wait_until(
            lambda: (
                "At 08:00" in upcoming.text
                and len(upcoming.find_elements(By.TAG_NAME, "li")) == 6
            ),
            20,
            "the preview of planned times",
        )
        # The preview in view: the form from its top to the "Job" fieldset.
        self.save("schedule-form.png", full_page=1000)


if __name__ == "__main__":
    sys.exit(main())
