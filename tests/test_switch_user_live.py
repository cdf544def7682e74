"""Issue 17, rule 7, on the real kernel: `su - ops` and `sudo -u ops` read "to ops", never "to root".

sudo and su are setuid-root programs: the kernel really runs them as root, then they switch to the
account asked for. The trace must name that account as the target, not the setuid-root step on the
way. Users are made with useradd and removed after; sudo rules go in a file of our own in
/etc/sudoers.d, removed after.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from whodid.tracer import Query, Store, Tracer
from whodid.tracer.render.jsonout import trace_json
from whodid.tracer.render.layout import layout
from whodid.tracer.render.text import render_text

from kit import LocalAgent
from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

TAG = f"{os.getpid() % 100000}"
OPS, PERSON = f"ops{TAG}", f"wdp{TAG}"        # unique names: other test runs may share this machine
MARK = f"whodid-switch-{os.getpid()}"


def run(*argv, check=True, **kw):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    work = tmp_path_factory.mktemp("switch")
    made: list[str] = []
    sudoers = Path(f"/etc/sudoers.d/whodid-switch-{TAG}")
    try:
        for user in (OPS, PERSON):
            run("useradd", "-m", "-s", "/bin/bash", user)
            made.append(user)
        sudoers.write_text(f"{PERSON} ALL=(ALL) NOPASSWD: ALL\n")
        os.chmod(sudoers, 0o440)
        db, ready = work / "agent.db", work / "ready"
        with LocalAgent(db, ready, "--auth-log", "none") as agent:
            # root becomes ops with su, as an admin does after `sudo -i`
            run("su", "-", OPS, "-c", f"echo {MARK}-bysu >/dev/null; true")
            # a person (a shell of their own, as after a login) runs sudo -u ops, and plain sudo;
            # `; true` keeps the shell from exec'ing the last command, as an interactive shell would
            as_person = ("runuser", "-u", PERSON, "--", "sh", "-c")
            run(*as_person, f"sudo -u {OPS} sh -c 'echo {MARK}-sudo-ops >/dev/null; true'; true")
            run(*as_person, f"sudo sh -c 'echo {MARK}-sudo-root >/dev/null; true'; true")
            # sudo -u ops that runs a program which records nothing further: the chain ends at sudo
            run(*as_person, f"sudo -u {OPS} true {MARK}-sudo-alone; true")
    finally:
        sudoers.unlink(missing_ok=True)
        for user in made:
            run("userdel", "-r", user, check=False)
    assert agent.returncode == 0, agent.err
    return Store.open(db)


def trace(store, pattern):
    (tr,) = Tracer(store).find(Query(pattern=pattern, limit=1))
    print(render_text(Query(pattern=pattern), [tr], time.time()))     # shown when a test fails
    return tr


def privilege(tr) -> str:
    """The How line's part after the hosts: 'su to wdp1, sudo to ops1'."""
    return tr.summary.split(", ", 1)[1] if ", " in tr.summary else ""


def everything_said(tr) -> str:
    """Every place the trace names a switch: How line, text, JSON chain and edges, picture title and labels."""
    pic = layout(tr, time.time())
    return "\n".join([render_text(Query(pattern="x"), [tr], time.time()), str(trace_json(tr)), pic.headline,
                      *[link.label or "" for link in pic.links]])


def test_su_to_ops_reads_su_to_ops(captured):
    tr = trace(captured, f"echo {MARK}-bysu")
    assert privilege(tr) == f"su to {OPS}", tr.summary
    assert tr.poi.user == OPS
    (switch,) = [s for s in tr.chain if s.edge in ("su", "sudo", "setuid")]
    assert (switch.edge, switch.user) == ("su", OPS)
    assert "to root" not in everything_said(tr)


def test_sudo_u_ops_reads_sudo_to_ops(captured):
    tr = trace(captured, f"echo {MARK}-sudo-ops")
    # runuser made the person's shell (root -> person); then sudo -u made ops: never "sudo to root"
    assert privilege(tr) == f"su to {PERSON}, sudo to {OPS}", tr.summary
    assert tr.poi.user == OPS
    sudo = [s for s in tr.chain if s.edge == "sudo"]
    assert [(s.user, s.note) for s in sudo] == [(OPS, f"{PERSON} -> {OPS} via sudo")]
    said = everything_said(tr)
    assert "to root" not in said and "-> root" not in said


def test_plain_sudo_still_reads_sudo_to_root(captured):
    tr = trace(captured, f"echo {MARK}-sudo-root")
    assert privilege(tr) == f"su to {PERSON}, sudo to root", tr.summary
    sudo = [s for s in tr.chain if s.edge == "sudo"]
    assert [(s.user, s.note) for s in sudo] == [("root", f"{PERSON} -> root via sudo")]


def test_sudo_u_ops_alone_never_names_root_as_the_target(captured):
    tr = trace(captured, f"sudo -u {OPS} true {MARK}-sudo-alone")
    assert tr.poi.program == "sudo"
    assert privilege(tr) == f"su to {PERSON}, sudo to {OPS}", tr.summary
    said = everything_said(tr)
    assert "to root" not in said and "-> root" not in said


def test_what_a_shell_started_shows_sudo_u_ops_as_sudo_to_ops(captured):
    # the person's shell matched, with what it started drawn around it: the same sudo -u, as context
    (tr,) = Tracer(captured).find(Query(pattern=f"sh -c sudo -u {OPS} sh -c", limit=1, started=True))
    steps = {n: d["step"] for n, d in tr.graph.nodes(data=True)}
    switches = [(d["kind"], steps[b].user, d["note"]) for a, b, d in tr.graph.edges(data=True)
                if not d["chain"] and d["kind"] in ("sudo", "setuid")]
    assert switches == [("sudo", OPS, f"{PERSON} -> {OPS} via sudo")]
    labels = [link.label or "" for link in layout(tr, time.time()).links]
    assert f"{PERSON} -> {OPS} via sudo" in labels and not any("-> root" in label for label in labels)
