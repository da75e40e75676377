"""Admin for worker processes."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from ..db import DatabaseNow
from ..models import WorkerProcess
from .base import ReadOnlyAdmin
from .databases import DatabaseChoiceAdmin


@admin.register(WorkerProcess)
class WorkerProcessAdmin(DatabaseChoiceAdmin, ReadOnlyAdmin):
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

    def get_queryset(self, request):
        # The database's time on every row, from the one query: whether a
        # worker is alive is then no query of its own.
        return super().get_queryset(request).annotate(database_now=DatabaseNow())

    @admin.display(description=_("queues"))
    def queue_list(self, worker):
        """Its queues, or "*" for every queue (as the dashboard says)."""
        return ", ".join(worker.queues) if worker.queues else "*"

    @admin.display(description=_("alive"), boolean=True)
    def alive(self, worker):
        return worker.is_alive(getattr(worker, "database_now", None))

    def has_delete_permission(self, request, obj=None):
        # A live worker's row goes when it stops; deleting it would only make
        # its heartbeat register it again.
        if obj is not None and obj.is_alive(getattr(obj, "database_now", None)):
            return False
        return super().has_delete_permission(request, obj)
