"""A task whose limit clashes with tests/limited_tasks.py's "shared" one
(imported by the check's test only, inside its own registry)."""

from django_bgtasks import Limit
from django_bgtasks import task as bg_task


@bg_task(limit=Limit(concurrency=3, name="shared"))
def another_shared():
    pass
