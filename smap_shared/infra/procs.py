"""The live processes of this host, read once from /proc: the Triton launcher's orphan reaping, the chain
benchmark's CPU split and the loopback test's socket owners all read this one table."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    ppid: int
    name: str  # the kernel's short name (comm), e.g. "beam.smp"
    cmdline: str  # arguments joined by spaces ("" for a kernel thread)
    cpu_s: float  # user + system CPU seconds so far


def proc_table(root: Path = Path("/proc")) -> dict[int, Proc]:
    """pid -> Proc of every live process (one that exits while being read is left out)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, Proc] = {}
    for d in root.iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2 :].split()  # f[0] is field 3 (state); comm may hold spaces and ")"
        out[int(d.name)] = Proc(int(f[1]), raw[raw.index("(") + 1 : raw.rindex(")")], cmdline,
                                (int(f[11]) + int(f[12])) / tick)
    return out


def descendants(pid: int, table: Mapping[int, Proc]) -> set[int]:
    """`pid` and every live process below it."""
    children: dict[int, list[int]] = {}
    for p, proc in table.items():
        children.setdefault(proc.ppid, []).append(p)
    seen, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen
