"""Admin for worker processes."""

from django.contrib import admin

from ..models import WorkerProcess
from .base import ReadOnlyAdmin


@admin.register(WorkerProcess)
class WorkerProcessAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "hostname",
        "pid",
        "queues",
        "concurrency",
        "state",
        "started_at",
        "last_heartbeat_at",
    ]
    ordering = ["-started_at"]
