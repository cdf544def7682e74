"""Issue 17, rule 2 on the real kernel: the agent starts mid-session, so the session's shell
is first seen by /proc snapshot, detached (its parent is init) and with no audit session, and
the chain breaks there; the session begins in a process below it. The trace must join the
session's login by the audit session id the kernel gave that process (/proc/PID/sessionid),
labelled inferred. Needs root, tracefs and BCC (as test_agent_live)."""

import json
import os
import subprocess
import time

import pytest

from whodid.tracer import Query, Store, Tracer
from whodid.tracer.ingest import ingest

from test_agent_live import REASON
from kit import file_agent, stop_file_agent

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-session-{os.getpid()}"


def test_a_session_begun_before_the_agent_is_joined_by_its_audit_session_id(tmp_path):
    go, pidfile = tmp_path / "go", tmp_path / "pid"
    os.mkfifo(go)
    # before the agent: a detached shell with no audit session (its parent will be init) runs a
    # shell that begins one (root writing loginuid gets a new sessionid) and waits; released once
    # the agent runs, it forks the command, whose exec record carries no session of its own
    inner = tmp_path / "inner.sh"
    inner.write_text(f"echo $$ > {tmp_path}/top\n"
                     f"sh -c 'echo 1001 > /proc/self/loginuid && cat /proc/self/sessionid > {tmp_path}/ses "
                     f"&& echo $$ > {pidfile}; read x < {go}; /bin/true {MARK}; exit 4'\nexit 3\n")
    subprocess.run(["setsid", "sh", "-c", f"echo 4294967295 > /proc/self/loginuid; (sh {inner} &); exit 0"],
                   check=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    shell, top = int(pidfile.read_text()), int((tmp_path / "top").read_text())
    ses = int((tmp_path / "ses").read_text())
    assert int(open(f"/proc/{top}/sessionid").read()) == 4294967295
    agent = file_agent(tmp_path, "agent")                     # the session began before the agent
    try:
        with open(go, "w") as fh:
            fh.write("go\n")
        for _ in range(300):
            if not os.path.exists(f"/proc/{top}"):
                break
            time.sleep(0.05)
        time.sleep(1.0)                                        # let the last records reach the agent
    finally:
        stop_file_agent(agent)
    events = [json.loads(line) for line in (tmp_path / "agent.jsonl").read_text().splitlines()]
    (snap,) = [e for e in events if e["kind"] == "exec" and e["pid"] == top and e.get("snapshot")]
    assert snap.get("ses") in (None, 4294967295)          # the break carries no session
    (mid,) = [e for e in events if e["kind"] == "exec" and e["pid"] == shell and e.get("snapshot")]
    assert mid.get("ses") == ses                          # the shell below it does
    # the login of that session, as the auth log would have given it, before the agent ran
    login = {"v": 1, "kind": "login", "host": snap["host"], "boot": snap["boot"], "ts": snap["ts"] - 60,
             "pid": 4_000_000, "start": 1, "user": "jim", "uid": 1001, "method": "publickey",
             "raddr": "203.0.113.7", "rport": 53122, "ses": ses}
    store = Store.open(tmp_path / "whodid.db", create=True)
    ingest(store, events + [login])
    (tr,) = Tracer(store).find(Query(pattern=MARK, limit=1))
    assert tr.chain[0].login and tr.chain[0].login["ses"] == ses
    assert tr.attributed.user == "jim"
    broken = next(s for s in tr.chain if s.inferred)
    assert broken.pid == top
    assert broken.note.endswith(f"by audit session {ses} (of pid {shell})")
    assert [s.pid for s in tr.chain][-2:] == [shell, next(e["pid"] for e in events if e.get("argv") == ["/bin/true", MARK])]
