"""Admin pages for jobs and worker processes (read-only for now)."""

from django.contrib import admin

from .models import Job, WorkerProcess


class ReadOnlyAdmin(admin.ModelAdmin):
    """Jobs and workers change only through their verbs, never by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "task_path",
        "queue_name",
        "status",
        "priority",
        "attempts",
        "max_attempts",
        "enqueued_at",
        "started_at",
        "finished_at",
        "worker",
    ]
    list_filter = ["status", "queue_name"]
    search_fields = ["=id", "task_path"]
    ordering = ["-id"]
    show_full_result_count = False


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
