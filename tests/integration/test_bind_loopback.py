"""After `bash start-smap.sh`, no listening socket of the project is on a non-loopback address (issue 17).

The whole native system is started as a user starts it, then the kernel's socket table (/proc/net/tcp and
tcp6) is read and every listening socket is traced to its process through /proc/<pid>/fd. The project's
processes are supervisord's whole tree (Triton and its stubs, the workers, every service, Flower) and what
scripts/infra.sh recorded it started (.run/infra-started: Tansu, VictoriaMetrics, and RabbitMQ, Redis or
PostgreSQL where it had to start them). Services this machine had running before (its RabbitMQ, Redis and
PostgreSQL) are not the project's and are not judged. The services are stopped again afterwards; the
infrastructure stays up for the other tests, as scripts/test.sh left it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from smap_shared.infra.procs import descendants, proc_table

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / ".run"
LISTEN = "0A"  # TCP state in /proc/net/tcp


def _address(hex_addr: str, family: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order
    return socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN."""
    out: dict[int, tuple[str, int]] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            addr, port = fields[1].split(":")
            out[int(fields[9])] = (_address(addr, family), int(port, 16))
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def project_pids() -> dict[int, str]:
    """pid -> what it is, for every process the project started."""
    table = proc_table()
    sup = int((RUN / "supervisord.pid").read_text().split()[0])
    pids = {pid: table[pid].cmdline[:100] for pid in descendants(sup, table) if pid in table}
    started = RUN / "infra-started"
    for line in started.read_text().splitlines() if started.exists() else []:
        name, pid, _port = line.split()
        if pid.isdigit() and int(pid) in table:
            pids.update(dict.fromkeys(descendants(int(pid), table), name))
    return pids


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.fixture(scope="module")
def started_system() -> Iterator[None]:
    # the defaults, as a user has them: loopback, authentication on
    env = {k: v for k, v in os.environ.items() if k not in ("SMAP_BIND_ADDRESS", "SMAP_AUTH")}
    env.update(SIMULATOR_INTERVAL_S="5", TRITON_WAIT_S="240")
    pidfile = RUN / "supervisord.pid"
    already = pidfile.exists() and (Path("/proc") / pidfile.read_text().strip()).exists()
    proc = subprocess.run(["bash", "start-smap.sh", "start", "--native"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    try:
        yield
    finally:
        if not already:  # the services only: the infrastructure is the test run's (scripts/test.sh)
            ctl = [str(ROOT / ".venv/bin/supervisorctl"), "-c", str(RUN / "supervisord.conf"), "shutdown"]
            subprocess.run(ctl, check=False, cwd=ROOT, capture_output=True, timeout=180)


def test_no_socket_of_the_project_listens_beyond_loopback(started_system: None) -> None:
    sockets = listening_sockets()
    mine: list[tuple[str, int, str]] = []
    for pid, what in project_pids().items():
        for inode in socket_inodes(pid) & sockets.keys():
            mine.append((*sockets[inode], what))
    ports = {port for _, port, _ in mine}
    # the system is really up: the dashboard, the alert API, Triton's three listeners, Flower, a /metrics
    expected = {8000, 8002, 8100, 8101, 8102, 5555, 9302}
    assert expected <= ports, f"missing listeners {sorted(expected - ports)}; found {sorted(mine)}"
    exposed = sorted(s for s in mine if not is_loopback(s[0]))
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_started_system_requires_a_login(started_system: None) -> None:
    """With the defaults the dashboard's API and the alert API answer 401 to anonymous callers, and a token
    made with the administrator's CLI for the first admin (start-smap.sh created it) is let in."""
    for url in ("http://127.0.0.1:8000/api/smap/satellites", "http://127.0.0.1:8002/api/smap/alerts"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401, url
    token = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "smap_shared.auth", "create-token", "admin",
                            "--name", "test_bind_loopback"], check=True, cwd=ROOT, capture_output=True, text=True,
                           timeout=60).stdout.strip()
    for url in ("http://127.0.0.1:8000/api/smap/satellites", "http://127.0.0.1:8002/api/smap/alerts"):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200, url


def test_a_non_loopback_bind_address_is_warned_about() -> None:
    """start-smap.sh's first step (scripts/lib.sh's warn_exposed) says so, loudly, for an address beyond
    loopback, and says nothing for loopback or when the variable is unset."""

    def warned(value: str | None, auth: str | None = None, rc: int = 0) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("SMAP_BIND_ADDRESS", "SMAP_AUTH")}
        if value is not None:
            env["SMAP_BIND_ADDRESS"] = value
        if auth is not None:
            env["SMAP_AUTH"] = auth
        out = subprocess.run(["bash", "-c", "source scripts/lib.sh; warn_exposed"], check=False, cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == rc, out.stderr
        return out.stderr

    assert "WARNING: SMAP_BIND_ADDRESS=0.0.0.0" in warned("0.0.0.0")
    assert "Triton, the Kafka broker" in warned("0.0.0.0")
    # no login beyond loopback is refused before anything starts
    assert "authentication may only be off on loopback" in warned("0.0.0.0", auth="off", rc=1)
    assert warned("127.0.0.1", auth="off") == ""
    assert "WARNING: SMAP_BIND_ADDRESS=10.1.2.3" in warned("10.1.2.3")
    assert warned("127.0.0.1") == warned("::1") == warned(None) == ""
