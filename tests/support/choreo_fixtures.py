"""Fixtures of the choreography tests: `pytest_plugins = ["support.choreo_fixtures"]`.

One session-wide cluster of service workers per broker (Redis, then RabbitMQ), shared by every
choreography test module; each test publishes through its cluster's broker while it runs.
"""
from __future__ import annotations

import pytest

from support.choreo import Cluster


@pytest.fixture(scope="session", params=["redis", "amqp"])
def choreo_cluster(request, app):  # type: ignore[no-untyped-def]
    """The service pools on Redis, then on RabbitMQ (topic routing differs between them)."""
    c = Cluster(request.param)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def cluster(choreo_cluster):  # type: ignore[no-untyped-def]
    """The cluster of this test's broker; this process publishes events through it meanwhile."""
    from workflows.choreography import use_publisher

    with use_publisher(choreo_cluster.app):
        yield choreo_cluster
