"""A module that must never be imported because a job row names it: importing
it leaves a mark (a file), as importing a module with side effects would."""

from pathlib import Path

MARK = Path(__file__).resolve().parent.parent / "test-artifacts" / "imported"
MARK.parent.mkdir(parents=True, exist_ok=True)
MARK.write_text("imported from a job row")


def run():
    return "ran"
