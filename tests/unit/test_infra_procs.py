"""The /proc table the launcher, the chain benchmark and the loopback test share."""

from __future__ import annotations

import os
import subprocess
import sys

from smap_shared.infra.procs import descendants, proc_table


def test_a_child_is_found_below_this_process_with_its_command_line_and_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table = proc_table()
        me = table[os.getpid()]
        assert me.ppid == os.getppid() and me.cpu_s > 0
        assert table[child.pid].ppid == os.getpid() and "time.sleep(30)" in table[child.pid].cmdline
        assert table[child.pid].name.startswith("python")
        assert {os.getpid(), child.pid} <= descendants(os.getpid(), table)
        assert os.getppid() not in descendants(os.getpid(), table)
    finally:
        child.kill()
        child.wait()
