"""``runworker``'s options, parsed once.

One frozen dataclass holds every option of a worker process and of its
supervisor. ``manage.py runworker`` builds it from its command line, the
``Worker`` runs by it, and a supervisor writes each child's command line
from it (``argv()``). Adding an option is adding a field here, with its flag,
its type and its help; nothing else lists the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..conf import bgtasks_settings

WORKER_ID_MAX_LENGTH = 95  # WorkerProcess.id holds 100: "-N" for children


# Argument types: each turns a command-line string into a value or refuses it.


def whole_number(minimum: int) -> Callable[[str], int]:
    """The argument type of whole numbers from ``minimum`` up."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a whole number"
            ) from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r} is not {minimum} or more")
        return number

    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not 0 or more seconds")
    return number


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port from 1 to 65535")
    return number


def positive_seconds(value: str) -> float:
    number = seconds(value)
    if number == 0:
        # An idle worker would query the database without a pause.
        raise argparse.ArgumentTypeError(f"{value!r} is not more than 0 seconds")
    return number


def queue_list(value: str) -> tuple[str, ...] | None:
    """``a,b`` -> ("a", "b"); ``*`` -> None (every queue)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one queue, or '*'")
    if "*" in names:
        if len(names) > 1:
            raise argparse.ArgumentTypeError("'*' means every queue; name no others")
        return None
    return tuple(names)


def alias_list(value: str) -> tuple[str, ...]:
    """``a,b`` -> ("a", "b")."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one database alias")
    return tuple(names)


def worker_id(value: str) -> str:
    if not 0 < len(value) <= WORKER_ID_MAX_LENGTH:
        raise argparse.ArgumentTypeError(
            f"must be 1 to {WORKER_ID_MAX_LENGTH} characters"
        )
    return value


