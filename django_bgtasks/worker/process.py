"""The worker process's own settings and upkeep: its id, its memory (given
back after a burst, measured for ``--max-memory-per-child``) and its garbage
collector."""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import socket
import sys

from django.utils.crypto import get_random_string


def default_worker_id() -> str:
    """``host.pid.random``: unique among live workers."""
    host = socket.gethostname().split(".")[0][:60]
    return f"{host}.{os.getpid()}.{get_random_string(6).lower()}"


# Jobs claimed since memory was last given back for the worker to give it
# back again when it goes idle: a trim walks every malloc arena, which is
# not worth doing after every lone job.
TRIM_AFTER_JOBS = 100


def release_free_memory() -> None:
    """Give memory that jobs allocated and freed back to the system, where
    the C library can (glibc's ``malloc_trim``): otherwise a worker keeps the
    high-water mark of its busiest moment for good."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


# Allocations (less deallocations) of container objects between two runs of
# the youngest generation's cyclic garbage collection; Python's default is
# 700. A claimed batch and its outcomes hold a few thousand such objects for
# milliseconds, so at 700 the collector runs every few dozen jobs and
# traverses them all, only for them to be freed by their reference counts
# soon after.
GC_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Tune this process's garbage collector for running jobs: what exists
    now (Django, the apps, the tasks: here for the process's lifetime) is
    left out of collections from now on (``gc.freeze``), and the youngest
    generation is collected after ``GC_THRESHOLD`` allocations rather than
    700 (together, about a tenth less CPU per no-op job in the benchmark).
    A threshold the project has raised, or a collector it has disabled, is
    left alone. For the worker's own process only: not for a process that
    merely runs a Worker among other work."""
    gc.freeze()
    youngest, *older = gc.get_threshold()
    if gc.isenabled() and 0 < youngest < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *older)


def memory_mb() -> float:
    """The resident memory of this process, in MB (Linux: current; else the
    peak)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
