"""The worker process: claim loop, job threads, heartbeat, shutdown."""

from .runner import ForcedExit, Worker, default_worker_id

__all__ = ["ForcedExit", "Worker", "default_worker_id"]
