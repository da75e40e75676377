"""Admin for jobs."""

from django.contrib import admin

from ..models import Job
from .base import ReadOnlyAdmin


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
        "worker_id",
    ]
    list_filter = ["status", "queue_name"]
    search_fields = ["=id", "task_path"]
    ordering = ["-id"]
    show_full_result_count = False
