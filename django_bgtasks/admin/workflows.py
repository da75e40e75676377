"""A job's workflow in the admin: the Workflow section of a step's page,
and the filter that lists a workflow's jobs.

The section lists every member (up to ``WORKFLOW_ROWS``) with its task,
status and the jobs it waits for, each linked to its page, the page's job
marked; a WAITING step also says which jobs it still waits for. It costs
two queries whatever the workflow's size. The list of all of a workflow's
jobs is the job list filtered by ``?workflow_id=<uuid>``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import Job, JobDependency, JobStatus
from .databases import database_url
from .display import status_badge, task_label

# The members listed on a job's page, and the jobs listed that each waits
# for: a chord's callback may wait for thousands. The job list has them all.
WORKFLOW_ROWS = 200
WAITS_FOR_SHOWN = 20


@dataclass(frozen=True, slots=True)
class WorkflowRows:
    """What a job's page shows of its workflow."""

    members: list[tuple[int, str, str]]  # (id, task path, status), by id
    waits_for: dict[int, list[tuple[int, str]]]  # id -> [(id, ended as)]
    more: bool  # the workflow has more than WORKFLOW_ROWS members


def workflow_rows(job: Job) -> WorkflowRows:
    """The first members of ``job``'s workflow and the jobs each waits for,
    in two queries; kept on ``job`` for the other fields of its page."""
    rows = getattr(job, "_bgtasks_workflow_rows", None)
    if rows is not None:
        return rows
    using = job._state.db
    members = list(
        Job.objects.using(using)
        .filter(workflow_id=job.workflow_id)
        .order_by("pk")
        .values_list("pk", "task_path", "status")[: WORKFLOW_ROWS + 1]
    )
    more = len(members) > WORKFLOW_ROWS
    members = members[:WORKFLOW_ROWS]
    edges = (
        JobDependency.objects.using(using)
        .filter(job_id__in=[member[0] for member in members] + [job.pk])
        .order_by("job_id", "position")
        .values_list("job_id", "waits_for_id", "ended_as")
    )
    waits_for = defaultdict(list)
    for job_id, waited, ended_as in edges:
        waits_for[job_id].append((waited, ended_as))
    rows = WorkflowRows(members, dict(waits_for), more)
    job._bgtasks_workflow_rows = rows
    return rows


class WorkflowFilter(admin.SimpleListFilter):
    """The jobs of one workflow (``?workflow_id=<uuid>``, linked from a
    job's page). Listed only while in use: its choices are not read from
    the table."""

    title = _("workflow")
    parameter_name = "workflow_id"

    def lookups(self, request, model_admin):
        return [(self.value(), self.value())] if self.value() else []

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            workflow_id = uuid.UUID(self.value())
        except ValueError as exc:  # the changelist shows its error page
            raise IncorrectLookupParameters(exc) from None
        return queryset.filter(workflow_id=workflow_id)


class WorkflowSection:
    """A job admin's Workflow section, on the page of a workflow's step."""

    workflow_fields = ["workflow_link", "waiting_note", "workflow_members"]

    def get_fieldsets(self, request, obj=None):
        """A workflow's step has a Workflow section, after the first."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or obj.workflow_id is None:
            return fieldsets
        fields = [
            name
            for name in self.workflow_fields
            if name != "waiting_note" or obj.status == JobStatus.WAITING
        ]
        first, *rest = fieldsets
        return [first, (_("Workflow"), {"fields": fields}), *rest]

    def _url(self, view: str, using: str, *args, **params) -> str:
        """The URL of a page of jobs in database ``using``."""
        opts = self.opts
        name = f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_{view}"
        return database_url(reverse(name, args=args), using, **params)

    def _job_links(self, ids: list[int], using: str):
        """Links to the first ``WAITS_FOR_SHOWN`` of the jobs ``ids`` (in
        database ``using``)."""
        if not ids:
            return "-"
        links = format_html_join(
            ", ",
            '<a href="{}">#{}</a>',
            ((self._url("change", using, pk), pk) for pk in ids[:WAITS_FOR_SHOWN]),
        )
        if len(ids) <= WAITS_FOR_SHOWN:
            return links
        others = len(ids) - WAITS_FOR_SHOWN
        return format_html(
            "{} {}",
            links,
            ngettext("and %(count)d more", "and %(count)d more", others)
            % {"count": others},
        )

    def _workflow_list_link(self, job):
        return format_html(
            '<a href="{}">{}</a>',
            self._url("changelist", job._state.db, workflow_id=str(job.workflow_id)),
            _("all jobs of this workflow"),
        )

    @admin.display(description=_("workflow"))
    def workflow_link(self, job):
        return format_html(
            "<code>{}</code> {}", job.workflow_id, self._workflow_list_link(job)
        )

    @admin.display(description=_("waiting for"))
    def waiting_note(self, job):
        """How many jobs a WAITING step still waits for, and which."""
        count = job.waiting_for
        pending = [
            pk
            for pk, ended_as in workflow_rows(job).waits_for.get(job.pk, [])
            if not ended_as
        ]
        return format_html(
            "{}: {}",
            ngettext("%(count)d job", "%(count)d jobs", count) % {"count": count},
            self._job_links(pending, job._state.db),
        )

    @admin.display(description=_("jobs"))
    def workflow_members(self, job):
        """Every member (up to ``WORKFLOW_ROWS``): its id, task, status and
        the jobs it waits for, each linked; this job marked."""
        rows = workflow_rows(job)

        def row(pk, task_path, status):
            current = pk == job.pk
            return (
                "bgtasks-current" if current else "",
                self._url("change", job._state.db, pk),
                format_html(' aria-current="{}"', "page") if current else "",
                pk,
                format_html(" <em>({})</em>", _("this job")) if current else "",
                task_label(task_path),
                status_badge(status),
                self._job_links(
                    [edge[0] for edge in rows.waits_for.get(pk, [])], job._state.db
                ),
            )

        body = format_html_join(
            "",
            '<tr class="{}"><td><a href="{}"{}>#{}</a>{}</td><td>{}</td>'
            "<td>{}</td><td>{}</td></tr>",
            (row(*member) for member in rows.members),
        )
        more = ""
        if rows.more:
            more = format_html(
                '<p class="bgtasks-note">{} {}</p>',
                _("Only its first %(count)d jobs are listed here:")
                % {"count": WORKFLOW_ROWS},
                self._workflow_list_link(job),
            )
        return format_html(
            '<table class="bgtasks-workflow"><thead><tr><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>{}",
            _("job"),
            _("task"),
            _("status"),
            _("waits for"),
            body,
            more,
        )
