"""The workers' settings in the benchmark's steady-state scenario: the test
project's, pruning every finished job at once (the flow of a busy site whose
retention is short beside its rate)."""

from datetime import timedelta

from testproject.settings import *  # noqa: F403
from testproject.settings import BGTASKS

BGTASKS = {
    **BGTASKS,
    "SCHEDULES": {},
    "PRUNE_AFTER": {"SUCCESSFUL": timedelta(0), "FAILED": 30, "CANCELLED": 7},
    "PRUNE_INTERVAL": 1.0,
}
