"""Workflows as rows: the plan of a workflow's jobs and edges, and its result.

``DatabaseBackend.enqueue_workflow`` writes a workflow (``steps.py``) as
``plan`` lays it out: one job per step, in the order of ``Node.steps()``,
READY if it waits for nothing, else WAITING; one ``JobDependency`` per edge.
What moves a WAITING job on is ``models/dependencies.py``.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

from .compat import InvalidTask, task_backends
from .models import FINISHED_STATUSES, Job, JobStatus, Passes
from .steps import Chain, Chord, Group, Node, Step


@dataclass(frozen=True, slots=True)
class Edge:
    """Job ``job`` (an index in ``Plan.steps``) waits for job ``waits_for``."""

    job: int
    waits_for: int
    position: int
    passes: str
    needs_success: bool


@dataclass(slots=True)
class Plan:
    """A workflow's jobs (its steps, in order) and edges."""

    steps: list[Step] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def plan(node: Node) -> Plan:
    """Lay ``node`` out as jobs and edges."""
    laid = Plan()
    _add(laid, node, after=[], passes=Passes.NOTHING, needs_success=True)
    return laid


def _add(
    laid: Plan, node: Node, after: list[int], passes: str, needs_success: bool
) -> tuple[list[int], str]:
    """Lay ``node`` out to start once the jobs ``after`` have ended (handed
    ``passes``); return the jobs it ends with, and what a part after it is
    handed."""
    match node:
        case Step():
            n = len(laid.steps)
            laid.steps.append(node)
            handed = passes if node.takes_result else Passes.NOTHING
            for position, before in enumerate(after):
                laid.edges.append(Edge(n, before, position, handed, needs_success))
            return [n], Passes.VALUE
        case Chain(parts):
            for part in parts:
                after, passes = _add(laid, part, after, passes, needs_success)
                needs_success = True  # only a chord's callback may not need it
            return after, passes
        case Group(parts):
            ends = []
            for part in parts:
                ends += _add(laid, part, after, passes, needs_success)[0]
            return ends, Passes.LIST
        case Chord(header, callback, on_failure):
            ends, _ = _add(laid, header, after, passes, needs_success)
            return _add(laid, callback, ends, Passes.LIST, on_failure == "cancel")
    raise InvalidTask(f"Not a part of a workflow: {node!r}.")


class WorkflowStatus(enum.StrEnum):
    """Where a workflow is, from its jobs' statuses."""

    READY = "READY"  # none has started
    RUNNING = "RUNNING"  # some have started, some have not ended
    SUCCESSFUL = "SUCCESSFUL"  # all succeeded
    FAILED = "FAILED"  # all have ended, and one failed
    CANCELLED = "CANCELLED"  # all have ended, none failed, one was cancelled


class WorkflowResult:
    """A workflow's jobs as ``django.tasks`` results, in the order its steps
    were written; ``refresh()`` reads them again."""

    def __init__(self, workflow_id: str, members: list, backend: str):
        self.id = workflow_id
        self.members = members
        self.backend = backend

    def __repr__(self):
        return f"<WorkflowResult {self.id} {self.status}: {len(self.members)} jobs>"

    @property
    def status(self) -> WorkflowStatus:
        jobs = list(self._jobs.values())
        if all(job.status in FINISHED_STATUSES for job in jobs):
            ended = {job.status for job in jobs}
            if ended == {JobStatus.SUCCESSFUL}:
                return WorkflowStatus.SUCCESSFUL
            if JobStatus.FAILED in ended:
                return WorkflowStatus.FAILED
            return WorkflowStatus.CANCELLED
        if all(job.status in (JobStatus.READY, JobStatus.WAITING) for job in jobs):
            return WorkflowStatus.READY
        return WorkflowStatus.RUNNING

    @property
    def is_finished(self) -> bool:
        """Whether every job of the workflow has ended."""
        return all(job.status in FINISHED_STATUSES for job in self._jobs.values())

    @property
    def return_value(self) -> Any:
        """What the workflow's last steps returned, once it is SUCCESSFUL:
        the value of its last step, or the list of values of its last steps
        if it ends with several (a group's, in order). ValueError before,
        as a TaskResult's."""
        if self.status != WorkflowStatus.SUCCESSFUL:
            raise ValueError(
                f"The workflow is {self.status}: it has a return value once it "
                f"is SUCCESSFUL."
            )
        last = [
            member.return_value
            for member in self.members
            if not self._jobs[member.id].has_dependents
        ]
        return last[0] if len(last) == 1 else last

    def refresh(self) -> None:
        """Read the workflow's jobs again."""
        jobs = list(
            Job.objects.using(task_backends[self.backend].database)
            .filter(workflow_id=self.id)
            .order_by("pk")
        )
        self._set(jobs)

    def cancel(self) -> int:
        """Cancel the jobs of the workflow that have not started, and ask
        the running ones to stop (they end CANCELLED, and the jobs after
        them with them). Returns how many jobs it changed."""
        count = (
            Job.objects.using(task_backends[self.backend].database)
            .filter(workflow_id=self.id)
            .cancel()
        )
        self.refresh()
        return count

    def _set(self, jobs: list[Job]) -> None:
        backend = task_backends[self.backend]
        self._jobs = {str(job.pk): job for job in jobs}
        self.members = [backend._result_of(job) for job in jobs]


def get_workflow(workflow_id, *, backend: str = "default") -> WorkflowResult:
    """The workflow ``workflow_id`` (its ``WorkflowResult.id``); LookupError
    if it has no jobs (never written, or pruned)."""
    try:
        workflow_id = uuid.UUID(str(workflow_id))
    except ValueError:
        raise LookupError(f"No workflow {workflow_id!r}: not a workflow id.") from None
    result = WorkflowResult(str(workflow_id), [], backend)
    result.refresh()
    if not result.members:
        raise LookupError(f"No workflow {workflow_id}.")
    return result
