"""The worker process: claim loop, job threads, heartbeat, maintenance,
shutdown; and the supervisor of ``runworker --processes``."""

from .runner import Worker, WorkerExit, default_worker_id
from .stopping import ForcedExit

__all__ = ["ForcedExit", "Worker", "WorkerExit", "default_worker_id"]
