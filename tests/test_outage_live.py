"""Agent outages on the real kernel, with the real agent (issue 17, rule 6).

A shell started while the first agent runs outlives it: the agent is stopped (SIGTERM, as
systemd does) or killed (SIGKILL: no clean stop, so the outage begins at its last heartbeat).
While no agent runs, the shell starts a subshell; then a second agent starts, and the subshell
and the shell each run a marked command. The traces must name the outage's range - from the
first run's stop or last heartbeat to the second run's start, as the agents marked them - and
mark inferred the links across it: the subshell (only the second agent's /proc snapshot saw
it) and the shell's command (its parent was last seen before the outage).
Needs root, tracefs and BCC (skipped without them, as tests/test_agent_live.py).
"""

import json
import os
import signal
import subprocess
import time

import pytest

from whodid.tracer import Query, Store, Tracer
from whodid.tracer.ingest import ingest
from whodid.tracer.when import clock

from kit import file_agent, stop_file_agent
from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-outage-{os.getpid()}"


def start_agent(tmp_path, name):
    return file_agent(tmp_path, name, "--heartbeat", "0.3")


def events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_marks(evs):
    return [e for e in evs if e["kind"] == "host" and "run" in e]


def traces(tmp_path, name, first, second):
    store = Store.open(tmp_path / f"{name}.db", create=True)
    ingest(store, first)
    ingest(store, second)
    tracer = Tracer(store)
    (inner,) = tracer.find(Query(pattern=f"{MARK}-inner", limit=1))
    (direct,) = tracer.find(Query(pattern=f"{MARK}-direct", limit=1))
    return inner, direct


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_chain_across_an_agent_outage_names_it_and_infers_the_links_across_it(tmp_path, how):
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    os.mkfifo(go1)
    os.mkfifo(go2)
    first = start_agent(tmp_path, "first")
    shell = None
    try:
        # `exit N` keeps each sh from exec'ing its last command in place of forking it
        shell = subprocess.Popen(["sh", "-c", f"read x < {go1}; sh -c 'read y < {go2}; /bin/true {MARK}-inner; "
                                              f"exit 4'; /bin/true {MARK}-direct; exit 3"])
        time.sleep(1.0)                                  # the fork reaches the agent, and a heartbeat goes out
    finally:
        stop_file_agent(first, how)
    with open(go1, "w") as fh:                           # no agent runs: the shell starts the subshell
        fh.write("go\n")
    time.sleep(0.5)
    second = start_agent(tmp_path, "second")
    try:
        with open(go2, "w") as fh:
            fh.write("go\n")
        assert shell.wait(timeout=30) == 3
        time.sleep(1.0)                                  # let the last records reach the agent
    finally:
        stop_file_agent(second)

    first_events, second_events = events(tmp_path / "first.jsonl"), events(tmp_path / "second.jsonl")
    # what the agents marked: the outage is from the first run's stop (or last heartbeat) to the second's start
    first_marks, second_marks = run_marks(first_events), run_marks(second_events)
    assert {e["state"] for e in first_marks} == ({"start", "alive", "stop"} if how == signal.SIGTERM
                                                 else {"start", "alive"})
    since = max(e["ts"] for e in first_marks)
    (until,) = [e["ts"] for e in second_marks if e["state"] == "start"]
    assert since < until

    inner, direct = traces(tmp_path, "whodid", first_events, second_events)
    print("\n".join(inner.notes + direct.notes)); print([(s.pid, s.command[:30], s.inferred, s.snapshot) for s in inner.chain])
    for tr in (inner, direct):
        (said,) = [n for n in tr.notes if "agent was not running" in n and "inferred" not in n]
        assert f"from {clock(since)} to {clock(until)}" in said, tr.notes
        assert ("did not stop cleanly" in said) is (how == signal.SIGKILL)
    # the subshell: started during the outage, seen only by the second agent's snapshot
    (sub,) = [s for s in inner.chain if s.pid != shell.pid and s.command.startswith("sh -c read y")]
    assert sub.snapshot and sub.inferred and "read from /proc" in sub.note
    assert shell.pid in [s.pid for s in inner.chain]                       # it still reaches its parent
    assert not inner.chain[-1].inferred                                    # forked under the second agent
    # the shell's own command: its parent was last seen before the outage
    assert direct.chain[-1].inferred and "what the parent did then was not recorded" in direct.chain[-1].note
    assert direct.chain[-2].pid == shell.pid

    # the control: the same records without the run marks (as an auditd import has none)
    bare = [[e for e in evs if not (e["kind"] == "host" and "run" in e)] for evs in (first_events, second_events)]
    inner, direct = traces(tmp_path, "bare", *bare)
    for tr in (inner, direct):
        assert not any("not running" in n for n in tr.notes)
    assert not direct.chain[-1].inferred
