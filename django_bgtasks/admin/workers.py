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

    def has_delete_permission(self, request, obj=None):
        # A live worker's row goes when it stops; deleting it would only make
        # its heartbeat register it again.
        if obj is not None and obj.is_alive():
            return False
        return super().has_delete_permission(request, obj)
