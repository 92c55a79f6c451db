"""Endpoint parsing and port probes of smap_shared.infra (no real services needed)."""

from __future__ import annotations

import socket

import pytest

from smap_shared.infra.ports import free_port, port_open, wait_port
from smap_shared.infra.services import Endpoint, infra_endpoints, parse_endpoint, unreachable


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:9092", ("localhost", 9092)),
        ("amqp://guest:guest@rabbit:5672//", ("rabbit", 5672)),
        ("amqp://guest:guest@rabbit//", ("rabbit", 5672)),
        ("redis://localhost:6379/1", ("localhost", 6379)),
        ("http://127.0.0.1:8428", ("127.0.0.1", 8428)),
    ],
)
def test_parse_endpoint(address: str, expected: tuple[str, int]) -> None:
    e = parse_endpoint("x", address)
    assert (e.host, e.port) == expected


def test_parse_endpoint_without_port_fails() -> None:
    with pytest.raises(ValueError, match="no port"):
        parse_endpoint("x", "kafka://broker")


def test_endpoints_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:19092,k2:19092")
    monkeypatch.setenv("VICTORIA_URL", "http://vm:18428")
    monkeypatch.setenv("TRITON_HTTP_PORT", "18300")
    by_name = {e.name: e for e in infra_endpoints(include_triton=True)}
    assert by_name["kafka"] == Endpoint("kafka", "k1", 19092)
    assert by_name["victoria-metrics"] == Endpoint("victoria-metrics", "vm", 18428)
    assert by_name["triton"].port == 18300


def test_port_probes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_open(port)
        assert wait_port(port, timeout=1)
        assert unreachable([Endpoint("listening", "127.0.0.1", port)]) == []
    closed = free_port()
    assert not port_open(closed)
    assert not wait_port(closed, timeout=0.3, poll_s=0.1)
    assert [e.port for e in unreachable([Endpoint("closed", "127.0.0.1", closed)])] == [closed]
