"""TCP port probes shared by the launcher, the service checks and the tests."""

from __future__ import annotations

import socket
import time


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0, poll_s: float = 0.2) -> bool:
    """Poll until host:port accepts connections; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS's choice), for tests that start their own servers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
