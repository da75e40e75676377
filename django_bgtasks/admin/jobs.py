"""Admin for jobs: find them, read everything about one, retry, cancel (a
running one: ask it to stop), run now.

Jobs are never edited by hand: every action is a model verb
(``JobQuerySet.retry`` ...), applies only to the jobs in the statuses it fits,
and needs its own permission (``retry_job``, ``cancel_job``, ``run_job``), so
a staff user with only ``view_job`` can look but not act. Lists stay fast on
large tables: counts are bounded (see ``stats.tally``) and the filters offer
known tasks and queues instead of scanning the table for them.

A workflow's step shows its workflow on its page (``workflows.py``); a
job that steps wait for is not deleted until it has ended.
"""

from __future__ import annotations

import json
import re

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.functional import cached_property
from django.utils.html import conditional_escape, format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import registry
from ..databases import database_backends
from ..models import NOT_STARTED, Job, JobStatus
from ..models.transitions import OPERATOR_ACTIONS
from ..routes import routed_backend
from ..stats import STATUSES, configured_queue_names, tally, waiting_jobs
from ..waits import why_waiting
from .base import ReadOnlyAdmin
from .databases import DatabaseChoiceAdmin, database_url
from .display import (
    cancel_request,
    format_duration,
    format_moment,
    pretty_json,
    status_badge,
    task_label,
)
from .workflows import WorkflowFilter, WorkflowSection


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Jobs searched for a text that names no registered task: the newest.
SEARCH_WINDOW = 100_000

# A job named in a reason it waits: "#123".
JOB_MENTION = re.compile(r"#(\d+)")


def _is_awaited(job) -> bool:
    return job.has_dependents and job.status in NOT_STARTED


class BoundedCountPaginator(Paginator):
    """Counts at most ``COUNT_CAP`` rows exactly; above, the planner's
    estimate. The admin's pages stay fast on a table of millions."""

    @cached_property
    def count(self):
        return tally(self.object_list).value


class ChoicesFilter(admin.SimpleListFilter):
    """A filter on a field whose choices are known without reading the table."""

    field_name: str

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field_name: self.value()})
        return queryset


class IndexedFilter(ChoicesFilter):
    """A filter on a column of a ``ListIndex`` (the task, the queue): a value
    a few of millions of jobs have is found through the indexes."""

    def queryset(self, request, queryset):
        if self.value():
            return queryset.matching(**{self.field_name: self.value()})
        return queryset


class StatusFilter(ChoicesFilter):
    title = _("status")
    parameter_name = field_name = "status"

    def lookups(self, request, model_admin):
        return [(status, status.label) for status in STATUSES]

    def queryset(self, request, queryset):
        if self.value() == JobStatus.WAITING:
            return queryset & waiting_jobs(queryset.db)  # the workflow index
        return super().queryset(request, queryset)


class QueueFilter(IndexedFilter):
    title = _("queue")
    parameter_name = field_name = "queue_name"

    def lookups(self, request, model_admin):
        """The queues of the list's database: its backends' and those of the
        tasks whose jobs are not kept in another."""
        using = model_admin.database(request)
        elsewhere = {
            alias
            for database, aliases in database_backends().items()
            if database != using
            for alias in aliases
        }
        names = configured_queue_names(using)
        names |= {
            task.queue_name
            for task in registry.registered_tasks().values()
            if routed_backend(task) not in elsewhere
        }
        return [(name, name) for name in sorted(names)]


class TaskFilter(IndexedFilter):
    title = _("task")
    parameter_name = field_name = "task_path"

    def lookups(self, request, model_admin):
        registry.autodiscover()
        return [(path, path) for path in sorted(registry.registered_tasks())]


