"""The admin in a real browser: headless Chromium driven by Selenium.

Logs into the admin of a live test server, opens the dashboard and a failed
job, retries it and sees it READY; types a cron expression and sees its next
planned times; follows a workflow from one step's page to another's; pauses
a queue and sees the dashboard mark it; sees a full limit on the dashboard
and follows a held-back job to the jobs holding its limit; cancels a running
job and sees who asked on its page.
Screenshots go to the folder printed at the end of the run.
"""

import shutil
import tempfile

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from django_bgtasks import chain, group
from django_bgtasks.models import Job, JobStatus, Queue
from django_bgtasks.testing import run_jobs
from tests import tasks
from tests.conftest import BOTH_DATABASES
from tests.factories import make_job, make_worker

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed"
)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="Chromium and chromedriver are not installed (apt: chromium "
        "chromium-driver)",
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's tests: starting one took
    about a second and a half, more than most of the tests themselves."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="bgtasks-chromium-")
    for argument in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1600",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chromium, live_server):
    """The module's Chromium, for one test: it starts on a blank page with
    no cookies or stored data (logged out), as a fresh browser would."""
    chromium.get("about:blank")
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    chromium.execute_cdp_cmd("Storage.clearDataForOrigin", {
        "origin": live_server.url, "storageTypes": "all",
    })  # fmt: skip
    yield chromium
    # Nothing of this test's page (its timers, its requests) runs on.
    chromium.get("about:blank")


def wait_for(driver, condition, timeout=15):
    return WebDriverWait(driver, timeout).until(condition)


