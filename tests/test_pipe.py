"""The supervisor's line to its children (``worker/pipe.py``), over a real
pipe: a line goes whole or not at all and never blocks the supervisor; a
child acts on the lines read at once merged, and on none of another
worker's; the supervisor's stops come as signals too."""

import os
import signal
import sys
import threading

import pytest

from django_bgtasks.worker.pipe import ChildPipe, SupervisorMessages, jobs_stop, wake
from django_bgtasks.worker.stopping import StopRequests
from tests.conftest import wait_until
from tests.tasks import terminated_child


def test_a_full_pipe_refuses_a_line_whole_and_never_blocks():
    read_end, write_end = os.pipe()
    pipe = ChildPipe(os.fdopen(write_end, "wb"))
    sent = 0
    while pipe.send(wake(sent % 100)):  # until the child's pipe is full
        sent += 1
    assert not pipe.send("stop")  # refused at once, not after a wait
    received = b""
    os.set_blocking(read_end, False)
    while True:
        try:
            chunk = os.read(read_end, 65536)
        except BlockingIOError:
            break
        received += chunk
    lines = received.split(b"\n")
    assert lines[-1] == b""  # no line cut short
    assert lines[:-1] == [wake(n % 100).encode() for n in range(sent)]
    pipe.close()
    assert not pipe.send("stop")  # closed: the child has ended
    os.close(read_end)


def test_a_child_acts_on_the_lines_read_at_once_merged():
    """The lines that piled up while the reader was busy with a notice (an
    urgent claim) are acted on merged: one wake-up at the highest priority
    (any, if one came without), one read of this worker's jobs' stop
    requests (another worker's: none), the stops in order."""
    read_end, write_end = os.pipe()
    stops, wakes, reads = [], [], []
    release = threading.Event()

    def on_wake(priority):
        wakes.append(priority)
        release.wait(10)  # a notice that takes its time (an urgent claim)

    messages = SupervisorMessages(
        read_end,
        worker_id="me",
        on_stop=lambda count, source: stops.append((count, source)),
        on_wake=on_wake,
        on_jobs_stop=lambda: reads.append(1),
        on_failure=lambda: stops.append("failed"),
    )
    messages.start()
    os.write(write_end, (wake(1) + "\n").encode())
    wait_until(lambda: wakes, message="the first wake-up acted on")
    lines = [wake(5), wake(7), jobs_stop("someone else"), "stop", jobs_stop("me")]
    os.write(write_end, ("\n".join(lines) + "\n").encode())
    lines = [wake(3), wake(None), jobs_stop("someone else")]
    os.write(write_end, ("\n".join(lines) + "\n").encode())
    release.set()
    wait_until(lambda: reads, message="this worker's jobs' stop requests read")
    wait_until(lambda: len(wakes) >= 2, message="the wake-ups that piled up")
    assert stops == [(1, "the supervisor")]
    # Read in one chunk or two: 7 (then None), or None.
    assert wakes[0] == 1 and wakes[1:] in ([7, None], [None])
    assert reads == [1]
    os.close(write_end)  # the supervisor is gone
    wait_until(lambda: len(stops) == 2, message="the stop at the end")
    assert stops[1] == (1, "the supervisor's exit")
    os.close(read_end)


