"""Admin for schedules: edit them, see when they run, enable, disable, run now."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import available_timezones

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, Subquery
from django.http import JsonResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_duration
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import registry
from ..cron import describe_cron
from ..exceptions import TaskNotRegistered
from ..maintenance.schedule_sync import schedule_database
from ..models import Job, Schedule
from ..models.schedules import default_timezone
from .databases import DatabaseChoiceAdmin, database_url

UPCOMING_COUNT = 5
# What a schedule declared in code takes from BGTASKS["SCHEDULES"]: read-only
# here, since the next sync would overwrite an edit.
DECLARED_FIELDS = [
    "name",
    "task_path",
    "cron",
    "interval",
    "timezone",
    "args",
    "kwargs",
    "queue_name",
    "priority",
    "start_at",
    "end_at",
    "misfire_policy",
]
TIMING_FIELDS = {"cron", "interval", "timezone", "start_at", "end_at", "enabled"}


def zone_of(schedule: Schedule):
    """The schedule's time zone, or UTC if its stored name no longer
    resolves (the list must still show)."""
    try:
        return schedule.zone
    except ValueError:
        return UTC


def format_moment(moment: datetime | None, tz) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


class ScheduleForm(forms.ModelForm):
    task_path = forms.ChoiceField(label=_("Task"))
    timezone = forms.ChoiceField(label=_("Time zone"))
    # The database the schedule is kept in (the admin's chosen one; None:
    # the routers').
    database: str | None = None

    class Meta:
        model = Schedule
        fields = [*DECLARED_FIELDS, "enabled"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "task_path" in self.fields:  # not read-only
            registry.autodiscover()
            paths = sorted(registry.registered_tasks())
            current = self.instance.task_path
            choices = [(task_path, task_path) for task_path in paths]
            if current and current not in paths:
                choices.insert(0, (current, _("%s (not registered)") % current))
            self.fields["task_path"].choices = [("", "---------"), *choices]
        if "timezone" in self.fields:
            self.fields["timezone"].choices = [
                (name, name) for name in sorted(available_timezones())
            ]
            if not self.initial.get("timezone"):
                # A new schedule's zone is the project's, as the model's
                # default says, not the first of the list.
                self.initial["timezone"] = self.instance.timezone or default_timezone()

    def clean(self):
        cleaned = super().clean()
        task_path = cleaned.get("task_path")
        if self.database is None or not task_path or self.has_error("task_path"):
            return cleaned
        try:
            kept_in = schedule_database(Schedule(task_path=task_path))
        except TaskNotRegistered:
            return cleaned  # the model's clean says so
        if kept_in != self.database:
            # Its jobs would be written there, away from it (Schedule.enqueue
            # refuses that).
            self.add_error(
                "task_path",
                _(
                    "This task's jobs are kept in database “%(kept_in)s”: "
                    "add its schedule there."
                )
                % {"kept_in": kept_in},
            )
        return cleaned

    def validate_unique(self):
        """Django's check that the name is free reads the routers' database:
        here it is checked in the schedule's own."""
        exclude = self._get_validation_exclusions()
        if self.database is None or "name" in exclude:
            super().validate_unique()
            return
        try:
            self.instance.validate_unique(exclude={*exclude, "name"})
        except ValidationError as exc:
            self._update_errors(exc)
        taken = Schedule.objects.using(self.database).filter(name=self.instance.name)
        if taken.exclude(pk=self.instance.pk).exists():
            self.add_error(
                "name", self.instance.unique_error_message(Schedule, ["name"])
            )


