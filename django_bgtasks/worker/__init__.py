"""The worker process (``runworker``): a main loop that claims, job threads,
a completer, a listener, a heartbeat and the maintenance duties, all
reporting to one ledger; and the supervisor of ``runworker --processes``.
``docs/internals/architecture.rst`` draws it."""

from .options import WorkerOptions
from .process import default_worker_id
from .runner import Worker, WorkerExit
from .stopping import ForcedExit

__all__ = ["ForcedExit", "Worker", "WorkerExit", "WorkerOptions", "default_worker_id"]
