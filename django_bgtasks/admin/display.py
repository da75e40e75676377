"""How the admin shows a job's values: status badges, task names, JSON,
times and durations."""

from __future__ import annotations

import json

from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _

from ..models import JobStatus

STATUS_COLOURS = {
    JobStatus.WAITING: "#7e6aa8",
    JobStatus.READY: "#5b6770",
    JobStatus.RUNNING: "#1f6fb2",
    JobStatus.SUCCESSFUL: "#2e7d32",
    JobStatus.FAILED: "#c62828",
    JobStatus.CANCELLED: "#8d6e63",
}


def status_badge(status: str):
    return format_html(
        '<span class="bgtasks-badge" style="background:{}">{}</span>',
        STATUS_COLOURS.get(status, "#555"),
        JobStatus(status).label if status in JobStatus.values else status,
    )


def task_label(task_path: str):
    """A task's function name, with its whole path on hover."""
    return format_html(
        '<span title="{}">{}</span>', task_path, task_path.rsplit(".", 1)[-1]
    )


def pretty_json(value):
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return format_html('<pre class="bgtasks-json">{}</pre>', text)


def format_moment(moment) -> str:
    """A timestamp to the millisecond, in the current time zone."""
    if moment is None:
        return "-"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_duration(duration) -> str:
    if duration is None:
        return "-"
    seconds = duration.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return str(duration).split(".")[0]


def cancel_request(job) -> str:
    """Who asked a running job to stop (cancelled it), and when."""
    if job.cancel_requested_at is None:
        return "-"
    moment = format_moment(job.cancel_requested_at)
    if job.cancel_requested_by:
        return _("by %(user)s at %(moment)s") % {
            "user": job.cancel_requested_by,
            "moment": moment,
        }
    return _("at %(moment)s") % {"moment": moment}