@admin.register(Schedule)
class ScheduleAdmin(DatabaseChoiceAdmin, admin.ModelAdmin):
    form = ScheduleForm
    list_display = [
        "name",
        "enabled",
        "timing",
        "description",
        "timezone",
        "next_run_here",
        "next_run_yours",
        "last_run_at",
        "last_status",
    ]
    list_filter = ["enabled", "declared_in_code", "queue_name"]
    search_fields = ["name", "task_path"]
    ordering = ["name"]
    actions = ["enable_schedules", "disable_schedules", "run_schedules_now"]
    readonly_fields = [
        "upcoming",
        "next_run_at",
        "last_run_at",
        "total_run_count",
        "declared_in_code",
        "last_error",
        "recent_jobs",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "task_path", "enabled", "declared_in_code"]}),
        (
            _("When"),
            {
                "fields": [
                    "cron",
                    "interval",
                    "timezone",
                    "upcoming",
                    "start_at",
                    "end_at",
                    "misfire_policy",
                ]
            },
        ),
        (_("Job"), {"fields": ["args", "kwargs", "queue_name", "priority"]}),
        (
            _("Runs"),
            {
                "fields": [
                    "next_run_at",
                    "last_run_at",
                    "total_run_count",
                    "last_error",
                    "recent_jobs",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
    ]

    class Media:
        js = ["django_bgtasks/schedule_preview.js"]

    def get_queryset(self, request):
        latest_job = Job.objects.filter(schedule=OuterRef("pk")).order_by("-id")
        return (
            super()
            .get_queryset(request)
            .annotate(last_job_status=Subquery(latest_job.values("status")[:1]))
        )

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)  # a class of its own
        form.database = self.database(request)
        return form

    def get_fieldsets(self, request, obj=None):
        if obj is not None:
            return self.fieldsets
        # A new schedule is made here, so not in code: say nothing of it.
        name, options = self.fieldsets[0]
        fields = [f for f in options["fields"] if f != "declared_in_code"]
        return [(name, {**options, "fields": fields}), *self.fieldsets[1:]]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.declared_in_code:
            fields += DECLARED_FIELDS
        return fields

    def has_run_permission(self, request):
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.run_{opts.model_name}")

    # Columns and read-only fields --------------------------------------------

    @admin.display(description=_("when"))
    def timing(self, schedule):
        return schedule.cron or _("every %s") % schedule.interval

    @admin.display(description=_("description"))
    def description(self, schedule):
        return describe_cron(schedule.cron) if schedule.cron else ""

    @admin.display(description=_("next run (its zone)"), ordering="next_run_at")
    def next_run_here(self, schedule):
        return format_moment(schedule.next_run_at, zone_of(schedule))

    @admin.display(description=_("next run (your zone)"), ordering="next_run_at")
    def next_run_yours(self, schedule):
        return format_moment(schedule.next_run_at, timezone.get_current_timezone())

    @admin.display(description=_("last status"))
    def last_status(self, schedule):
        return schedule.last_job_status or "-"

    @admin.display(description=_("next planned times"))
    def upcoming(self, schedule):
        """The next planned times; the form's script keeps them in step with
        the expression being typed."""
        items = []
        if schedule.pk and not schedule.timing_errors():
            yours = timezone.get_current_timezone()
            try:
                items = [
                    (format_moment(t, zone_of(schedule)), format_moment(t, yours))
                    for t in schedule.upcoming(UPCOMING_COUNT)
                ]
            except (ValueError, OverflowError):
                items = []
        rows = (
            format_html_join("", "<li>{} <small>({})</small></li>", items)
            if items
            else format_html(
                "<li>{}</li>",
                _("Give it a cron expression or an interval to see them."),
            )
        )
        return format_html(
            '<ul id="bgtasks-upcoming" data-preview-url="{}">{}</ul>',
            reverse("admin:django_bgtasks_schedule_preview"),
            rows,
        )

    @admin.display(description=_("recent jobs"))
    def recent_jobs(self, schedule):
        if not schedule.pk:
            return "-"
        jobs = schedule.jobs.order_by("-id")[:10]
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    database_url(
                        reverse("admin:django_bgtasks_job_change", args=[job.pk]),
                        job._state.db,
                    ),
                    job.pk,
                    job.status,
                    format_moment(job.scheduled_for, zone_of(schedule)),
                    format_moment(job.finished_at, zone_of(schedule)),
                )
                for job in jobs
            ),
        )
        if not rows:
            return _("None yet.")
        return format_html(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>"
            "</thead><tbody>{}</tbody></table>",
            _("job"),
            _("status"),
            _("scheduled for"),
            _("finished"),
            rows,
        )

    # Saving ------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        changed = set(form.changed_data)
        timing_changed = not change or TIMING_FIELDS & changed
        if timing_changed:
            obj.reschedule(
                keep_phase=change and not {"interval", "start_at", "enabled"} & changed
            )
        using = self.database(request)
        if not change:
            obj.save(using=using)
            return
        # Only what the form changed: the scheduler may be updating the run
        # state of this row meanwhile.
        fields = [name for name in form.changed_data if name in form.fields]
        if timing_changed:
            fields.append("next_run_at")
        obj.save(using=using, update_fields=[*fields, "updated_at"])

    # Actions -----------------------------------------------------------------

    @admin.action(description=_("Enable selected schedules"), permissions=["change"])
    def enable_schedules(self, request, queryset):
        schedules = list(queryset.filter(enabled=False))
        for schedule in schedules:
            schedule.enable()
        count = len(schedules)
        self.message_user(
            request,
            ngettext("%d schedule enabled.", "%d schedules enabled.", count) % count,
        )

    @admin.action(description=_("Disable selected schedules"), permissions=["change"])
    def disable_schedules(self, request, queryset):
        schedules = list(queryset.filter(enabled=True))
        for schedule in schedules:
            schedule.disable()
        count = len(schedules)
        self.message_user(
            request,
            ngettext("%d schedule disabled.", "%d schedules disabled.", count) % count,
        )

    @admin.action(
        description=_("Run selected schedules now (one job each)"), permissions=["run"]
    )
    def run_schedules_now(self, request, queryset):
        count = 0
        for schedule in queryset:
            try:
                schedule.run_now()
            except Exception as exc:
                self.message_user(
                    request,
                    _("%(name)s could not run: %(error)s")
                    % {"name": schedule.name, "error": exc},
                    messages.ERROR,
                )
            else:
                count += 1
        if count:
            self.message_user(
                request,
                ngettext("%d job enqueued.", "%d jobs enqueued.", count) % count,
            )

    # The preview of planned times --------------------------------------------

    def get_urls(self):
        preview = path(
            "preview/",
            self.admin_site.admin_view(self.preview_view),
            name="django_bgtasks_schedule_preview",
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request):
        """The next planned times of the timing given in the query string."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = request.GET
        try:
            interval = parse_duration(data.get("interval") or "") or None
        except OverflowError:
            interval = None
        schedule = Schedule(
            cron=data.get("cron", ""),
            interval=interval,
            timezone=data.get("timezone") or timezone.get_current_timezone_name(),
        )
        errors = {}
        for field in ("start_at", "end_at"):
            parts = [data.get(f"{field}_0", ""), data.get(f"{field}_1", "")]
            try:
                setattr(
                    schedule,
                    field,
                    forms.SplitDateTimeField(required=False).clean(parts),
                )
            except ValidationError as exc:
                errors[field] = exc.messages
        errors |= schedule.timing_errors()
        if data.get("interval") and schedule.interval is None:
            errors["interval"] = [str(_("Enter a valid duration."))]
        if errors:
            return JsonResponse(
                {"errors": [m for messages_ in errors.values() for m in messages_]}
            )
        yours = timezone.get_current_timezone()
        try:
            times = [
                [format_moment(t, zone_of(schedule)), format_moment(t, yours)]
                for t in schedule.upcoming(UPCOMING_COUNT)
            ]
        except (ValueError, OverflowError) as exc:
            return JsonResponse({"errors": [str(exc)]})
        return JsonResponse(
            {
                "description": describe_cron(schedule.cron) if schedule.cron else "",
                "times": times,
            }
        )
