"""A process that lives across an agent restart stays one process (issue 17, rule 6).

The first agent sees the shell fork and names it by the fork record's time (ns since boot);
the restarted agent finds it already running and can only read /proc's start time, in 10 ms
ticks. On the real kernel: both agents' output in one store must hold the shell once, and
the child it forks after the restart must trace back through it to this test process.
Needs root, tracefs and BCC (skipped without them, as tests/test_agent_live.py).
"""

import json
import os
import subprocess
import time

import pytest

from whodid.tracer import Query, Store, Tracer
from whodid.tracer.ingest import ingest

from kit import file_agent, stop_file_agent
from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-restart-{os.getpid()}"


def start_agent(tmp_path, name):
    return file_agent(tmp_path, name)


def test_a_shell_living_across_a_restart_is_one_process_and_its_child_reaches_its_parent(tmp_path):
    go = tmp_path / "go"
    os.mkfifo(go)
    first = start_agent(tmp_path, "first")
    shell = None
    try:
        # waits on the fifo, so the child is forked only when the second agent runs;
        # `exit 3` keeps sh from exec'ing the last command in place of forking it
        shell = subprocess.Popen(["sh", "-c", f"read x < {go}; /bin/true {MARK}-child; exit 3"])
        time.sleep(0.5)                                  # let the fork reach the agent
    finally:
        stop_file_agent(first)
    second = start_agent(tmp_path, "second")
    try:
        with open(go, "w") as fh:
            fh.write("go\n")
        assert shell.wait(timeout=30) == 3
        time.sleep(1.0)                                  # let the last records reach the agent
    finally:
        stop_file_agent(second)

    first_events = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    second_events = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    # the situation this test is about: two names for one shell, one from each agent
    (fork,) = [e for e in first_events if e["kind"] == "fork" and e["pid"] == shell.pid]
    (snap,) = [e for e in second_events if e["kind"] == "exec" and e["pid"] == shell.pid and e.get("snapshot")]
    assert fork["start"] != snap["start"]

    store = Store.open(tmp_path / "whodid.db", create=True)
    ingest(store, first_events)
    ingest(store, second_events)
    rows = store.db.execute("SELECT p.id FROM procs p JOIN boots b ON b.id = p.boot "
                            "WHERE b.boot = ? AND p.pid = ?", [fork["boot"], shell.pid]).fetchall()
    assert len(rows) == 1, f"the shell is {len(rows)} processes in the store"
    (shell_id,) = rows[0]
    assert store.proc(shell_id).exit_code == 3              # the exit the second agent saw, on the one process

    (tr,) = Tracer(store).find(Query(pattern=f"{MARK}-child", limit=1))
    pids = [s.pid for s in tr.chain]
    assert shell.pid in pids and os.getpid() in pids
    assert store.proc(store.proc(shell_id).parent).pid == os.getpid()       # the shell's parent is this test
    (child,) = {s.proc for s in tr.chain if s.command.startswith("/bin/true")}
    assert store.proc(child).parent == shell_id                            # forked after the restart
