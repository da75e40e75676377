"""The dashboard: jobs per status and queue, queue lag and pauses,
throughput, the slowest and most failing tasks, and the workers with what
they run."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _

from .. import stats
from ..models import JobDashboard, JobStatus
from .databases import chosen_database, database_switch, database_url
from .display import STATUS_COLOURS, format_duration, status_badge

CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 720, 160, 24


def throughput_chart(minutes: list[stats.Minute]):
    """A stacked bar chart (SVG) of jobs finished per minute: succeeded in
    green under failed in red. Server-rendered; only numbers and escaped
    text go in."""
    peak = max((m.succeeded + m.failed for m in minutes), default=0) or 1
    slot = (CHART_WIDTH - CHART_MARGIN) / max(len(minutes), 1)
    plot = CHART_HEIGHT - CHART_MARGIN

    def bar(index, minute):
        x = CHART_MARGIN + index * slot
        ok = plot * minute.succeeded / peak
        bad = plot * minute.failed / peak
        title = _("%(time)s: %(ok)d succeeded, %(bad)d failed") % {
            "time": minute.at.strftime("%H:%M"),
            "ok": minute.succeeded,
            "bad": minute.failed,
        }
        return (
            title,
            f"{x:.1f}",
            f"{plot - ok:.1f}",
            f"{slot * 0.8:.1f}",
            f"{ok:.1f}",
            STATUS_COLOURS[JobStatus.SUCCESSFUL],
            f"{x:.1f}",
            f"{plot - ok - bad:.1f}",
            f"{slot * 0.8:.1f}",
            f"{bad:.1f}",
            STATUS_COLOURS[JobStatus.FAILED],
        )

    bars = format_html_join(
        "",
        '<g><title>{}</title><rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>'
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/></g>',
        (bar(index, minute) for index, minute in enumerate(minutes)),
    )
    first = minutes[0].at.strftime("%H:%M") if minutes else ""
    last = minutes[-1].at.strftime("%H:%M UTC") if minutes else ""
    return format_html(
        '<svg class="bgtasks-chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        'role="img" aria-label="{label}">'
        '<line x1="{m}" y1="{p}" x2="{w}" y2="{p}" stroke="#999"/>'
        '<text x="0" y="12" font-size="11">{peak}</text>'
        '<text x="0" y="{p}" font-size="11">0</text>'
        "{bars}"
        '<text x="{m}" y="{h}" font-size="11">{first}</text>'
        '<text x="{w}" y="{h}" font-size="11" text-anchor="end">{last}</text>'
        "</svg>",
        w=CHART_WIDTH,
        h=CHART_HEIGHT,
        m=CHART_MARGIN,
        p=plot,
        peak=peak,
        bars=bars,
        first=first,
        last=last,
        label=_("Jobs finished per minute, last hour"),
    )


@admin.register(JobDashboard)
class DashboardAdmin(admin.ModelAdmin):
    """Shows the dashboard in place of a change list."""

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("django_bgtasks.view_job")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        live = path(
            "live/",
            self.admin_site.admin_view(self.live_view),
            name="django_bgtasks_jobdashboard_live",
        )
        return [live, *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        context = {
            **self.admin_site.each_context(request),
            "title": _("Background tasks dashboard"),
            "opts": self.opts,
            "live_url": database_url(
                reverse("admin:django_bgtasks_jobdashboard_live"),
                chosen_database(request),
            ),
            "database_switch": database_switch(request),
            **self._figures(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/django_bgtasks/dashboard.html", context)

    def live_view(self, request):
        """The dashboard's figures alone (the page's body, as HTML), which
        the page fetches every few seconds to refresh itself in place."""
        context = {"opts": self.opts, **self._figures(request)}
        response = TemplateResponse(
            request, "admin/django_bgtasks/dashboard_body.html", context
        )
        add_never_cache_headers(response)
        return response

    def _figures(self, request) -> dict:
        """What the dashboard shows now (``stats.py``) of the chosen
        database's jobs, as its template reads it."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        using = chosen_database(request)
        now = timezone.now()
        minutes = stats.throughput(now, using=using)
        queues = stats.queue_states(now, using=using)
        queues_url = reverse("admin:django_bgtasks_queue_changelist")

        def jobs(**lookups) -> str:
            """The list of this database's jobs that ``lookups`` filter."""
            url = reverse("admin:django_bgtasks_job_changelist")
            return database_url(url, using, **lookups)

        def job_page(pk) -> str:
            url = reverse("admin:django_bgtasks_job_change", args=[pk])
            return database_url(url, using)

        may_see_queues = request.user.has_perm("django_bgtasks.view_queue")
        return {
            "now": now,
            "database": using,
            "refresh_seconds": _refresh_seconds(request),
            "statuses": [
                (status, status_badge(status), count, jobs(status=status))
                for status, count in stats.status_counts(using).items()
            ],
            "queues": [
                (
                    queue,
                    format_duration(queue.lag) if queue.lag else "-",
                    jobs(queue_name=queue.name),
                    jobs(status=JobStatus.WAITING, queue_name=queue.name),
                )
                for queue in queues
            ],
            "paused_queues": [queue.paused for queue in queues if queue.paused],
            "limits": stats.limit_figures(using),
            "queues_url": database_url(queues_url, using) if may_see_queues else None,
            "paused_queues_url": (
                database_url(queues_url, using, paused="yes")
                if may_see_queues
                else None
            ),
            "chart": throughput_chart(minutes),
            "finished_last_hour": sum(m.succeeded for m in minutes),
            "failed_last_hour": sum(m.failed for m in minutes),
            "slowest": [
                (figure, format_duration(figure.value))
                for figure in stats.slowest_tasks(now, using=using)
            ],
            "failing": [
                (figure, jobs(status=JobStatus.FAILED, task_path=figure.task_path))
                for figure in stats.failing_tasks(now, using=using)
            ],
            "workers": [
                (state, [(job, job_page(job.pk)) for job in state.jobs])
                for state in stats.worker_states(now, using=using)
            ],
        }


# Seconds between the page's refreshes: ?refresh=N (1 to 300), else this.
REFRESH_SECONDS = 5


def _refresh_seconds(request) -> int:
    try:
        seconds = int(request.GET.get("refresh", REFRESH_SECONDS))
    except ValueError:
        return REFRESH_SECONDS
    return min(max(seconds, 1), 300)
