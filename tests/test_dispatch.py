"""Sending a signal for many results with its receivers looked up once."""

import pytest
from django.dispatch import Signal

from django_bgtasks.private_api import Receivers, send_to_each


class Sender:
    pass


def test_calls_each_receiver_as_signal_send_does():
    signal = Signal()
    calls = []

    def first(signal, sender, **named):
        calls.append(("first", signal, sender, named))

    def second(sender, **named):
        calls.append(("second", sender, named["task_result"]))

    signal.connect(first)
    signal.connect(second)
    receivers = Receivers(signal, Sender)
    receivers.send(task_result=1)
    receivers.send(task_result=2)
    assert calls == [
        ("first", signal, Sender, {"task_result": 1}),
        ("second", Sender, 1),
        ("first", signal, Sender, {"task_result": 2}),
        ("second", Sender, 2),
    ]


def test_only_receivers_for_that_sender():
    signal = Signal()
    calls = []

    class Other:
        pass

    def mine(sender, **named):
        calls.append("mine")

    def theirs(sender, **named):
        calls.append("theirs")

    signal.connect(mine, sender=Sender)
    signal.connect(theirs, sender=Other)
    Receivers(signal, Sender).send(task_result=None)
    assert calls == ["mine"]


def test_the_receivers_are_those_of_when_it_was_made():
    signal = Signal()
    calls = []

    def early(sender, **named):
        calls.append(("early", named["task_result"]))

    def late(sender, **named):
        calls.append(("late", named["task_result"]))

    signal.connect(early)
    receivers = Receivers(signal, Sender)
    signal.connect(late)
    receivers.send(task_result=1)
    Receivers(signal, Sender).send(task_result=2)
    assert calls == [("early", 1), ("early", 2), ("late", 2)]


def test_a_receiver_error_propagates():
    signal = Signal()

    def broken(sender, **named):
        raise RuntimeError("receiver broke")

    signal.connect(broken)
    with pytest.raises(RuntimeError, match="receiver broke"):
        Receivers(signal, Sender).send(task_result=None)


def test_async_receivers_are_sent_through_signal_send():
    signal = Signal()
    calls = []

    def sync_receiver(sender, **named):
        calls.append(("sync", named["task_result"]))

    async def async_receiver(sender, **named):
        calls.append(("async", named["task_result"]))

    signal.connect(sync_receiver)
    signal.connect(async_receiver)
    send_to_each(signal, Sender, [1, 2])
    assert calls == [("sync", 1), ("async", 1), ("sync", 2), ("async", 2)]
