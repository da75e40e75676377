"""A workflow's edges: which job waits for which, and what it is handed.

A workflow (``django_bgtasks.workflows``) is written as ordinary job rows
with a ``workflow_id``: the first steps READY, the others WAITING with
``waiting_for`` counting the jobs they wait for, and one ``JobDependency``
row per edge. No claim takes a WAITING job. The transaction that records a
job's end (the worker's batch, ``Job.record``, an operator's cancel) calls
``jobs_ended`` for the jobs that have dependents (``has_dependents``): it
copies the job's return value onto its edges, takes one from the counter
of each job waiting for it (locking that row, so two members of a chord
ending at once count down one after the other, and exactly one of them
brings it to zero), and makes the job READY when the counter reaches zero,
with the results it takes as its first argument. A job whose edge needs
success (every edge but a chord's with ``on_failure="run"``) ends CANCELLED
instead when the job it waits for fails or is cancelled, and so do the
jobs waiting for it, in the same transaction.

Edges are not foreign keys in the database: a pruned job's edges stay
while the job waiting on them does (they hold its results), and deleting
jobs costs no look-up of their edges.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, models
from django.utils.translation import gettext_lazy as _

from .. import notify
from ..db import chunks
from ..exceptions import DependencyFailed
from .status import JobStatus
from .transitions import class_path, error_entry


class Passes(models.TextChoices):
    """What a job waiting on edges is handed when they are all done."""

    NOTHING = "nothing", _("nothing")
    # The one job it waits for returned it: its first argument.
    VALUE = "value", _("the return value")
    # A list of the return values of the jobs it waits for, in the edges'
    # order (None for one that did not succeed): its first argument.
    LIST = "list", _("the list of return values")


class JobDependency(models.Model):
    """``job`` waits for ``waits_for`` to end."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(
        "Job",
        verbose_name=_("job"),
        related_name="dependencies",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,  # bgtasks_dependency_order leads with it
    )
    waits_for = models.ForeignKey(
        "Job",
        verbose_name=_("waits for"),
        related_name="dependents",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
    )
    # The place of waits_for's result in the list ``job`` is handed.
    position = models.PositiveIntegerField(_("position"))
    passes = models.CharField(
        _("passes"), max_length=10, choices=Passes, default=Passes.NOTHING
    )
    # False: ``job`` runs whatever waits_for's end (a chord's callback with
    # on_failure="run"); True: only if it succeeded, else ``job`` is
    # cancelled.
    needs_success = models.BooleanField(_("needs success"), default=True)
    # How waits_for ended (its status), once it has; and what it returned.
    ended_as = models.CharField(
        _("ended as"), max_length=10, choices=JobStatus, blank=True, default=""
    )
    result = models.JSONField(_("result"), null=True, blank=True)

    class Meta:
        verbose_name = _("job dependency")
        verbose_name_plural = _("job dependencies")
        constraints = [
            models.UniqueConstraint(
                fields=["job", "position"], name="bgtasks_dependency_order"
            ),
        ]

    def __str__(self):
        return f"Job {self.job_id} waits for job {self.waits_for_id}"


def _jobs(using: str):
    """The Job manager on ``using``, by the edge's foreign key (jobs.py
    imports this module)."""
    return JobDependency._meta.get_field("job").related_model.objects.using(using)


@dataclass(frozen=True, slots=True)
class Ended:
    """A job with dependents that has just ended: its status, and what it
    returned (for a success)."""

    job_id: int
    status: str
    result: Any = None
    # Cancelled because a job it waited for failed (DependencyFailed).
    cascaded: bool = False

    @property
    def passed(self) -> Any:
        """What it hands the jobs waiting for it: its result if it
        succeeded, else None."""
        return self.result if self.status == JobStatus.SUCCESSFUL else None


