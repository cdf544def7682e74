"""A workload run under the real agent as a process of its own: on the host (the agent in its
normal mode), or in a fresh pid namespace whose init is a plain shell, with the agent in
`--pid-namespace self` mode - so orphans go to that init, as they would on a host.

The workload is Python run by the driver with `subprocess`, `time` and `mark` at hand; the
driver starts the agent, waits until it captures, runs the workload, waits `settle` seconds for
what it left behind, stops the agent with SIGTERM, and prints its own pid, the agent's exit code
and what the agent said."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from whodid.tracer import Store

HEAD = r'''
import os, signal, subprocess, sys, time
db, ready, mark, settle, *agent_args = sys.argv[1:]
agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--db", db, "--host", "live",
                          "--ready-file", ready, "--flush-interval", "0.2", "--auth-log", "none", *agent_args],
                         stderr=subprocess.PIPE, text=True)
for _ in range(900):
    if os.path.exists(ready) or agent.poll() is not None:
        break
    time.sleep(0.1)
'''

TAIL = r'''
time.sleep(float(settle))
agent.send_signal(signal.SIGTERM)
_, err = agent.communicate(timeout=60)
print(os.getpid(), agent.returncode, err.replace("\n", " | "), sep="\n")
'''


def run_workload(work: Path, workload: str, mark: str, mode: str, settle: float) -> tuple[Store, int]:
    """Run workload under the agent in mode ("normal" or "pid-namespace-self"); the store it
    wrote and the driver's pid (as the agent's namespace sees it)."""
    driver = work / "driver.py"
    driver.write_text(HEAD + workload + TAIL)
    cmd = [sys.executable, str(driver), str(work / "agent.db"), str(work / "ready"), mark, str(settle)]
    if mode == "pid-namespace-self":
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", '"$@"; exit $?', "sh", *cmd,
               "--pid-namespace", "self"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    driver_pid, agent_rc, agent_err = res.stdout.splitlines()[-3:]
    assert agent_rc == "0", agent_err
    return Store.open(work / "agent.db"), int(driver_pid)
