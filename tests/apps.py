import os

from django.apps import AppConfig
from django.core import checks


def record_check_run(app_configs=None, **kwargs):
    """With BGTASKS_TEST_CHECKS_LOG set, note which process ran the system
    checks (test_processes: a supervisor runs them, its children do not)."""
    log = os.environ.get("BGTASKS_TEST_CHECKS_LOG")
    if log:
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")
    return []


class TestsConfig(AppConfig):
    name = "tests"
    label = "tests"

    def ready(self):
        checks.register(record_check_run)