def jobs_ended(using: str, ended: Iterable[Ended], now: datetime) -> None:
    """Count down, release or cancel the jobs waiting for the ``ended``
    jobs, and so on down the workflow for the jobs this cancels. Call it in
    the transaction that records their ends; ``now`` is the database's
    time."""
    jobs = _jobs(using)
    woken: set[str] = set()
    frontier = {end.job_id: end for end in ended}
    # By job: how many of the jobs it waits for (on edges that need no
    # success) this transaction cancelled because of an earlier failure.
    cascaded_into: Counter[int] = Counter()
    while frontier:
        by_job: dict[int, list[tuple[int, bool, str]]] = defaultdict(list)
        for job_id, waits_for_id, needs_success, ended_as in _record_ends(
            using, frontier
        ):
            by_job[job_id].append((waits_for_id, needs_success, ended_as))
        cancelled = {}
        # Locked in id order: two transactions counting down the same jobs
        # take their locks in one order and cannot deadlock on them. Locked
        # whatever their status, so an operator's retry making one WAITING
        # again waits for this transaction, and then counts its edges done.
        dependents = (
            jobs.select_for_update()
            .filter(pk__in=sorted(by_job))
            .order_by("pk")
            .only(
                "id", "status", "queue_name", "waiting_for", "has_dependents",
                "run_after",
            )
        )  # fmt: skip
        for job in dependents:
            if job.status != JobStatus.WAITING:
                continue  # cancelled meanwhile (or retried: not waiting)
            mine = by_job[job.pk]
            failed = next(
                (edge for edge in mine if edge[1] and edge[2] != JobStatus.SUCCESSFUL),
                None,
            )
            cascaded_into[job.pk] += sum(
                not needs and frontier[waited].cascaded for waited, needs, _ in mine
            )
            remaining = job.waiting_for - len(mine)
            if failed is None and remaining <= 0 and cascaded_into[job.pk]:
                # A callback that runs whatever its members did, all of
                # whose members were cancelled by a failure before them:
                # nothing of its chord ran, and the failure stops it too.
                edges = JobDependency.objects.using(using).filter(job_id=job.pk)
                if cascaded_into[job.pk] == edges.count():
                    failed = next(iter(mine))
            if failed is not None:
                error = DependencyFailed(
                    f"Job {failed[0]}, which this job waited for, ended {failed[2]}."
                )
                jobs.filter(pk=job.pk).update(
                    status=JobStatus.CANCELLED,
                    finished_at=now,
                    errors=[error_entry(error, attempt=0, worker_id=None, at=now)],
                )
                if job.has_dependents:
                    cancelled[job.pk] = Ended(
                        job.pk, JobStatus.CANCELLED, cascaded=True
                    )
                continue
            if remaining > 0:
                jobs.filter(pk=job.pk).update(waiting_for=remaining)
                continue
            # Its last edge is done: READY, with what it is handed.
            jobs.filter(pk=job.pk).update(
                status=JobStatus.READY,
                waiting_for=0,
                args=handed(using, job.pk),
                run_after=max(job.run_after, now),
            )
            woken.add(job.queue_name)
        frontier = cancelled
    if woken:
        notify.wake(using, woken)


def _record_ends(using: str, ended: dict[int, Ended]) -> list[tuple]:
    """Write on the edges of the ``ended`` jobs how each ended and what it
    returned; the edges, as (job_id, waits_for_id, needs_success,
    ended_as)."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        # One statement for the lot, however many edges and results.
        table = connection.ops.quote_name(JobDependency._meta.db_table)
        records = json.dumps(
            [
                {
                    "id": end.job_id,
                    "status": end.status,
                    "result": end.result
                    if end.status == JobStatus.SUCCESSFUL
                    else None,
                }
                for end in ended.values()
            ]
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} AS edge
                SET ended_as = ended.status, result = ended.result
                FROM jsonb_to_recordset(%s::jsonb)
                    AS ended(id bigint, status text, result jsonb)
                WHERE edge.waits_for_id = ended.id AND edge.ended_as = ''
                RETURNING edge.job_id, edge.waits_for_id, edge.needs_success,
                    edge.ended_as
                """,
                [records],
            )
            return cursor.fetchall()
    edges = JobDependency.objects.using(using).filter(
        waits_for_id__in=list(ended), ended_as=""
    )
    found = list(edges.values_list("job_id", "waits_for_id", "needs_success"))
    for waits_for_id in {edge[1] for edge in found}:
        end = ended[waits_for_id]
        edges.filter(waits_for_id=waits_for_id).update(
            ended_as=end.status,
            result=end.passed,
        )
    return [(*edge, ended[edge[1]].status) for edge in found]


