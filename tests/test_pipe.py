"""The supervisor's line to its children (``worker/pipe.py``), over a real
pipe: a line goes whole or not at all and never blocks the supervisor; a
child acts on a stop at once and on notices merged, and on none of another
worker's."""

import os
import threading

from django_bgtasks.worker.pipe import ChildPipe, SupervisorMessages, jobs_stop, wake
from tests.conftest import wait_until


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


def test_a_child_acts_on_a_stop_at_once_and_on_notices_merged():
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
    )
    messages.start()
    lines = [wake(5), wake(7), wake(None), wake(3), jobs_stop("someone else")]
    os.write(write_end, ("\n".join(lines) + "\n").encode())
    wait_until(lambda: wakes, message="the first wake-up acted on")
    # While it is acted on, a stop is heard at once.
    os.write(write_end, b"stop\n" + jobs_stop("me").encode() + b"\n")
    wait_until(lambda: stops, message="the stop")
    assert stops == [(1, "the supervisor")]
    release.set()
    wait_until(lambda: reads, message="this worker's jobs' stop requests read")
    # The wake-ups that came meanwhile, merged into one: any priority (one
    # came without); another worker's stop requests, not read.
    assert len(wakes) <= 2 and wakes[-1] is None
    assert reads == [1]
    os.close(write_end)  # the supervisor is gone
    wait_until(lambda: len(stops) == 2, message="the stop at the end")
    assert stops[1] == (1, "the supervisor's exit")
    os.close(read_end)
