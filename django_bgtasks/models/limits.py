"""The state a limit keeps in the database: a row per limit in play.

Claims lock a limit's row while they count its running jobs and take some
(``sql/limited.py``): two claims of one limit take turns, so neither counts
before the other's jobs are RUNNING. A limit with a rate keeps its token
bucket here, refilled by the database's clock. Rows are made by the first
claim that needs them; what a limit allows is declared in code
(``django_bgtasks.limits``), not here.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class LimitState(models.Model):
    """A limit's lock and, for a rate, its bucket: ``tokens`` as of
    ``refilled_at`` (None: never used, full)."""

    name = models.CharField(_("name"), max_length=110, primary_key=True)
    tokens = models.FloatField(_("tokens"), null=True, blank=True)
    refilled_at = models.DateTimeField(_("refilled at"), null=True, blank=True)

    class Meta:
        verbose_name = _("limit")
        verbose_name_plural = _("limits")
        default_permissions = ("view",)

    def __str__(self):
        return self.name