def handed(using: str, job_id: int) -> list:
    """The arguments of job ``job_id`` once all its edges are done: what
    they hand it first (see ``Passes``), then its own."""
    jobs = _jobs(using)
    args = jobs.filter(pk=job_id).values_list("args", flat=True).get()
    # A locking read: under REPEATABLE READ (MySQL's default, if a project
    # sets it) a plain one would miss the edges others committed since
    # this transaction's first read. All are done, so none is locked now.
    handed = list(
        JobDependency.objects.using(using)
        .filter(job_id=job_id)
        .order_by("position")
        .select_for_update()
        .values_list("passes", "result")
    )
    passes = handed[0][0] if handed else Passes.NOTHING
    if passes == Passes.VALUE:
        return [handed[0][1], *args]
    if passes == Passes.LIST:
        return [[result for _, result in handed], *args]
    return args


def steps_retried(using: str, ids: list[int]) -> dict[int, int | None]:
    """Of the jobs ``ids`` an operator retries, those that are workflow
    steps never released (cancelled while they waited): by id, how many of
    their edges are still to end (0: they can run now), or None if one
    they need ended FAILED or CANCELLED (they cannot run until it is
    retried). Other jobs are not in it."""
    jobs = _jobs(using)
    states: dict[int, int | None] = {}
    found = []
    for chunk in chunks(ids):
        waiting = jobs.filter(pk__in=chunk, waiting_for__gt=0)
        states.update(dict.fromkeys(waiting.values_list("pk", flat=True), 0))
        edges = JobDependency.objects.using(using).filter(job_id__in=chunk)
        found += edges.values_list("job_id", "needs_success", "ended_as")
    for job_id, needs_success, ended_as in found:
        if job_id not in states:
            continue
        if states[job_id] is None:
            continue
        if ended_as == "":
            states[job_id] += 1
        elif needs_success and ended_as != JobStatus.SUCCESSFUL:
            states[job_id] = None
    return states


def jobs_reopened(using: str, ids: list[int], now: datetime) -> None:
    """The jobs ``ids`` run again (an operator's retry): the workflow steps
    waiting for them wait for their new run, and those their end cancelled
    wait again (unless another job they need has failed), and so on down
    the workflow. Call it in the transaction that retries them."""
    jobs = _jobs(using)
    edges = JobDependency.objects.using(using)
    frontier = set(ids)
    while frontier:
        ended = list(
            edges.filter(waits_for_id__in=frontier)
            .exclude(ended_as="")
            .values_list("id", "job_id")
        )
        by_job: dict[int, list[int]] = defaultdict(list)
        for edge_id, job_id in ended:
            by_job[job_id].append(edge_id)
        reopened = set()
        for job in (
            jobs.select_for_update()
            .filter(pk__in=sorted(by_job))
            .order_by("pk")
            .only("id", "status", "waiting_for", "has_dependents", "errors")
        ):
            mine = by_job[job.pk]
            if job.status == JobStatus.WAITING:
                edges.filter(pk__in=mine).update(ended_as="", result=None)
                jobs.filter(pk=job.pk).update(waiting_for=job.waiting_for + len(mine))
                continue
            if job.status != JobStatus.CANCELLED or job.waiting_for == 0:
                continue  # released already: it ran, or runs, as it was handed
            # Never released: its edges from these jobs wait for their new
            # runs, whether it waits again now or once the others it needs
            # are retried too.
            edges.filter(pk__in=mine).update(ended_as="", result=None)
            others = edges.filter(job_id=job.pk).exclude(pk__in=mine)
            if not _cancelled_by_a_failure(job) or (
                others.filter(needs_success=True)
                .exclude(ended_as__in=["", JobStatus.SUCCESSFUL])
                .exists()
            ):
                # An operator cancelled it, or another job it needs failed:
                # it stays cancelled.
                continue
            jobs.filter(pk=job.pk).update(
                status=JobStatus.WAITING,
                waiting_for=others.filter(ended_as="").count() + len(mine),
                finished_at=None,
            )
            if job.has_dependents:
                reopened.add(job.pk)
        frontier = reopened


def _cancelled_by_a_failure(job) -> bool:
    """Whether ``job`` was cancelled because a job it waited for failed
    (not by an operator)."""
    errors = job.errors if isinstance(job.errors, list) else []
    return bool(errors) and (
        isinstance(errors[-1], dict)
        and errors[-1].get("exception_class_path") == class_path(DependencyFailed)
    )
