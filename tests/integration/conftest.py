"""Fixtures shared by the integration tests."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A throwaway RabbitMQ vhost, so a test's queues never meet a running system's workers."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to make the test's own RabbitMQ vhost")
    vhost = f"smap-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@localhost:5672/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)
