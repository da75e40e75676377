"""Queues that are paused: a row per queue (one an operator paused, or
that the admin's Queues page lists), read by every claim.

No worker keeps the state: each claim leaves out the jobs of the queues
paused when it runs (``sql/claim.py``), so a pause takes effect at every
worker's next claim, survives restarts, and holds for workers started later.
Jobs already claimed when it commits (running, or prefetched by a worker)
still run. A resume wakes the queue's workers (NOTIFY, on PostgreSQL).
"""

from __future__ import annotations

from django.db import models, router
from django.utils.translation import gettext_lazy as _

from .. import notify
from ..db import DatabaseNow


class QueueQuerySet(models.QuerySet):
    def paused(self):
        """The queues paused now."""
        return self.filter(paused_at__isnull=False)

    def paused_names(self) -> set[str]:
        return set(self.paused().values_list("name", flat=True))

    def pause(self, *names: str, by: str = "") -> int:
        """Pause the queues ``names`` (nothing new starts in them); ``by``
        says who, for the record (cut to its column's length). Returns how
        many were not paused already."""
        for name in names:
            _check_name(name)
        queues = Queue.objects.using(self._db or router.db_for_write(Queue))
        queues.bulk_create([Queue(name=name) for name in names], ignore_conflicts=True)
        by = by[: Queue._meta.get_field("paused_by").max_length]
        return queues.filter(name__in=names, paused_at__isnull=True).update(
            paused_at=DatabaseNow(), paused_by=by
        )

    def resume(self, *names: str) -> int:
        """Resume the queues ``names`` and wake their workers; returns how
        many were paused."""
        using = self._db or router.db_for_write(Queue)
        for name in names:
            _check_name(name)
        changed = (
            Queue.objects.using(using)
            .filter(name__in=names, paused_at__isnull=False)
            .update(paused_at=None, paused_by="")
        )
        if changed:
            notify.wake(using, names)
        return changed


def _check_name(name) -> None:
    max_length = Queue._meta.get_field("name").max_length
    if not isinstance(name, str) or not 0 < len(name) <= max_length:
        raise ValueError(
            f"A queue name is text of 1 to {max_length} characters, not {name!r}."
        )


class Queue(models.Model):
    """A queue, paused while ``paused_at`` is set."""

    name = models.CharField(_("name"), max_length=64, primary_key=True)
    paused_at = models.DateTimeField(_("paused at"), null=True, blank=True)
    paused_by = models.CharField(_("paused by"), max_length=150, blank=True)

    objects = QueueQuerySet.as_manager()

    class Meta:
        verbose_name = _("queue")
        verbose_name_plural = _("queues")
        permissions = [("pause_queue", _("Can pause and resume a queue"))]
        default_permissions = ("view",)

    def __str__(self):
        return self.name

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None