def test_a_supervisors_stop_signals_count_as_its_messages():
    """SIGUSR1 / SIGUSR2 are the supervisor's "stop" / "now", heard on the
    signal thread (never behind the reader's work); the same request sent
    both ways counts once, and a terminal's SIGTERM beside it too."""
    requests = []
    stop_requests = StopRequests(
        lambda source, count: requests.append((source, count)), lambda: False
    )
    restore = stop_requests.install_signal_handlers(supervised=True)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: requests, message="the stop signal heard")
        stop_requests.from_supervisor(1, "the supervisor")  # its line, after
        os.kill(os.getpid(), signal.SIGTERM)  # the process group's
        wait_until(
            lambda: stop_requests._from["signals"] == 1, message="SIGTERM counted"
        )
        assert requests == [("the supervisor", 1)]
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: len(requests) == 2, message="the second request")
        assert requests[1] == ("the supervisor", 2)
    finally:
        restore()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_signal_just_before_the_handlers_are_restored_is_heard():
    """A SIGTERM whose handler has run, but which the counting thread has not
    read yet, is counted by the time ``restore()`` returns: a standalone
    worker that is about to start a fresh program in its place (after a
    timeout) reads the count then, and must stop instead."""
    requests = []
    stop_requests = StopRequests(
        lambda source, count: requests.append((source, count)), lambda: False
    )
    switch_interval = sys.getswitchinterval()
    restore = stop_requests.install_signal_handlers()
    restored = False
    try:
        # The counting thread waits for the GIL as long as it may.
        sys.setswitchinterval(1.0)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs right here
        restore()
        restored = True
        heard, counted = list(requests), stop_requests.count
    finally:
        sys.setswitchinterval(switch_interval)
        if not restored:
            restore()
    assert (heard, counted) == ([("SIGTERM", 1)], 1)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# The children only check, signal and exit: nothing there needs a thread.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_childs_signals_are_its_own():
    """A child forked without exec starts with the handlers there were
    before: SIGTERM ends it, and is no request to the process that forked
    it. A signal set apart after the handlers (a supervised worker ignores
    SIGINT) stays so, and the child's own children keep what it made."""
    requests = []
    stop_requests = StopRequests(
        lambda source, count: requests.append((source, count)), lambda: False
    )
    restore = stop_requests.install_signal_handlers()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # Signalled before it may have run a line.
        at_once = terminated_child(by_itself=False)
        child = os.fork()
        if child == 0:  # ended by its SIGTERM, or else by a code saying why
            try:
                if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                    os._exit(5)
                ends = os.pipe()  # numbers the worker's pipe had, likely
                grandchild = os.fork()
                if grandchild == 0:
                    os._exit(0 if all(os.fstat(end) for end in ends) else 4)
                if os.waitstatus_to_exitcode(os.waitpid(grandchild, 0)[1]) != 0:
                    os._exit(4)
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os._exit(3)
        _, status = os.waitpid(child, 0)
    finally:
        restore()  # hears what the pipe holds first
    assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM
    assert at_once == -signal.SIGTERM
    assert (requests, stop_requests.count) == ([], 0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_child_that_cannot_read_its_supervisor_fails_rather_than_stops(caplog):
    """An error reading the supervisor's line (not its end) is logged and
    ends the child as a failure, which its supervisor restarts after a
    pause, not as a stop request."""
    ended = []
    messages = SupervisorMessages(
        -1,  # no such file: select() refuses it
        worker_id="me",
        on_stop=lambda count, source: ended.append(("stop", count, source)),
        on_wake=lambda priority: None,
        on_jobs_stop=lambda: None,
        on_failure=lambda: ended.append("failed"),
    )
    messages.start()
    messages.join(timeout=10)
    assert ended == ["failed"]
    [logged] = [r for r in caplog.records if "supervisor's messages" in r.getMessage()]
    assert logged.levelname == "ERROR" and logged.exc_info is not None


def test_a_request_to_warm_is_acted_on_by_the_reader():
    """Another thread (the main loop's, claiming a backlog) asks the reader
    to get its connection ready: ``on_warm`` runs on the reader's thread,
    between lines or without any."""
    read_end, write_end = os.pipe()
    warmed, wakes = [], []
    messages = SupervisorMessages(
        read_end,
        worker_id="me",
        on_stop=lambda count, source: None,
        on_wake=wakes.append,
        on_jobs_stop=lambda: None,
        on_failure=lambda: None,
        on_warm=lambda: warmed.append(threading.current_thread()),
    )
    messages.start()
    messages.ask_to_warm()
    wait_until(lambda: warmed, message="the request acted on")
    assert warmed == [messages]
    os.write(write_end, (wake(3) + "\n").encode())
    messages.ask_to_warm()
    wait_until(lambda: wakes and len(warmed) == 2, message="both acted on")
    assert wakes == [3]
    os.close(write_end)
    messages.join(10)
    os.close(read_end)
