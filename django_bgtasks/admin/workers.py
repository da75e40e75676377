"""Admin for worker processes."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from ..models import WorkerProcess
from .base import ReadOnlyAdmin


@admin.register(WorkerProcess)
class WorkerProcessAdmin(ReadOnlyAdmin):
    list_display = [
        "alive",
        "id",
        "hostname",
        "pid",
        "queue_list",
        "concurrency",
        "state",
        "started_at",
        "last_heartbeat_at",
    ]
    ordering = ["-started_at"]

    @admin.display(description=_("queues"))
    def queue_list(self, worker):
        """Its queues, or "*" for every queue (as the dashboard says)."""
        return ", ".join(worker.queues) if worker.queues else "*"

    @admin.display(description=_("alive"), boolean=True)
    def alive(self, worker):
        return worker.is_alive()

    def has_delete_permission(self, request, obj=None):
        # A live worker's row goes when it stops; deleting it would only make
        # its heartbeat register it again.
        if obj is not None and obj.is_alive():
            return False
        return super().has_delete_permission(request, obj)
