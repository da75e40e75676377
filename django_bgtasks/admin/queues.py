"""Admin for queues: see which are paused, pause and resume them.

The list is Django's change list of ``Queue`` rows. Before it shows, every
queue an operator may want to pause gets a row (the configured queues and
those with jobs that have not ended), so that actions, search, sorting and
permissions are the admin's own. A row with no pause costs the claims
nothing. The page writes only when a queue appears that has no row yet.

Rows are never edited by hand: the actions call ``Queue.objects.pause`` and
``.resume`` and need ``pause_queue``. The small form above the list pauses a
queue that is not listed yet (one of no configured queue, with no jobs).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import stats
from ..models import JobStatus, Queue
from .base import ReadOnlyAdmin
from .databases import DatabaseChangeList, DatabaseChoiceAdmin, database_url
from .display import format_moment

NAME_LENGTH = Queue._meta.get_field("name").max_length
BY_LENGTH = Queue._meta.get_field("paused_by").max_length


def paused_by(request) -> str:
    """Who pauses, for the record: the user's name, said to be the admin's."""
    suffix = " (admin)"
    return request.user.get_username()[: BY_LENGTH - len(suffix)] + suffix


class PauseForm(forms.Form):
    name = forms.CharField(label=_("Queue"), max_length=NAME_LENGTH)


class PausedFilter(admin.SimpleListFilter):
    title = _("paused")
    parameter_name = "paused"

    def lookups(self, request, model_admin):
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.paused()
        if self.value() == "no":
            return queryset.filter(paused_at__isnull=True)
        return queryset


class QueueChangeList(DatabaseChangeList):
    def get_results(self, request):
        """The page's queues, each with its READY jobs (one query)."""
        super().get_results(request)
        queues = list(self.result_list)  # fills the page's cache
        counts = stats.ready_counts(
            (queue.name for queue in queues), using=self.queryset.db
        )
        for queue in queues:
            queue.ready = counts.get(queue.name, stats.Tally(0))


@admin.register(Queue)
class QueueAdmin(DatabaseChoiceAdmin, ReadOnlyAdmin):
    list_display = ["name", "paused", "paused_since", "paused_by", "ready_jobs"]
    list_display_links = None  # a row has nothing more to show
    list_filter = [PausedFilter]
    search_fields = ["name"]
    ordering = ["name"]
    actions = ["pause_queues", "resume_queues"]

    class Media:
        css = {"all": ["django_bgtasks/admin.css"]}

    def get_changelist(self, request, **kwargs):
        return QueueChangeList

    def changelist_view(self, request, extra_context=None):
        if self.has_view_or_change_permission(request):
            self.add_missing_rows(self.database(request))
        context = {
            "title": _("Queues"),
            "pause_form": PauseForm() if self.has_pause_permission(request) else None,
            "pause_url": database_url(
                reverse("admin:django_bgtasks_queue_pause"), self.database(request)
            ),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def add_missing_rows(self, using: str) -> None:
        """A row in database ``using`` for each queue of its jobs an
        operator may want to pause."""
        names = {
            name
            for name in stats.active_queue_names(using)
            if isinstance(name, str) and 0 < len(name) <= NAME_LENGTH
        }
        names -= set(Queue.objects.using(using).values_list("name", flat=True))
        if names:
            Queue.objects.using(using).bulk_create(
                [Queue(name=name) for name in sorted(names)], ignore_conflicts=True
            )

    def get_urls(self):
        pause = self.admin_site.admin_view(self.pause_view)
        return [
            path("pause/", pause, name="django_bgtasks_queue_pause"),
            *super().get_urls(),
        ]

    def pause_view(self, request):
        """Pause the queue named in the form above the list."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_pause_permission(request):
            raise PermissionDenied
        form = PauseForm(request.POST)
        if form.is_valid():
            name = form.cleaned_data["name"]
            if self._pause(self.database(request), name, by=paused_by(request)):
                self.message_user(request, _("Queue %(name)s paused.") % {"name": name})
            else:
                self.message_user(
                    request,
                    _("Queue %(name)s was paused already.") % {"name": name},
                    messages.WARNING,
                )
        else:
            for error in form.errors.get("name", []):
                self.message_user(request, error, messages.ERROR)
        changelist = reverse("admin:django_bgtasks_queue_changelist")
        return HttpResponseRedirect(database_url(changelist, self.database(request)))

    def _pause(self, using: str, *names: str, by: str) -> int:
        """Pause ``names`` in database ``using``, in one transaction there
        (the verb adds the rows it lacks, then pauses)."""
        with transaction.atomic(using=using):
            return Queue.objects.using(using).pause(*names, by=by)

    # Permissions --------------------------------------------------------------

    def has_pause_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.pause_queue")

    def has_delete_permission(self, request, obj=None):
        # Deleting a paused queue's row would resume it without waking its
        # workers; there is no delete permission to give anyway.
        return False

    # Actions ------------------------------------------------------------------

    def _report(self, request, changed: int, selected: int, done: str, skipped: str):
        self.message_user(request, done % {"count": changed})
        if selected > changed:
            self.message_user(
                request, skipped % {"count": selected - changed}, messages.WARNING
            )

    @admin.action(description=_("Pause selected queues"), permissions=["pause"])
    def pause_queues(self, request, queryset):
        names = list(queryset.values_list("name", flat=True))
        changed = self._pause(queryset.db, *names, by=paused_by(request))
        self._report(
            request,
            changed,
            len(names),
            ngettext(
                "%(count)d queue paused: its running jobs finish, no other starts.",
                "%(count)d queues paused: their running jobs finish, no other starts.",
                changed,
            ),
            _("%(count)d skipped: paused already."),
        )

    @admin.action(description=_("Resume selected queues"), permissions=["pause"])
    def resume_queues(self, request, queryset):
        names = list(queryset.values_list("name", flat=True))
        changed = Queue.objects.using(queryset.db).resume(*names)
        self._report(
            request,
            changed,
            len(names),
            ngettext("%(count)d queue resumed.", "%(count)d queues resumed.", changed),
            _("%(count)d skipped: not paused."),
        )

    # Columns ------------------------------------------------------------------

    @admin.display(description=_("paused"), boolean=True, ordering="paused_at")
    def paused(self, queue):
        return queue.is_paused

    @admin.display(description=_("paused at"), ordering="paused_at")
    def paused_since(self, queue):
        return format_moment(queue.paused_at)

    @admin.display(description=_("ready jobs"))
    def ready_jobs(self, queue):
        ready = getattr(queue, "ready", None)
        if ready is None:
            return "-"
        url = database_url(
            reverse("admin:django_bgtasks_job_changelist"),
            queue._state.db,
            status=JobStatus.READY,
            queue_name=queue.name,
        )
        return format_html('<a href="{}">{}</a>', url, ready)