def _option(
    flag: str,
    *,
    help: str,
    default: Any = None,
    default_factory: Callable[[], Any] | None = None,
    type: Callable[[str], Any] | None = None,
    action: str | None = None,
    metavar: str | None = None,
    show: Callable[[Any], str] = str,
):
    """A field that is also a command-line option (``action``: argparse's
    ``store_true`` or ``store_false`` for a flag); ``help`` None hides it."""
    metadata = {
        "flag": flag,
        "help": help,
        "type": type,
        "action": action,
        "metavar": metavar,
        "show": show,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_concurrency() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How a worker process (or a supervisor of several) runs."""

    queues: tuple[str, ...] | None = _option(
        "--queues",
        type=queue_list,
        show=",".join,
        help="Comma-separated queues to take jobs from; '*' for all (the default).",
    )
    databases: tuple[str, ...] | None = _option(
        "--databases",
        type=alias_list,
        show=",".join,
        help="Comma-separated aliases of the databases whose jobs to run "
        "(default: every database a DatabaseBackend keeps its jobs in). A "
        "process serves one database: with several, a supervisor runs "
        "--processes processes (default 1) for each.",
    )
    concurrency: int = _option(
        "--concurrency",
        type=positive_int,
        default_factory=default_concurrency,
        help="Jobs to run at once, each on its own thread (default: the number "
        "of CPUs).",
    )
    prefetch: int | None = _option(
        "--prefetch",
        type=non_negative_int,
        help="Claim up to this many jobs beyond the free threads, to run as "
        "threads free up (default: adapts to the backlog and to how long jobs "
        "take: many while jobs are short and the backlog deep, none while "
        "they are long).",
    )
    burst: bool = _option(
        "--burst",
        action="store_true",
        default=False,
        help="Exit once no job is due and none is running.",
    )
    max_jobs: int | None = _option(
        "--max-jobs", type=positive_int, help="Exit after running this many jobs."
    )
    poll_interval: float | None = _option(
        "--poll-interval",
        type=positive_seconds,
        help="Seconds between looks for due jobs when idle "
        "(default: BGTASKS['POLL_INTERVAL'], 1).",
    )
    worker_id: str | None = _option(
        "--worker-id",
        type=worker_id,
        help="This worker's id (default: host.pid.random). Must be unique "
        "among live workers.",
    )
    shutdown_timeout: float = _option(
        "--shutdown-timeout",
        type=seconds,
        default=30.0,
        help="Seconds running jobs get to finish after SIGTERM/SIGINT before "
        "they are put back to READY (default: 30).",
    )
    scheduler: bool = _option(
        "--no-scheduler",
        action="store_false",
        default=True,
        help="Do not fire due schedules from this worker.",
    )
    maintenance: bool = _option(
        "--no-maintenance",
        action="store_false",
        default=True,
        help="Do not rescue the jobs of dead workers or prune old jobs from "
        "this worker.",
    )
    processes: int | None = _option(
        "--processes",
        type=positive_int,
        help="Run this many worker processes, each with --concurrency threads, "
        "under a supervisor that restarts them.",
    )
    max_jobs_per_child: int | None = _option(
        "--max-jobs-per-child",
        type=positive_int,
        help="Replace a worker process after it has run this many jobs "
        "(implies --processes).",
    )
    max_memory_per_child: int | None = _option(
        "--max-memory-per-child",
        type=positive_int,
        metavar="MB",
        help="Replace a worker process, after its running jobs, once it uses "
        "more than this many MB (implies --processes).",
    )
    metrics_port: int | None = _option(
        "--metrics-port",
        type=port,
        help="Serve Prometheus metrics on this port (the metrics extra): this "
        "worker's, or a supervisor's children's summed; and the database's.",
    )
    metrics_host: str = _option(
        "--metrics-host",
        type=str,
        default="127.0.0.1",
        help="The address the metrics are served on (default: 127.0.0.1).",
    )
    # How a supervisor starts its children; not for people.
    supervised: bool = _option(
        "--supervised", action="store_true", default=False, help=None
    )
    # A supervisor's child whose counts the supervisor serves.
    count_metrics: bool = _option(
        "--count-metrics", action="store_true", default=False, help=None
    )
    max_memory: int | None = _option("--max-memory", type=positive_int, help=None)

    def __post_init__(self):
        if self.queues is not None:
            # Any iterable of names from Python; one order for the claims.
            object.__setattr__(self, "queues", tuple(sorted(set(self.queues))))
        if self.databases is not None:
            object.__setattr__(self, "databases", tuple(dict.fromkeys(self.databases)))
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.worker_id is not None:
            worker_id(self.worker_id)  # raises ArgumentTypeError, a ValueError
        if self.supervises and self.max_jobs:
            raise ValueError(
                "--max-jobs counts the jobs of one process: with --processes, "
                "use --max-jobs-per-child."
            )

    # Reading -------------------------------------------------------------------------

    @property
    def supervises(self) -> bool:
        """Whether these options run a supervisor of worker processes."""
        return bool(
            self.processes or self.max_jobs_per_child or self.max_memory_per_child
        )

    @property
    def queue_list(self) -> list[str] | None:
        """The queues to claim from, in order; None for every queue."""
        return None if self.queues is None else list(self.queues)

    @property
    def idle_poll_interval(self) -> float:
        """``poll_interval``, or ``BGTASKS["POLL_INTERVAL"]``."""
        if self.poll_interval is None:
            return bgtasks_settings.POLL_INTERVAL
        return self.poll_interval

    # The command line -----------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add every option to ``parser``; an option left out of the command
        line keeps the dataclass's default (see ``from_command``)."""
        for option in fields(cls):
            meta = option.metadata
            arguments: dict[str, Any] = {
                "dest": option.name,
                "default": argparse.SUPPRESS,
                "help": meta["help"] if meta["help"] else argparse.SUPPRESS,
            }
            if meta["action"]:
                arguments["action"] = meta["action"]
            else:
                arguments["type"] = meta["type"]
            if meta["metavar"]:
                arguments["metavar"] = meta["metavar"]
            parser.add_argument(meta["flag"], **arguments)

    @classmethod
    def from_command(cls, options: dict[str, Any]) -> WorkerOptions:
        """The options given on a command line (``handle``'s ``options``)."""
        names = {option.name for option in fields(cls)}
        return cls(**{name: options[name] for name in names if name in options})

    def argv(self) -> list[str]:
        """The command-line arguments that give these options."""
        line = []
        for option in fields(self):
            value = getattr(self, option.name)
            if value == _default(option):
                continue
            meta = option.metadata
            if meta["action"]:
                line.append(meta["flag"])
            else:
                line += [meta["flag"], meta["show"](value)]
        return line

    def for_child(self, number: int) -> WorkerOptions:
        """The options of a supervisor's child ``number`` (1-based): its own
        limits and an id of its own; the scheduler and the housekeeping are
        the supervisor's."""
        return replace(
            self,
            processes=None,
            max_jobs_per_child=None,
            max_memory_per_child=None,
            max_jobs=self.max_jobs_per_child,
            max_memory=self.max_memory_per_child,
            worker_id=self.worker_id and f"{self.worker_id}-{number}",
            scheduler=False,
            maintenance=False,
            supervised=True,
            metrics_port=None,
            metrics_host="127.0.0.1",
            count_metrics=self.metrics_port is not None,
        )


def _default(option: dataclasses.Field) -> Any:
    if option.default_factory is not dataclasses.MISSING:
        return option.default_factory()
    return option.default
