"""Which database the admin's pages work on, when several hold jobs.

The rows of a database (jobs, queues, schedules, workers, limits) concern
the jobs kept there (``databases.py``), so each page shows and changes one
database's rows. With one database holding jobs nothing shows. With
several, each page shows a switch: a link per database, ``?database=<alias>``.

The choice is part of each page's address, never kept elsewhere: a page
works on the database its own URL names (``?database=``, or on an object's
page, the list's query string Django carries as ``_changelist_filters``),
else ``default_database()``. Every link, form and refresh of a page names
that database again, so a form posts to the database its page showed and
two tabs on two databases stay apart. An alias that holds no jobs shows
the default database, with a warning.

As Django's "Exposing multiple databases in Django's admin interface" does,
every read and write goes through ``.using()`` or ``save(using=...)``, and
the admin's own transaction is on the page's database.
"""

from __future__ import annotations

from contextlib import nullcontext
from urllib.parse import parse_qs

from django.contrib import messages
from django.contrib.admin.options import csrf_protect_m
from django.contrib.admin.views.main import ERROR_FLAG, ChangeList
from django.db import transaction
from django.http import QueryDict
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _

from ..databases import default_database, job_databases

# The query parameter that names a page's database.
PARAMETER = "database"
# Where Django keeps a list's query string on the pages it links to.
CHANGELIST_FILTERS = "_changelist_filters"


def chosen_database(request) -> str:
    """The database alias ``request``'s page works on: the one its URL names,
    else ``default_database()``. Asked once per request."""
    chosen = getattr(request, "_bgtasks_database", None)
    if chosen is None:
        chosen = request._bgtasks_database = _choose(request)
    return chosen


def _named(request) -> str | None:
    """The alias the URL names: ``?database=``, else the one in the list's
    query string an object's page carries."""
    named = request.GET.get(PARAMETER)
    if named is None:
        filters = parse_qs(request.GET.get(CHANGELIST_FILTERS, ""))
        named = filters.get(PARAMETER, [None])[-1]
    return named


def _choose(request) -> str:
    databases = job_databases()
    default = default_database()
    named = _named(request)
    if named is None or len(databases) < 2:
        return default
    if named in databases:
        return named
    messages.warning(
        request,
        _("No jobs are kept in database “%(asked)s”: showing “%(default)s”.")
        % {"asked": named, "default": default},
    )
    return default


def database_url(url: str, database: str, **params) -> str:
    """``url`` with the query ``params`` and, when several databases hold
    jobs, ``database``: the address of a page on that database (a page links
    only to pages on its own)."""
    if len(job_databases()) > 1:
        params[PARAMETER] = database
    return f"{url}?{urlencode(params)}" if params else url


def database_switch(request, url: str | None = None) -> list[tuple[str, str, bool]]:
    """The switch's links, (alias, url, chosen), one per database that holds
    jobs; none with one. ``url``: the page a link goes to (this one's path
    by default)."""
    databases = job_databases()
    if len(databases) < 2:
        return []
    chosen = chosen_database(request)
    url = url or request.path
    return [(alias, database_url(url, alias), alias == chosen) for alias in databases]


class DatabaseChangeList(ChangeList):
    """A list whose query string names its database: the parameter stays in
    its sort, filter, search and page links (and so in the URL its actions
    form posts to), but is no lookup."""

    def get_filters_params(self, params=None):
        lookup_params = super().get_filters_params(params)
        lookup_params.pop(PARAMETER, None)
        return lookup_params


class DatabaseChoiceAdmin:
    """A ModelAdmin mixin: the pages read and write the rows of the database
    their URL names, and show the switch. Put it before ``admin.ModelAdmin``."""

    def database(self, request) -> str:
        return chosen_database(request)

    def get_queryset(self, request):
        return super().get_queryset(request).using(self.database(request))

    def get_changelist(self, request, **kwargs):
        return DatabaseChangeList

    def get_preserved_filters(self, request):
        """The list's query string Django carries to an object's page and
        back (its form's redirects, its delete and history links), naming
        the page's database even when the page was opened by a link that
        named it alone (``?database=``)."""
        preserved = super().get_preserved_filters(request)
        if len(job_databases()) < 2:
            return preserved
        filters = QueryDict(
            parse_qs(preserved).get(CHANGELIST_FILTERS, [""])[-1], mutable=True
        )
        filters[PARAMETER] = self.database(request)
        return urlencode({CHANGELIST_FILTERS: filters.urlencode()})

    def save_model(self, request, obj, form, change):
        obj.save(using=self.database(request))

    def delete_model(self, request, obj):
        obj.delete(using=self.database(request))

    def changelist_view(self, request, extra_context=None):
        context = {"database_switch": database_switch(request), **(extra_context or {})}
        response = super().changelist_view(request, context)
        # Django sends a list of bad lookups to "?e=1": on the same database.
        if response.get("Location") == f"{request.path}?{ERROR_FLAG}=1":
            response["Location"] = database_url(
                request.path, self.database(request), **{ERROR_FLAG: 1}
            )
        return response

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
        """A write's transaction on the page's database: ModelAdmin's own is
        on the routers' database for the model (and stays, empty)."""
        if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
            return nullcontext()
        return transaction.atomic(using=self.database(request))
