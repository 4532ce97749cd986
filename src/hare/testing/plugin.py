"""pytest plugin (registered as ``hare``): fixtures that give tests a running broker.

- ``hare_broker``: a broker for the test session (an EmbeddedBroker), shared by the tests.
- ``hare_url``: its ``amqp://`` URL.
- ``hare_broker_factory``: call it to start a fresh broker (stopped after the test).

Set ``HARE_TEST_URL`` to run the same tests against another broker (e.g. RabbitMQ) instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import EmbeddedBroker


@pytest.fixture(scope="session")
def hare_broker() -> Iterator[EmbeddedBroker | None]:
    if os.environ.get("HARE_TEST_URL"):
        yield None
        return
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def hare_url(hare_broker: EmbeddedBroker | None) -> str:
    external = os.environ.get("HARE_TEST_URL")
    if external:
        return external
    assert hare_broker is not None
    return hare_broker.url


@pytest.fixture
def hare_broker_factory() -> Iterator[Callable[..., EmbeddedBroker]]:
    started: list[EmbeddedBroker] = []

    def make(**kwargs: Any) -> EmbeddedBroker:
        broker = EmbeddedBroker(**kwargs).start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()
