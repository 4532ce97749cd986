"""The broker's timer heap (hare.broker.timers): a plain object, driven with any clock."""

from __future__ import annotations

import logging

import pytest

from hare.broker.timers import Timers


def test_a_failing_timer_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    timers = Timers()
    ran: list[str] = []

    def bad(now: int) -> None:
        raise ValueError("poison")

    timers.call_at(10, lambda now: ran.append("before"))
    timers.call_at(20, bad)
    timers.call_at(30, lambda now: ran.append("after"))
    with caplog.at_level(logging.ERROR, logger="hare.broker"):
        timers.run(100)
    assert ran == ["before", "after"]
    assert "poison" in caplog.text
    timers.call_at(200, lambda now: ran.append("later"))  # and the heap goes on working
    assert timers.next_deadline() == 200
    timers.run(200)
    assert ran[-1] == "later"
