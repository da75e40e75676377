"""What a workflow is made of: steps, chains, groups and chords.

Plain descriptions, checked as they are built, written nowhere until
``enqueue()``::

    from django_bgtasks import chain, chord, group

    chain(fetch.step(url), parse.step(), store.step(key="page")).enqueue()
    chord([resize.step(path, size) for size in SIZES], publish.step()).enqueue()

- A **step** is one call of a task: ``task.step(*args, **kwargs)`` (or
  ``Step(task, args, kwargs)`` for a task that is not a ``DatabaseTask``).
- A **chain** runs its parts one after another; each part starts once the
  one before it has succeeded, and takes its result as its first argument
  (``step.ignoring_result()`` takes none). ``a | b`` is ``chain(a, b)``.
- A **group** runs its parts side by side; a part after a group takes the
  list of their results, in the group's order.
- A **chord** is a group and a callback that runs once every member has
  ended, taking the list of their results: by default only if they all
  succeeded (``on_failure="cancel"``), or whatever they did
  (``on_failure="run"``: a member that did not succeed gives None).

Parts nest: a chain's part may be a group or a chord, a group's part a
chain. ``django_bgtasks.workflows`` writes them as rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .compat import InvalidTask, Task


class Node:
    """A part of a workflow."""

    __slots__ = ()

    def __or__(self, other: Node) -> Chain:
        return chain(self, other)

    def enqueue(self):
        """Write the whole workflow, in the caller's transaction; its
        :class:`~django_bgtasks.workflows.WorkflowResult`."""
        backend = next(self.steps()).task.get_backend()
        if not hasattr(backend, "enqueue_workflow"):
            raise InvalidTask(
                f"Workflows need django_bgtasks' DatabaseBackend; backend "
                f"{backend.alias!r} is a {type(backend).__name__}."
            )
        return backend.enqueue_workflow(self)

    def steps(self):
        """The workflow's steps, in the order they are written."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Step(Node):
    """One call of ``task`` with ``args`` and ``kwargs``. ``takes_result``:
    whether it takes the result of what it waits for (in a chain) as its
    first argument."""

    task: Task
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    takes_result: bool = True

    def __post_init__(self):
        if not isinstance(self.task, Task):
            raise InvalidTask(f"A step's task must be a Task, not {self.task!r}.")
        if isinstance(self.args, str | bytes) or not isinstance(self.kwargs, dict):
            raise InvalidTask("A step's args must be a sequence and kwargs a dict.")
        object.__setattr__(self, "args", tuple(self.args))

    def ignoring_result(self) -> Step:
        """This step, taking no result from the step before it."""
        return replace(self, takes_result=False)

    def steps(self):
        yield self


@dataclass(frozen=True, slots=True)
class Parts(Node):
    """A part made of parts, written in their order."""

    parts: tuple[Node, ...]

    def steps(self):
        for part in self.parts:
            yield from part.steps()


class Chain(Parts):
    """Parts run one after another."""

    __slots__ = ()


class Group(Parts):
    """Parts run side by side."""

    __slots__ = ()


ON_FAILURE = ("cancel", "run")


@dataclass(frozen=True, slots=True)
class Chord(Node):
    """``header``'s members side by side, then ``callback`` once they have
    all ended (``on_failure="cancel"``: only if they all succeeded)."""

    header: Group
    callback: Node
    on_failure: str = "cancel"

    def steps(self):
        yield from self.header.steps()
        yield from self.callback.steps()


def chain(*parts: Node) -> Chain:
    """Run ``parts`` one after another, each taking the last one's result."""
    flat = []
    for part in _parts("chain", parts):
        # A chain in a chain is its parts: ``a | b | c`` nests no deeper.
        flat.extend(part.parts if isinstance(part, Chain) else [part])
    return Chain(tuple(flat))


def group(*parts: Node | Iterable[Node]) -> Group:
    """Run ``parts`` (given one by one, or as one iterable) side by side."""
    if len(parts) == 1 and not isinstance(parts[0], Node):
        parts = tuple(parts[0])
    return Group(_parts("group", parts))


def chord(
    header: Group | Iterable[Node], callback: Node, *, on_failure: str = "cancel"
) -> Chord:
    """Run ``header``'s members side by side, then ``callback`` with the
    list of their results. ``on_failure``: "cancel" (the default) cancels
    the callback if a member fails or is cancelled; "run" runs it once all
    have ended, a member that did not succeed giving None."""
    if on_failure not in ON_FAILURE:
        raise InvalidTask(f"on_failure must be 'cancel' or 'run', not {on_failure!r}.")
    if not isinstance(header, Group):
        header = group(header)
    [callback] = _parts("chord", (callback,))
    return Chord(header, callback, on_failure)


def _parts(kind: str, parts: tuple) -> tuple[Node, ...]:
    if not parts:
        raise InvalidTask(f"A {kind} needs at least one part.")
    for part in parts:
        if not isinstance(part, Node):
            hint = " (make a step with task.step(*args, **kwargs))"
            if not isinstance(part, Task):
                hint = ""
            raise InvalidTask(
                f"A {kind}'s parts are steps, chains, groups and chords, not "
                f"{part!r}{hint}."
            )
    return tuple(parts)
