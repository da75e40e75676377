"""Which database the admin's pages work on, when several hold jobs.

The rows of a database (jobs, queues, schedules, workers, limits) concern
the jobs kept there (``databases.py``), so each page shows and changes one
database's rows. With one database holding jobs nothing shows. With
several, each page shows a switch: a link per database, ``?database=<alias>``.
The choice is kept in the session, so the pages after it (lists, a job's
page and its buttons, the dashboard and its refreshes) stay on it until
another is chosen. An alias that holds no jobs shows the default database
(``default_database()``), with a warning.

As Django's "Exposing multiple databases in Django's admin interface" does,
every read and write goes through ``.using()`` or ``save(using=...)``, and
the admin's own transaction is on the chosen database.
"""

from __future__ import annotations

from contextlib import nullcontext

from django.contrib import messages
from django.contrib.admin.options import csrf_protect_m
from django.db import transaction
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _

from ..databases import default_database, job_databases

# The query parameter that chooses, and the session key that keeps the choice.
PARAMETER = "database"
SESSION_KEY = "django_bgtasks_database"


def chosen_database(request) -> str:
    """The database alias ``request``'s page works on: ``?database=``'s (kept
    in the session), else the session's, else ``default_database()``. Asked
    once per request."""
    chosen = getattr(request, "_bgtasks_database", None)
    if chosen is None:
        chosen = request._bgtasks_database = _choose(request)
    return chosen


def _choose(request) -> str:
    databases = job_databases()
    default = default_database()
    session = getattr(request, "session", None)
    asked = request.GET.get(PARAMETER)
    if asked is not None and len(databases) > 1:
        if asked in databases:
            if session is not None:
                session[SESSION_KEY] = asked
            return asked
        if session is not None:
            session.pop(SESSION_KEY, None)
        messages.warning(
            request,
            _("No jobs are kept in database “%(asked)s”: showing “%(default)s”.")
            % {"asked": asked, "default": default},
        )
        return default
    kept = session.get(SESSION_KEY) if session is not None else None
    return kept if kept in databases else default


def database_switch(request, url: str | None = None) -> list[tuple[str, str, bool]]:
    """The switch's links, (alias, url, chosen), one per database that holds
    jobs; none with one. ``url``: the page a link goes to (this one's path
    by default)."""
    databases = job_databases()
    if len(databases) < 2:
        return []
    chosen = chosen_database(request)
    url = url or request.path
    return [
        (alias, f"{url}?{urlencode({PARAMETER: alias})}", alias == chosen)
        for alias in databases
    ]


class DatabaseChoiceAdmin:
    """A ModelAdmin mixin: the pages read and write the chosen database's
    rows, and show the switch. Put it before ``admin.ModelAdmin``."""

    def database(self, request) -> str:
        return chosen_database(request)

    def get_queryset(self, request):
        return super().get_queryset(request).using(self.database(request))

    def save_model(self, request, obj, form, change):
        obj.save(using=self.database(request))

    def delete_model(self, request, obj):
        obj.delete(using=self.database(request))

    def changelist_view(self, request, extra_context=None):
        if PARAMETER in request.GET:
            # Chosen now, kept in the session: the list's own query string
            # must not have it (the change list would take it for a lookup).
            self.database(request)
            query = request.GET.copy()
            del query[PARAMETER]
            url = request.path + (f"?{query.urlencode()}" if query else "")
            return HttpResponseRedirect(url)
        context = {"database_switch": database_switch(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    @csrf_protect_m
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Switching on an object's page lists the other database's rows.
        changelist = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )
        context = {
            "database_switch": database_switch(request, changelist),
            **(extra_context or {}),
        }
        with self._atomic(request):
            return super().changeform_view(request, object_id, form_url, context)

    @csrf_protect_m
    def delete_view(self, request, object_id, extra_context=None):
        with self._atomic(request):
            return super().delete_view(request, object_id, extra_context)

    def _atomic(self, request):
        """A write's transaction on the chosen database: ModelAdmin's own is
        on the routers' database for the model (and stays, empty)."""
        if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
            return nullcontext()
        return transaction.atomic(using=self.database(request))