@admin.register(Job)
class JobAdmin(DatabaseChoiceAdmin, WorkflowSection, ReadOnlyAdmin):
    list_display = [
        "id",
        "task",
        "queue_name",
        "status_badge",
        "priority",
        "attempts_of",
        "enqueued",
        "started",
        "finished",
        "duration",
        "holder",
    ]
    list_filter = [
        StatusFilter,
        QueueFilter,
        TaskFilter,
        WorkflowFilter,
        ("enqueued_at", admin.DateFieldListFilter),
        ("finished_at", admin.DateFieldListFilter),
    ]
    search_fields = ["=id", "task_path"]
    ordering = ["-id"]
    list_per_page = 50
    paginator = BoundedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice: slow
    actions = ["retry_jobs", "cancel_jobs", "run_jobs_now", "delete_jobs"]
    fieldsets = [
        (None, {"fields": [
            "id", "task_path", "status_badge", "queue_name", "priority",
            "attempts_of", "runs_alone", "holder", "schedule_link", "unique_key",
        ]}),
        (_("Progress"), {"fields": ["progress_bar"]}),
        (_("Timeline"), {"fields": [
            "enqueued", "due", "expires", "started", "last_attempted", "finished",
            "duration",
        ]}),
        (_("Arguments"), {"fields": ["arguments"]}),
        (_("Result"), {"fields": ["result"]}),
        (_("Errors"), {"fields": ["error_list", "worker_list"]}),
    ]  # fmt: skip
    readonly_fields = [
        *(name for _, options in fieldsets for name in options["fields"]),
        *WorkflowSection.workflow_fields,
        "waits_because",
        "cancel_request",
        "route",
    ]

    def get_fieldsets(self, request, obj=None):
        """A job that has not started says why it waits, after its status."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        (name, options), *rest = fieldsets
        fields = list(options["fields"])
        if obj.route:  # which of BGTASKS["ROUTES"] set its queue or priority
            fields.insert(fields.index("priority") + 1, "route")
        after_status = fields.index("status_badge") + 1
        if obj.status in (JobStatus.READY, JobStatus.WAITING):
            fields.insert(after_status, "waits_because")
        elif obj.cancel_requested_at is not None:
            # Who cancelled it while it ran, and when.
            fields.insert(after_status, "cancel_request")
        return [(name, {**options, "fields": fields}), *rest]

    @admin.display(description=_("cancel requested"))
    def cancel_request(self, job):
        return cancel_request(job)

    @admin.display(description=_("why it waits"))
    def waits_because(self, job):
        reasons = why_waiting(job)
        if not reasons:
            return _("Nothing: a worker takes it at its next claim.")
        return format_html_join(
            "",
            "<p>{}</p>",
            (
                (self._linked(reason.message, reason.jobs, job._state.db),)
                for reason in reasons
            ),
        )

    def _linked(self, message: str, pks: list[int], using: str):
        """``message`` with each ``#id`` of the jobs ``pks`` (in database
        ``using``) a link to it."""
        ids = {str(pk) for pk in pks}

        def link(match):
            pk = match.group(1)
            if pk not in ids:
                return match.group(0)
            url = reverse("admin:django_bgtasks_job_change", args=[pk])
            return format_html('<a href="{}">#{}</a>', database_url(url, using), pk)

        return mark_safe(JOB_MENTION.sub(link, conditional_escape(message)))

    class Media:
        css = {"all": ["django_bgtasks/admin.css"]}
        js = ["django_bgtasks/live.js", "django_bgtasks/job_live.js"]

    change_form_template = "admin/django_bgtasks/job/change_form.html"

    # A job's own page: its actions as buttons, its progress followed live ---

    # Button: (the list's action it runs, its label, the operator's action
    # it is: OPERATOR_ACTIONS), in the order shown.
    JOB_BUTTONS = {
        "retry": ("retry_jobs", _("Retry"), "retry"),
        "cancel": ("cancel_jobs", _("Cancel"), "cancel"),
        "run": ("run_jobs_now", _("Run now"), "run_now"),
    }

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/do/<str:button>/",
                self.admin_site.admin_view(self.button_view),
                name="{}_{}_button".format(*info),
            ),
            path(
                "<path:object_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="{}_{}_progress".format(*info),
            ),
            *super().get_urls(),
        ]

    def _buttons(self, request, job) -> list[tuple[str, str, str]]:
        """The buttons of the actions that apply to ``job`` now (their
        outcomes' conditions) and that the user may run: (name, label, the
        URL its form posts to, on the job's database)."""
        this_job = Job.objects.using(job._state.db).filter(pk=job.pk)
        return [
            (
                name,
                label,
                database_url(
                    reverse("admin:django_bgtasks_job_button", args=[job.pk, name]),
                    job._state.db,
                ),
            )
            for name, (_action, label, operator_action) in self.JOB_BUTTONS.items()
            if getattr(self, f"has_{name}_permission")(request)
            and this_job.applicable(*OPERATOR_ACTIONS[operator_action]).exists()
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if job is not None:
            context["job_buttons"] = self._buttons(request, job)
            if job.status == JobStatus.RUNNING:
                context["progress_url"] = database_url(
                    reverse("admin:django_bgtasks_job_progress", args=[job.pk]),
                    job._state.db,
                )
        return super().change_view(request, object_id, form_url, context)

    def button_view(self, request, object_id, button):
        """Run one job's action (a button of its page), as the list's action
        runs on the jobs selected: the same permission, verb and messages."""
        if button not in self.JOB_BUTTONS:
            raise Http404
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        action, _label, _operator_action = self.JOB_BUTTONS[button]
        job = self.get_object(request, object_id)  # None for an id not a job's
        if job is None:
            raise Http404
        allowed = getattr(self, f"has_{button}_permission")(request)
        if not (allowed and self.has_view_permission(request, job)):
            raise PermissionDenied
        # No transaction of its own around it: the verb locks first and, in
        # none of the caller's, retries a deadlock (JobQuerySet.apply).
        getattr(self, action)(request, self.get_queryset(request).filter(pk=job.pk))
        change = reverse("admin:django_bgtasks_job_change", args=[object_id])
        return redirect(database_url(change, self.database(request)))

    def progress_view(self, request, object_id):
        """A job's status and progress (its page's progress field, as HTML),
        which a running job's page reads every few seconds."""
        job = self.get_object(request, object_id)
        if job is None or not self.has_view_permission(request, job):
            raise Http404
        response = JsonResponse(
            {"status": job.status, "progress_html": str(self.progress_bar(job))}
        )
        add_never_cache_headers(response)
        return response

    def get_search_results(self, request, queryset, search_term):
        """A number finds the job with that id; text, jobs whose task path
        contains it."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isascii() and term.isdigit():
            return queryset.filter(pk=int(term) if len(term) < 19 else -1), False
        # Registered tasks are matched here, so the table is read only by an
        # equality; a task no longer registered is looked for by a scan of
        # the newest SEARCH_WINDOW jobs, not of the whole history: a text
        # that matches nothing would read every row twice (the count, then
        # the page).
        known = [
            path for path in registry.registered_tasks() if term.lower() in path.lower()
        ]
        if known:
            return queryset.matching(task_path__in=known), False
        newest = (
            Job.objects.using(queryset.db)
            .order_by("-pk")
            .values_list("pk", flat=True)
            .first()
        )
        matching = queryset.filter(task_path__icontains=term)
        if newest is None or newest <= SEARCH_WINDOW:
            return matching, False
        self.message_user(
            request,
            _(
                "No registered task's path contains %(term)s: only the newest "
                "%(window)s jobs were searched for it."
            )
            % {"term": term, "window": f"{SEARCH_WINDOW:,}"},
            messages.INFO,
        )
        return matching.filter(pk__gt=newest - SEARCH_WINDOW), False

    # Permissions of the actions --------------------------------------------

    def _has(self, request, action: str) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{action}_job")

    def has_retry_permission(self, request):
        return self._has(request, "retry")

    def has_cancel_permission(self, request):
        return self._has(request, "cancel")

    def has_run_permission(self, request):
        return self._has(request, "run")

    def has_delete_permission(self, request, obj=None):
        # A running job belongs to its worker until it ends; a job that
        # workflow steps wait for, until it ends or is cancelled (deleted,
        # it would leave them waiting for ever).
        if obj is not None and (obj.status == JobStatus.RUNNING or _is_awaited(obj)):
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request, action_location=None):
        # action_location: Django 6.1's argument, absent before.
        kwargs = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **kwargs)
        actions.pop("delete_selected", None)  # delete_jobs spares running jobs
        return actions

    # Actions -----------------------------------------------------------------

    def _report(self, request, changed: int, selected: int, done: str, skipped: str):
        self.message_user(request, done % {"count": changed})
        if selected > changed:
            self.message_user(
                request, skipped % {"count": selected - changed}, messages.WARNING
            )

    @admin.action(
        description=_("Retry selected failed or cancelled jobs"), permissions=["retry"]
    )
    def retry_jobs(self, request, queryset):
        selected = queryset.count()
        changed = queryset.retry()
        self._report(
            request,
            changed,
            selected,
            ngettext(
                "%(count)d job will run again.",
                "%(count)d jobs will run again.",
                changed,
            ),
            _(
                "%(count)d skipped: only FAILED or CANCELLED jobs can be retried, "
                "and a workflow step cancelled by a failure only with the job "
                "that failed."
            ),
        )

    @admin.action(
        description=_("Cancel selected jobs (running ones are asked to stop)"),
        permissions=["cancel"],
    )
    def cancel_jobs(self, request, queryset):
        selected = queryset.count()
        awaited = queryset.awaited().exists()
        changed = queryset.cancel(by=request.user.get_username())
        self._report(
            request,
            changed.cancelled,
            selected - changed.asked_to_stop,
            ngettext(
                "%(count)d job cancelled.",
                "%(count)d jobs cancelled.",
                changed.cancelled,
            ),
            _(
                "%(count)d skipped: only READY, WAITING and RUNNING jobs can be "
                "cancelled, and a running job is asked to stop once."
            ),
        )
        if changed.asked_to_stop:
            self.message_user(
                request,
                ngettext(
                    "%(count)d running job was asked to stop; it ends CANCELLED.",
                    "%(count)d running jobs were asked to stop; they end CANCELLED.",
                    changed.asked_to_stop,
                )
                % {"count": changed.asked_to_stop},
            )
        if awaited and changed.cancelled:
            self.message_user(
                request, _("The workflow steps waiting for them were cancelled too.")
            )

    @admin.action(description=_("Run selected delayed jobs now"), permissions=["run"])
    def run_jobs_now(self, request, queryset):
        selected = queryset.count()
        changed = queryset.run_now()
        self._report(
            request,
            changed,
            selected,
            ngettext(
                "%(count)d job is due now.", "%(count)d jobs are due now.", changed
            ),
            _(
                "%(count)d skipped: only READY jobs waiting for a later time can be "
                "run now."
            ),
        )

    @admin.action(
        description=_("Delete selected jobs (not running ones)"),
        permissions=["delete"],
    )
    def delete_jobs(self, request, queryset):
        """Django's delete, with its confirmation page, for the selected jobs
        that are not running and that no workflow step waits for."""
        running = queryset.filter(status=JobStatus.RUNNING).count()
        if running:
            self.message_user(
                request,
                ngettext(
                    "%(count)d running job is left alone.",
                    "%(count)d running jobs are left alone.",
                    running,
                )
                % {"count": running},
                messages.WARNING,
            )
        awaited = queryset.awaited().count()
        if awaited:
            self.message_user(
                request,
                ngettext(
                    "%(count)d job that workflow steps wait for is left alone: "
                    "cancel it to cancel them.",
                    "%(count)d jobs that workflow steps wait for are left alone: "
                    "cancel them to cancel the steps.",
                    awaited,
                )
                % {"count": awaited},
                messages.WARNING,
            )
        return delete_selected(
            self,
            request,
            queryset.deletable(),
        )

    def delete_queryset(self, request, queryset):
        """The jobs, with the edges of the workflow steps among them, as
        ``manage.py bgtasks delete`` and pruning delete them."""
        queryset.delete_jobs()

    def delete_model(self, request, obj):
        jobs = Job.objects.using(obj._state.db).filter(pk=obj.pk)
        if not jobs.delete_jobs():
            # Started meanwhile, or now awaited: Django still says deleted.
            self.message_user(
                request,
                _(
                    "The job was not deleted: it started, or workflow steps now "
                    "wait for it."
                ),
                messages.WARNING,
            )

    # Columns and fields ------------------------------------------------------

    @admin.display(description=_("task"), ordering="task_path")
    def task(self, job):
        return task_label(job.task_path)

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, job):
        return status_badge(job.status)

    @admin.display(description=_("enqueued"), ordering="enqueued_at")
    def enqueued(self, job):
        return format_moment(job.enqueued_at)

    @admin.display(description=_("run after"), ordering="run_after")
    def due(self, job):
        return format_moment(job.run_after)

    @admin.display(description=_("expires"), ordering="expires_at")
    def expires(self, job):
        return format_moment(job.expires_at) if job.expires_at else _("never")

    @admin.display(description=_("started"), ordering="started_at")
    def started(self, job):
        return format_moment(job.started_at)

    @admin.display(description=_("last attempted"), ordering="last_attempted_at")
    def last_attempted(self, job):
        return format_moment(job.last_attempted_at)

    @admin.display(description=_("finished"), ordering="finished_at")
    def finished(self, job):
        return format_moment(job.finished_at)

    @admin.display(description=_("worker"))
    def holder(self, job):
        """Who holds the job now, or else who ran its last attempt."""
        if job.worker_id:
            return job.worker_id
        return str(job.worker_ids[-1]) if job.worker_ids else "-"

    @admin.display(description=_("attempts"))
    def attempts_of(self, job):
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description=_("claim to finish"))
    def duration(self, job):
        return format_duration(job.duration)

    @admin.display(description=_("schedule"))
    def schedule_link(self, job):
        if job.schedule_id is None:
            return "-"
        url = database_url(
            reverse("admin:django_bgtasks_schedule_change", args=[job.schedule_id]),
            job._state.db,
        )
        planned = job.scheduled_for.isoformat() if job.scheduled_for else _("run now")
        return format_html('<a href="{}">{}</a> ({})', url, job.schedule, planned)

    @admin.display(description=_("progress"))
    def progress_bar(self, job):
        progress = job.progress or {}
        if not progress:
            return "-"
        current, total = progress.get("current"), progress.get("total")
        if not _number(current):  # written behind the ORM's back
            return format_html("{}", json.dumps(progress))
        total = total if _number(total) and total > 0 else None
        label = f"{current:g}" + (f" / {total:g}" if total else "")
        bar = ""
        if total:
            percent = max(0, min(100, 100 * current / total))
            bar = format_html(
                '<progress class="bgtasks-progress" max="100" value="{}">{}%'
                "</progress> ",
                f"{percent:.0f}",
                f"{percent:.0f}",
            )
        return format_html(
            "{}{} {} <small>({})</small>",
            bar,
            label,
            str(progress.get("message", "")),
            str(progress.get("at", "")),
        )

    @admin.display(description=_("arguments"))
    def arguments(self, job):
        return pretty_json({"args": job.args, "kwargs": job.kwargs})

    @admin.display(description=_("return value"))
    def result(self, job):
        if job.status != JobStatus.SUCCESSFUL:
            return "-"
        return pretty_json(job.return_value)

    @admin.display(description=_("errors"))
    def error_list(self, job):
        if not job.errors:
            return "-"
        return format_html_join(
            "",
            '<div class="bgtasks-error"><strong>{} {}</strong> {} <small>{} {}</small>'
            '<pre class="bgtasks-traceback">{}</pre></div>',
            (
                (
                    _("Attempt"),
                    error.get("attempt", "?"),
                    error.get("exception_class_path", ""),
                    error.get("at", ""),
                    error.get("worker_id") or "",
                    error.get("traceback", ""),
                )
                for error in job.errors
            ),
        )

    @admin.display(description=_("workers of each attempt"))
    def worker_list(self, job):
        return ", ".join(map(str, job.worker_ids or [])) or "-"
