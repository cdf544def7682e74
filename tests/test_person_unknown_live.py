"""Issue 17, rule 3 on the real kernel: root, a shared account or a service is never the person.

Three detached shells start before the agent, as daemons and cron jobs do: their parent is init
and the agent first sees them in its /proc snapshot. Each sets its own audit login uid the way
the kernel gives one - unset (a service started by init), 0 (root's session, as cron gives
root's jobs), or a person's uid (their cron job) - and once the agent runs, forks a command.
The logins around them are added as the sshd log would give them: a root login open when the
shell began (the candidate), one that began after it (never a candidate), and the person's.
Needs root, tracefs and BCC (as test_agent_live); makes one user with useradd, removed after.
"""

import json
import os
import pwd
import subprocess
import time

import pytest

from whodid.tracer import Query, Store, Tracer
from whodid.tracer.ingest import ingest
from whodid.tracer.render.jsonout import trace_json
from whodid.tracer.stitch import INFERRED, PERSON_UNKNOWN, UNKNOWN

from test_agent_live import REASON
from kit import file_agent as start_agent, stop_file_agent as stop_agent

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

MARK = f"whodid-unknown-{os.getpid()}"
PERSON = f"wdu{os.getpid() % 100000}"           # unique: other test runs may share this machine
UNSET = 4294967295


def run(*argv, check=True):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    work = tmp_path_factory.mktemp("unknown")
    run("useradd", "-M", "-s", "/usr/sbin/nologin", PERSON)
    try:
        uid = pwd.getpwnam(PERSON).pw_uid
        go = work / "go"
        os.mkfifo(go)
        shells = {}
        for kind, loginuid in (("service", UNSET), ("root", 0), ("person", uid)):
            inner = work / f"{kind}.sh"
            # the shell sets its own login uid (the kernel starts a new audit session for it),
            # waits for the agent, then forks the command; `exit 3` keeps sh from exec'ing it
            inner.write_text(f"echo {loginuid} > /proc/self/loginuid || exit 9\n"
                             f"cat /proc/self/sessionid > {work}/{kind}.ses; echo $$ > {work}/{kind}.pid\n"
                             f"read x < {go}\n/bin/true {MARK}-{kind}\nexit 3\n")
            subprocess.run(["setsid", "sh", "-c", f"(sh {inner} &); exit 0"], check=True)
            for _ in range(100):
                if (work / f"{kind}.pid").exists() and (work / f"{kind}.pid").read_text().strip():
                    break
                time.sleep(0.05)
            shells[kind] = int((work / f"{kind}.pid").read_text())
            assert int(open(f"/proc/{shells[kind]}/loginuid").read()) == loginuid
        agent = start_agent(work, "agent")                 # the shells began before the agent
        try:
            with open(go, "w") as fh:                      # one line each: all three read it
                fh.write("go\ngo\ngo\n")
            for _ in range(300):
                if not any(os.path.exists(f"/proc/{pid}") for pid in shells.values()):
                    break
                time.sleep(0.05)
            time.sleep(1.0)                                # let the last records reach the agent
        finally:
            stop_agent(agent)
    finally:
        run("userdel", PERSON, check=False)
    events = [json.loads(line) for line in (work / "agent.jsonl").read_text().splitlines()]
    snaps = {kind: next(e for e in events if e["kind"] == "exec" and e["pid"] == pid and e.get("snapshot"))
             for kind, pid in shells.items()}
    root = snaps["root"]
    ses = int((work / "root.ses").read_text())

    def login(n, ts, user, uid):
        # as the sshd log would give it; a session id of its own, so none is joined by session
        return {"v": 1, "kind": "login", "host": root["host"], "boot": root["boot"], "ts": ts, "pid": 4_000_000 + n,
                "start": 1, "user": user, "uid": uid, "method": "publickey", "raddr": f"203.0.113.{n}",
                "rport": 50000 + n, "ses": ses + 1000 + n}
    logins = [login(1, root["ts"] - 60, "root", 0),         # open when root's shell began: the candidate
              login(2, root["ts"] + 0.5, "root", 0),        # began after it, while it ran: never a candidate
              login(3, root["ts"] - 30, PERSON, uid)]       # open, but another account than its login uid
    store = Store.open(work / "whodid.db", create=True)
    ingest(store, events + logins)
    return store, shells, uid, ses


def trace(store, kind):
    (tr,) = Tracer(store).find(Query(pattern=f"{MARK}-{kind}", limit=1))
    return tr


def test_a_root_service_is_person_unknown_not_root(captured):
    store, shells, _, _ = captured
    tr = trace(store, "service")
    who = tr.attributed
    assert tr.chain[0].pid == shells["service"] and tr.poi.user == "root"
    assert (who.user, who.account, who.confidence, who.candidates) == (PERSON_UNKNOWN, "root", UNKNOWN, [])
    assert "carries a login uid (a service" in who.how and "root is not a person" in who.how
    m = trace_json(tr)
    assert (m["attributed_to"]["user"], m["confidence"], m["candidates"]) == (None, "unknown", [])


def test_roots_session_without_a_login_lists_only_the_root_login_open_when_it_began(captured):
    store, shells, _, ses = captured
    tr = trace(store, "root")
    who = tr.attributed
    assert (who.user, who.account, who.confidence) == (PERSON_UNKNOWN, "root", UNKNOWN)
    assert who.how.startswith("no login recorded: the processes carry root's login uid (0)")
    (cand,) = who.candidates                            # not the later root login, not the person's
    assert (cand.account, cand.source) == ("root", "203.0.113.1")
    assert cand.evidence[0].startswith(f"open on {tr.poi.host} when pid {shells['root']} began")
    assert "loginuid 0 is this login's account (root)" in cand.evidence


def test_a_persons_login_uid_names_them_as_inferred(captured):
    store, _, uid, _ = captured
    who = trace(store, "person").attributed
    assert (who.user, who.account, who.confidence, who.candidates) == (PERSON, PERSON, INFERRED, [])
    assert who.how == f"no login recorded: the processes carry {PERSON}'s login uid ({uid})"
