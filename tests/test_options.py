"""runworker's options (``worker/options.py``): parsed once, written back for
a supervisor's children."""

import argparse

import pytest

from django_bgtasks.worker import WorkerOptions


def parse(*argv: str) -> WorkerOptions:
    parser = argparse.ArgumentParser(exit_on_error=False)
    WorkerOptions.add_arguments(parser)
    return WorkerOptions.from_command(vars(parser.parse_args(argv)))


def test_options_left_out_keep_their_defaults():
    assert parse() == WorkerOptions()
    options = WorkerOptions()
    assert options.queues is None and options.prefetch is None
    assert options.scheduler and options.maintenance and not options.burst


def test_every_option_given_comes_back_from_its_command_line():
    given = parse(
        "--queues", "b,a", "--concurrency", "3", "--prefetch", "0", "--burst",
        "--max-jobs", "9", "--poll-interval", "0.5", "--worker-id", "w1",
        "--shutdown-timeout", "2", "--no-scheduler", "--no-maintenance",
        "--max-memory", "300", "--supervised",
    )  # fmt: skip
    assert given.queues == ("a", "b") and given.prefetch == 0
    assert (given.concurrency, given.max_jobs, given.worker_id) == (3, 9, "w1")
    assert not given.scheduler and not given.maintenance and given.supervised
    assert parse(*given.argv()) == given


def test_a_childs_command_line_carries_its_supervisors_options():
    options = parse(
        "--processes", "3", "--concurrency", "4", "--queues", "q",
        "--max-jobs-per-child", "100", "--max-memory-per-child", "250",
        "--worker-id", "host", "--burst",
    )  # fmt: skip
    first, second = options.for_child(1), options.for_child(2)
    assert first.argv() == [
        "--queues", "q", "--concurrency", "4", "--burst", "--max-jobs", "100",
        "--worker-id", "host-1", "--no-scheduler", "--no-maintenance",
        "--supervised", "--max-memory", "250",
    ]  # fmt: skip
    assert parse(*first.argv()) == first
    # The supervisor runs the scheduler and the maintenance for them all.
    assert options.scheduler and options.maintenance
    assert not first.scheduler and not first.maintenance
    assert not second.scheduler and not second.maintenance
    assert second.worker_id == "host-2" and not second.supervises


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "0"], "is not 1 or more"),
        (["--prefetch", "-1"], "is not 0 or more"),
        (["--poll-interval", "nan"], "is not 0 or more seconds"),
        (["--poll-interval", "0"], "is not more than 0 seconds"),
        (["--queues", "a,*"], "'*' means every queue"),
        (["--worker-id", "x" * 96], "must be 1 to 95 characters"),
    ],
)
def test_bad_values_are_refused_with_the_reason(argv, message):
    with pytest.raises(argparse.ArgumentError, match=message):
        parse(*argv)


def test_max_jobs_means_one_process():
    with pytest.raises(ValueError, match="use --max-jobs-per-child"):
        WorkerOptions(processes=2, max_jobs=5)
    with pytest.raises(ValueError, match="at least 1"):
        WorkerOptions(concurrency=0)


def test_queues_from_python_are_kept_in_one_order():
    assert WorkerOptions(queues=["b", "a", "b"]).queue_list == ["a", "b"]
    assert WorkerOptions(queues=None).queue_list is None
