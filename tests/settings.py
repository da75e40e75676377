"""Test settings: the test project's, plus the tests app and quicker timings."""

from testproject.settings import *  # noqa: F403
from testproject.settings import BASE_DIR, DATABASES, INSTALLED_APPS, TASKS, env

INSTALLED_APPS = [*INSTALLED_APPS, "tests"]

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory: worker subprocesses must open the same database.
    # BGTASKS_TEST_SQLITE names another file, for two runs side by side.
    DATABASES["default"]["TEST"] = {
        "NAME": env.str(
            "BGTASKS_TEST_SQLITE", default=str(BASE_DIR / "test_db.sqlite3")
        )
    }

# A second database, for the tests of queues on several databases
# (test_databases.py; set up only for the tests that ask for it): on the
# same server, named after the first. A worker subprocess, whose default
# database is the test database, derives the same test name.
_other = {**DATABASES["default"], "TEST": {**DATABASES["default"].get("TEST", {})}}
if _other["ENGINE"].endswith("sqlite3"):
    _other["NAME"] = f"{DATABASES['default']['TEST']['NAME']}-other"
    _other["TEST"]["NAME"] = _other["NAME"]
else:
    _other["NAME"] = f"{_other['NAME']}_other"
    _other["TEST"].pop("NAME", None)
# A worker subprocess's "other" may be pointed elsewhere (a database that
# is not there: test_databases.py).
_other["NAME"] = env.str("BGTASKS_TEST_OTHER_NAME", default=_other["NAME"])
DATABASES["other"] = _other

TASKS = {
    "default": {**TASKS["default"], "QUEUES": ["default", "images", "other"]},
}
# The backend whose jobs live in the second database: in the settings of
# the tests of several databases (override_settings) and of their workers.
ELSEWHERE_BACKEND = {
    "BACKEND": "django_bgtasks.backend.DatabaseBackend",
    "QUEUES": ["default", "heavy"],
    "OPTIONS": {"DATABASE": "other"},
}
if env.bool("BGTASKS_TEST_ELSEWHERE", default=False):
    TASKS["elsewhere"] = ELSEWHERE_BACKEND

# The PgBouncer test's workers: LISTEN over a direct connection.
if env.str("BGTASKS_TEST_LISTEN_URL", default=""):
    DATABASES["listen"] = env.db_url("BGTASKS_TEST_LISTEN_URL")

BGTASKS = {
    "NOTIFY": env.bool("BGTASKS_NOTIFY", default=True),
    "LISTEN_DATABASE": "listen" if "listen" in DATABASES else None,
    # Worker subprocesses of the schedule tests get their schedules this way.
    "SCHEDULES": env.json("BGTASKS_TEST_SCHEDULES", default={}),
    "POLL_INTERVAL": 0.2,
    "HEARTBEAT_INTERVAL": env.float("BGTASKS_HEARTBEAT_INTERVAL", default=1.0),
    "WORKER_TIMEOUT": env.float("BGTASKS_WORKER_TIMEOUT", default=30.0),
    "CANCEL_GRACE_PERIOD": env.float("BGTASKS_CANCEL_GRACE_PERIOD", default=10.0),
    "BACKOFF": {"initial": 0.0, "factor": 1.0, "maximum": 0.0, "jitter": 0.0},
    # The limit tests' workers: their tasks (tests/limited_tasks.py, kept
    # out of the other tests' registry) and queue limits.
    "TASK_MODULES": env.list("BGTASKS_TEST_TASK_MODULES", default=[]),
    "QUEUE_LIMITS": env.json("BGTASKS_TEST_QUEUE_LIMITS", default={}),
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
