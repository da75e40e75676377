"""OpenTelemetry spans (``django_bgtasks/tracing.py``): an enqueue's span in
the caller's trace, each run of its jobs a child of it, on a real worker in
this process; with the SDK's in-memory exporter, on a provider of the test's
own (no other test traces)."""

import pytest

from django_bgtasks import tracing
from django_bgtasks.exceptions import InvalidTaskArguments
from django_bgtasks.models import Job, JobStatus
from tests import tasks
from tests.conftest import run_in_process

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def spans(monkeypatch):
    """The spans finished during the test; the test's tracer, from a
    provider of its own, is the one tracing.py uses."""
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer(tracing.SYSTEM))
    exporter.tracer = tracer  # for the test's own "request" span
    return exporter


def named(exporter, prefix):
    finished = exporter.get_finished_spans()
    return [span for span in finished if span.name.startswith(prefix)]


def test_a_jobs_run_is_the_child_of_its_enqueue_in_the_requests_trace(spans):
    with spans.tracer.start_as_current_span("GET /orders/") as request:
        result = tasks.add.enqueue(1, 2)
    job = Job.objects.get(pk=result.id)
    assert job.trace_context["traceparent"].startswith("00-")
    run_in_process()

    [enqueue] = named(spans, "enqueue ")
    [run] = named(spans, "run ")
    assert enqueue.name == "enqueue tests.tasks.add"
    assert enqueue.kind == SpanKind.PRODUCER
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert run.name == "run tests.tasks.add" and run.kind == SpanKind.CONSUMER
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.parent.span_id == enqueue.context.span_id
    assert run.attributes["messaging.message.id"] == str(job.pk)
    assert run.attributes["messaging.destination.name"] == "default"
    assert run.attributes["bgtasks.outcome"] == "Succeeded"
    assert run.status.status_code == StatusCode.UNSET
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCESSFUL


def test_a_bulk_enqueue_and_a_workflow_are_one_span_each_with_a_child_per_run(spans):
    results = tasks.add.enqueue_many([((n, n), {}) for n in range(3)])
    workflow = (tasks.add.step(1, 2) | tasks.add.step(5, 5).ignoring_result()).enqueue()
    run_in_process()

    bulk, flow = sorted(named(spans, "enqueue "), key=lambda span: span.start_time)
    assert bulk.attributes["messaging.batch.message_count"] == 3
    assert flow.name == "enqueue workflow of tests.tasks.add"
    runs = named(spans, "run ")
    ids = {str(result.id) for result in results}
    flow_ids = {str(member.id) for member in workflow.members}
    assert {run.attributes["messaging.message.id"] for run in runs} == ids | flow_ids
    for run in runs:
        parent = bulk if run.attributes["messaging.message.id"] in ids else flow
        assert run.parent.span_id == parent.context.span_id


def test_a_failed_attempt_is_an_error_span_with_its_exception(spans):
    result = tasks.fails_at_once.enqueue()
    run_in_process()

    [run] = named(spans, "run ")
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "ValueError: this step fails"
    [event] = run.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert Job.objects.get(pk=result.id).status == JobStatus.FAILED


@pytest.mark.parametrize(
    "stored", [["not", "a", "mapping"], {"traceparent": "garbage"}, {"x": 1}]
)
def test_a_stored_context_that_cannot_be_read_gives_a_run_of_its_own_trace(
    spans, stored
):
    result = tasks.add.enqueue(2, 2)
    Job.objects.filter(pk=result.id).update(trace_context=stored)  # by hand
    run_in_process()

    [enqueue] = named(spans, "enqueue ")
    [run] = named(spans, "run ")
    assert run.parent is None
    assert run.context.trace_id != enqueue.context.trace_id
    assert Job.objects.get(pk=result.id).status == JobStatus.SUCCESSFUL


def test_without_opentelemetry_nothing_is_stored_and_jobs_run(monkeypatch):
    monkeypatch.setattr(tracing, "_tracer", None)
    result = tasks.add.enqueue(3, 4)
    assert Job.objects.get(pk=result.id).trace_context is None
    run_in_process()
    assert Job.objects.get(pk=result.id).return_value == 7


def test_until_a_provider_is_configured_no_span_is_made_and_nothing_stored():
    # The API alone, as this test process has it: spans would record nothing.
    assert tracing._tracer is not None and tracing._active_tracer() is None
    result = tasks.add.enqueue(5, 6)
    assert Job.objects.get(pk=result.id).trace_context is None


class BrokenProcessor(sdk.SpanProcessor):
    """A project's span processor that raises as spans of ``prefix`` start
    or end (``at``): an error in what tracing calls is never the job's."""

    def __init__(self, prefix: str, at: str):
        self.prefix, self.at = prefix, at

    def _maybe_raise(self, span, at):
        if span.name.startswith(self.prefix) and at == self.at:
            raise RuntimeError(f"broken processor ({at} of {span.name})")

    def on_start(self, span, parent_context=None):
        self._maybe_raise(span, "start")

    def on_end(self, span):
        self._maybe_raise(span, "end")


def broken(monkeypatch, prefix: str, at: str):
    """The tracer of a provider with a processor that raises."""
    provider = sdk.TracerProvider()
    provider.add_span_processor(BrokenProcessor(prefix, at))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer(tracing.SYSTEM))


@pytest.mark.parametrize("at", ["start", "end"])
def test_a_span_processor_that_raises_harms_no_run(monkeypatch, caplog, at):
    broken(monkeypatch, "run ", at)
    result = tasks.add.enqueue(2, 3)
    worker = run_in_process()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.return_value, job.attempts) == (
        JobStatus.SUCCESSFUL,
        5,
        1,
    )
    assert worker.jobs_claimed == 1
    [logged] = [r for r in caplog.records if "broken processor" in str(r.exc_info)]
    assert logged.levelname == "ERROR"
    assert f"job {job.pk}" in logged.getMessage()


@pytest.mark.parametrize("at", ["start", "end"])
def test_a_span_processor_that_raises_harms_no_enqueue(monkeypatch, caplog, at):
    broken(monkeypatch, "enqueue ", at)
    result = tasks.add.enqueue(2, 3)
    [bulk] = tasks.add.enqueue_many([((1, 1), {})])
    assert Job.objects.filter(pk__in=[result.id, bulk.id]).count() == 2
    logged = [r for r in caplog.records if "broken processor" in str(r.exc_info)]
    assert len(logged) == 2 and all(r.levelname == "ERROR" for r in logged)
    assert "tests.tasks.add" in logged[0].getMessage()


def test_an_enqueues_own_error_is_not_chained_to_a_tracing_error(monkeypatch):
    broken(monkeypatch, "enqueue ", "start")
    with pytest.raises(InvalidTaskArguments) as raised:
        tasks.add.enqueue(object(), 1)  # refused inside the enqueue's span
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__context__
    assert not any("broken processor" in str(error) for error in chain)
