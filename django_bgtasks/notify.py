"""Wake-ups on PostgreSQL: enqueue sends NOTIFY, workers LISTEN
(``worker/listener.py``); and stop requests: an operator's cancel of running
jobs tells their workers, on a channel of its own.

NOTIFY is transactional, so a worker is woken when the job's transaction
commits, never before. Workers also poll, so a missed notification (or
``BGTASKS["NOTIFY"] = False``) only costs latency. Behind PgBouncer in
transaction mode a pooled connection hears nothing: workers listen on
``BGTASKS["LISTEN_DATABASE"]``, a direct connection, or find at start that
they cannot hear and poll only. A notification's text is its queue and, where one
applies to all its jobs, their priority.
"""

from __future__ import annotations

from django.db import connections

from .conf import bgtasks_settings

CHANNEL = "django_bgtasks"
# A notification's text is the id of a worker holding jobs asked to stop:
# it reads which (JobQuerySet.cancel_requests). Its heartbeat reads them
# too, so a missed one costs at most a heartbeat's interval.
STOP_CHANNEL = "django_bgtasks_stop"


def payload(queue_name: str, priority: int | None = None) -> str:
    """A notification's text: the queue, and the priority of its new jobs
    where one applies to all of them (a worker with a backlog claims at once
    only for a job that outranks the ones it holds)."""
    return queue_name if priority is None else f"{queue_name} {priority}"


def parse(text: str) -> tuple[str, int | None]:
    """``(queue_name, priority or None)`` from a notification's text."""
    queue_name, _, priority = text.rpartition(" ")
    if queue_name and priority.lstrip("-").isdigit():
        return queue_name, int(priority)
    return text, None  # from an earlier version, or without a priority


def notify_enabled(connection) -> bool:
    return connection.vendor == "postgresql" and bool(bgtasks_settings.NOTIFY)


def wake(using: str, queue_names) -> None:
    """Wake the workers of these queues, if NOTIFY is on (at commit)."""
    connection = connections[using]
    if notify_enabled(connection):
        for queue_name in sorted(queue_names):
            send(connection, queue_name)


def send(connection, queue_name: str) -> None:
    """Notify listeners that ``queue_name`` has a new job (at commit)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload(queue_name)])


def ask_to_stop(using: str, worker_ids) -> None:
    """Tell these workers that jobs they hold were asked to stop, if NOTIFY
    is on (at commit)."""
    connection = connections[using]
    if notify_enabled(connection):
        with connection.cursor() as cursor:
            for worker_id in sorted(worker_ids):
                cursor.execute("SELECT pg_notify(%s, %s)", [STOP_CHANNEL, worker_id])