def read_now(driver, selector, attribute=None) -> str | None:
    """The text (or ``attribute``) of the first element ``selector`` finds,
    read in one step: a live page may swap the element between two."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "if (!e) return null;"
        "return arguments[1] ? e.getAttribute(arguments[1]) : e.textContent.trim();",
        selector,
        attribute,
    )


def show_tab(driver, shown: bool) -> None:
    """Make the page take its tab for shown or hidden, as a browser tells it."""
    driver.execute_script(
        "Object.defineProperty(document, 'visibilityState', "
        "{configurable: true, get: () => arguments[0]});"
        "document.dispatchEvent(new Event('visibilitychange'));",
        "visible" if shown else "hidden",
    )


def log_in(browser, live_server):
    User.objects.create_superuser("admin", "admin@example.com", "secret")
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("secret")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, expected_conditions.title_contains("Site administration"))


def test_dashboard_failed_job_and_retry(browser, live_server, screenshots):
    now = timezone.now()
    for _ in range(3):
        make_job(JobStatus.SUCCESSFUL, finished_at=now, last_attempted_at=now)
    failed = make_job(
        JobStatus.FAILED,
        attempts=3,
        args=["order-42"],
        errors=[{
            "exception_class_path": "builtins.ConnectionError",
            "traceback": "Traceback (most recent call last):\n"
                         "ConnectionError: the payment gateway timed out",
            "attempt": 3, "worker_id": "web1.123.abc", "at": now.isoformat(),
        }],
    )  # fmt: skip
    log_in(browser, live_server)

    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.LINK_TEXT, "Dashboard").click()
    wait_for(browser, expected_conditions.title_contains("Background tasks dashboard"))
    assert browser.find_element(By.CSS_SELECTOR, "svg.bgtasks-chart").is_displayed()
    browser.save_screenshot(str(screenshots / "dashboard.png"))

    browser.get(f"{live_server.url}/admin/django_bgtasks/job/{failed.pk}/change/")
    traceback = browser.find_element(By.CSS_SELECTOR, ".bgtasks-traceback")
    assert "the payment gateway timed out" in traceback.text
    browser.save_screenshot(str(screenshots / "failed-job.png"))

    browser.get(f"{live_server.url}/admin/django_bgtasks/job/?status=FAILED")
    browser.find_element(By.CSS_SELECTOR, f"input[value='{failed.pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry_jobs")
    browser.find_element(By.NAME, "index").click()
    message = wait_for(
        browser,
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, ".messagelist")
        ),
    )
    assert "1 job will run again." in message.text
    browser.save_screenshot(str(screenshots / "retried.png"))

    failed.refresh_from_db()
    assert failed.status == JobStatus.READY
    browser.get(f"{live_server.url}/admin/django_bgtasks/job/{failed.pk}/change/")
    assert browser.find_element(By.CSS_SELECTOR, ".bgtasks-badge").text == "Ready"
    assert Job.objects.filter(status=JobStatus.READY).count() == 1


def test_schedule_form_previews_planned_times(browser, live_server, screenshots):
    log_in(browser, live_server)
    browser.get(f"{live_server.url}/admin/django_bgtasks/schedule/add/")
    Select(browser.find_element(By.NAME, "timezone")).select_by_value("Europe/Paris")
    cron = browser.find_element(By.NAME, "cron")
    cron.send_keys("30 9 * * 1-5")
    upcoming = browser.find_element(By.ID, "bgtasks-upcoming")
    wait_for(browser, lambda driver: "At 09:30, Monday through Friday" in upcoming.text)
    lines = upcoming.find_elements(By.TAG_NAME, "li")
    assert len(lines) == 6  # the description, then five times
    assert all("09:30:00 CE" in line.text for line in lines[1:])
    browser.save_screenshot(str(screenshots / "schedule-preview.png"))

    cron.clear()
    cron.send_keys("99 * * * *")
    wait_for(browser, lambda driver: "not a valid cron expression" in upcoming.text)


def test_a_workflow_step_links_to_the_other_steps(browser, live_server, screenshots):
    workflow = chain(
        group(tasks.add.step(1, 1), tasks.add.step(2, 2), tasks.add.step(3, 3)),
        tasks.total.step(),
        tasks.add.step(100),
    ).enqueue()
    first, second, third, callback, last = (int(m.id) for m in workflow.members)
    run_jobs(limit=1)  # the first member succeeds; the callback waits for two
    log_in(browser, live_server)

    browser.get(f"{live_server.url}/admin/django_bgtasks/job/{callback}/change/")
    table = browser.find_element(By.CSS_SELECTOR, "table.bgtasks-workflow")
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [
        (
            row.find_element(By.CSS_SELECTOR, "td a").text,
            row.find_element(By.CSS_SELECTOR, ".bgtasks-badge").text,
        )
        for row in rows
    ] == [
        (f"#{first}", "Successful"),
        (f"#{second}", "Ready"),
        (f"#{third}", "Ready"),
        (f"#{callback}", "Waiting"),
        (f"#{last}", "Waiting"),
    ]
    current = table.find_element(By.CSS_SELECTOR, "tr.bgtasks-current")
    assert current.text.startswith(f"#{callback} (this job)")
    waiting = browser.find_element(By.CSS_SELECTOR, ".field-waiting_note .readonly")
    assert waiting.text == f"2 jobs: #{second}, #{third}"
    browser.save_screenshot(str(screenshots / "workflow-step.png"))

    rows[0].find_element(By.LINK_TEXT, f"#{first}").click()
    wait_for(browser, expected_conditions.title_contains(f"Job {first} "))
    assert browser.current_url.endswith(f"/job/{first}/change/")
    current = browser.find_element(By.CSS_SELECTOR, "tr.bgtasks-current")
    assert current.text.startswith(f"#{first} (this job)")
    assert not browser.find_elements(By.CSS_SELECTOR, ".field-waiting_note")

    browser.find_element(By.LINK_TEXT, "all jobs of this workflow").click()
    wait_for(browser, expected_conditions.url_contains(f"workflow_id={workflow.id}"))
    ids = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody th a")
    assert [link.text for link in ids] == [
        str(pk) for pk in reversed([first, second, third, callback, last])
    ]


def test_the_dashboard_refreshes_itself_but_not_while_hidden(
    browser, live_server, screenshots
):
    """A job enqueued after the dashboard loaded shows in its counts without
    a reload (the page's own state outlives the refresh); a hidden tab asks
    for nothing, and catches up as soon as it is shown."""
    make_job(queue_name="images")
    log_in(browser, live_server)
    browser.get(f"{live_server.url}/admin/django_bgtasks/jobdashboard/?refresh=1")

    def ready(b) -> str:
        return read_now(b, "#bgtasks-statuses a[href$='status=READY']")

    assert ready(browser) == "1"
    browser.execute_script("window.bgtasksSamePage = true;")

    tasks.echo.using(queue_name="images").enqueue("after the page loaded")
    wait_for(browser, lambda b: ready(b) == "2")
    assert browser.execute_script("return window.bgtasksSamePage === true;")
    queues = browser.find_element(By.ID, "bgtasks-queues").text
    assert "images 2 2" in queues
    browser.save_screenshot(str(screenshots / "dashboard-live.png"))

    main = browser.find_element(By.ID, "content-main")
    show_tab(browser, False)
    wait_for(browser, lambda b: main.get_attribute("data-loading") is None)
    refreshes = main.get_attribute("data-refreshes")
    make_job(queue_name="images")
    # Three turns of the timer: no fetch while hidden.
    with pytest.raises(TimeoutException):
        wait_for(
            browser,
            lambda b: main.get_attribute("data-refreshes") != refreshes,
            timeout=3.5,
        )
    assert ready(browser) == "2"
    show_tab(browser, True)
    wait_for(browser, lambda b: ready(b) == "3", timeout=5)
    assert browser.execute_script("return window.bgtasksSamePage === true;")
    # Signed out meanwhile: the page shows the login form, not it in a panel.
    browser.delete_cookie("sessionid")
    wait_for(browser, expected_conditions.title_contains("Log in"), timeout=10)


def test_a_running_jobs_page_follows_its_progress_and_its_buttons_act(
    browser, live_server, screenshots
):
    """The page of a running job shows its progress as the task reports it,
    without a reload, and shows how it ended once it has; a failed job's
    Retry button puts it back to READY."""
    running = make_job(
        JobStatus.RUNNING,
        worker=make_worker(),
        progress={"current": 1, "total": 4, "message": "importing", "at": "now"},
    )
    log_in(browser, live_server)
    browser.get(f"{live_server.url}/admin/django_bgtasks/job/{running.pk}/change/")

    def bar(b) -> str:
        return read_now(b, ".field-progress_bar progress", "value")

    assert bar(browser) == "25"
    browser.execute_script("window.bgtasksSamePage = true;")

    Job.objects.filter(pk=running.pk).update(
        progress={"current": 3, "total": 4, "message": "importing", "at": "now"}
    )
    wait_for(browser, lambda b: bar(b) == "75")
    assert browser.execute_script("return window.bgtasksSamePage === true;")
    browser.save_screenshot(str(screenshots / "job-progress-live.png"))

    Job.objects.filter(pk=running.pk).update(
        status=JobStatus.FAILED, finished_at=timezone.now()
    )
    # Ended: the page loads again and shows how, with the button that applies.
    status = (By.CSS_SELECTOR, ".field-status_badge")
    wait_for(browser, lambda b: "Failed" in (read_now(b, ".field-status_badge") or ""))
    button = browser.find_element(By.CSS_SELECTOR, "button.bgtasks-job-button")
    assert button.text.lower() == "retry"
    button.click()
    message = wait_for(
        browser,
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, ".messagelist")
        ),
    )
    assert "1 job will run again." in message.text
    assert Job.objects.get(pk=running.pk).status == JobStatus.READY
    assert "Ready" in browser.find_element(*status).text
    browser.save_screenshot(str(screenshots / "job-buttons.png"))


def test_pause_a_queue_and_see_it_on_the_dashboard(browser, live_server, screenshots):
    make_job(queue_name="images")
    log_in(browser, live_server)

    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.LINK_TEXT, "Queues").click()
    wait_for(browser, expected_conditions.title_contains("Queues"))
    browser.find_element(By.CSS_SELECTOR, "input[value='images']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("pause_queues")
    browser.find_element(By.NAME, "index").click()
    message = wait_for(
        browser,
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, ".messagelist")
        ),
    )
    assert "1 queue paused" in message.text
    row = browser.find_element(By.CSS_SELECTOR, "input[value='images']")
    row = row.find_element(By.XPATH, "./ancestor::tr")
    assert row.find_element(By.CSS_SELECTOR, "img").get_attribute("alt") == "True"
    assert "admin (admin)" in row.text
    browser.save_screenshot(str(screenshots / "queues-paused.png"))
    assert Queue.objects.paused_names() == {"images"}

    browser.get(f"{live_server.url}/admin/django_bgtasks/jobdashboard/")
    queues = browser.find_element(By.ID, "bgtasks-queues")
    images = queues.find_element(By.CSS_SELECTOR, "tr.bgtasks-paused")
    assert images.text.startswith("images paused since ")
    note = browser.find_element(By.ID, "bgtasks-paused")
    assert "images (since " in note.text and "by admin (admin)" in note.text
    browser.save_screenshot(str(screenshots / "dashboard-paused.png"))


def test_a_job_held_by_a_limit_links_to_the_jobs_holding_it(
    browser, live_server, screenshots, limited
):
    from django_bgtasks.sql.claim import claim_jobs

    for _ in range(3):
        limited.two_at_a_time.enqueue()
    holders = claim_jobs("default", worker_id="w", queues=None, limit=10)
    assert len(holders) == 2
    waiting = Job.objects.get(status=JobStatus.READY)
    log_in(browser, live_server)

    browser.get(f"{live_server.url}/admin/django_bgtasks/jobdashboard/")
    limits = browser.find_element(By.ID, "bgtasks-limits")
    full = limits.find_element(By.CSS_SELECTOR, "tr.bgtasks-full")
    assert full.text.startswith("tests.limited_tasks.two_at_a_time full 2 / 2")
    browser.save_screenshot(str(screenshots / "dashboard-limits.png"))

    browser.get(f"{live_server.url}/admin/django_bgtasks/job/{waiting.pk}/change/")
    reason = browser.find_element(By.CSS_SELECTOR, ".field-waits_because")
    assert "is full: 2 of 2 running" in reason.text
    browser.save_screenshot(str(screenshots / "job-held-by-limit.png"))
    reason.find_element(By.LINK_TEXT, f"#{holders[0].pk}").click()
    wait_for(browser, expected_conditions.url_contains(f"/job/{holders[0].pk}/"))
    assert "RUNNING" in browser.find_element(By.ID, "content").text


def test_cancel_a_running_job_and_see_who_asked(browser, live_server, screenshots):
    running = make_job(JobStatus.RUNNING, worker_id="web1.123.abc", attempts=1)
    log_in(browser, live_server)

    browser.get(f"{live_server.url}/admin/django_bgtasks/job/?status=RUNNING")
    browser.find_element(By.CSS_SELECTOR, f"input[value='{running.pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("cancel_jobs")
    browser.find_element(By.NAME, "index").click()
    message = wait_for(
        browser,
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, ".messagelist")
        ),
    )
    assert "1 running job was asked to stop; it ends CANCELLED." in message.text
    running.refresh_from_db()
    assert running.status == JobStatus.RUNNING
    assert running.cancel_requested_by == "admin"

    browser.get(f"{live_server.url}/admin/django_bgtasks/job/{running.pk}/change/")
    field = browser.find_element(By.CSS_SELECTOR, ".field-cancel_request")
    assert "by admin at " in field.text
    browser.save_screenshot(str(screenshots / "running-job-cancelled.png"))


@pytest.mark.django_db(transaction=True, databases=BOTH_DATABASES)
def test_switch_the_database_on_the_dashboard_and_the_job_list_follows(
    browser, live_server, screenshots, elsewhere
):
    make_job(queue_name="images")
    there = [make_job(using="other", queue_name="heavy") for _ in range(3)]
    log_in(browser, live_server)
    browser.get(f"{live_server.url}/admin/django_bgtasks/jobdashboard/?refresh=1")

    def ready(b) -> str:
        return read_now(b, "#bgtasks-statuses a[href*='status=READY']")

    def chosen(b) -> str:
        return read_now(b, ".bgtasks-database-switch strong")

    assert (ready(browser), chosen(browser)) == ("1", "default")
    browser.find_element(By.LINK_TEXT, "other").click()
    wait_for(browser, lambda b: chosen(b) == "other")
    assert ready(browser) == "3"
    # Its refreshes stay on it.
    main = browser.find_element(By.ID, "content-main")
    refreshes = main.get_attribute("data-refreshes")
    wait_for(browser, lambda b: main.get_attribute("data-refreshes") != refreshes)
    assert ready(browser) == "3"
    assert "heavy" in browser.find_element(By.ID, "bgtasks-queues").text
    browser.save_screenshot(str(screenshots / "dashboard-other-database.png"))

    # The address names the database, nothing else keeps it: the job list
    # without it is the default database's; the dashboard's links name it.
    browser.get(f"{live_server.url}/admin/django_bgtasks/job/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 and chosen(browser) == "default"
    browser.back()
    wait_for(browser, lambda b: chosen(b) == "other")
    browser.find_element(
        By.CSS_SELECTOR, "#bgtasks-statuses a[href$='status=READY&database=other']"
    ).click()
    wait_for(
        browser,
        lambda b: "database=other" in b.current_url and "/job/" in b.current_url,
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 3 and chosen(browser) == "other"
    assert all(f"/job/{job.pk}/change/" in browser.page_source for job in there)
    browser.find_element(By.LINK_TEXT, "default").click()
    wait_for(browser, lambda b: chosen(b) == "default")
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1
