"""tmux and screen sessions shared between people, for real (issue 19): the two-host lab
(agent/lab.py) with real sshd and the real agent on each host, which records unix-socket
connects to multiplexer sockets by default. jim and bob log in to host-b as the shared
ec2-user, each with his own key (identity.people maps the keys).

- tmux-attached: jim starts `tmux new -d` and logs out; bob attaches (`tmux attach` over
  `ssh -tt`) and types a command into the pane through his client. The command's process tree
  is jim's (the pane is a child of jim's server, in jim's audit session); the answer must be bob,
  inferred, with jim as the session's starter and bob attached.
- tmux-both: jim and bob both attached when bob types: person unknown, both candidates.
- tmux-injected: nobody attached; bob sends the command with `tmux send-keys`: bob, inferred.
- screen: jim starts `screen -dmS`; bob attaches with `screen -x` and sends the command with
  `screen -X stuff`: bob, inferred.
"""

import os
import subprocess
import time

import pytest

from whodid.agent.lab import B, Lab, Terminal, missing_tools
from whodid.tracer import Identity, Person, Query, Store, Tracer
from whodid.tracer.render.jsonout import trace_json
from whodid.tracer.sharing import ATTACHED, INJECTED, SCREEN, TMUX
from whodid.tracer.stitch import INFERRED, PERSON_UNKNOWN, UNKNOWN

from test_agent_live import REASON

MISSING = missing_tools() + [t for t in ("tmux", "screen") if subprocess.run(
    ["sh", "-c", f"command -v {t}"], capture_output=True).returncode]
pytestmark = pytest.mark.skipif(bool(REASON or MISSING), reason=f"{REASON or 'missing ' + ', '.join(MISSING)}")

SCENARIOS = ("tmux-attached", "tmux-both", "tmux-injected", "screen")


def typed(tag: str, name: str) -> str:
    """The command typed into the pane. Its marker is joined by printf in the pane's shell, so it
    is in that command's argv only, never in a client's (send-keys, stuff)."""
    return f'/bin/true "$(printf %s-%s {tag} {name})"'


def as_ec2(lab: Lab, key: str, command: str) -> str:
    res = lab.ssh_from_laptop(key, f"ec2-user@{B}", command)
    assert res.returncode == 0, res.stderr
    return res.stdout


def wait_clients(lab: Lab, key: str, ask: str, count: int, timeout: float = 30) -> None:
    """Until `ask` (a read-only client, no client of the command) prints `count` lines: the
    attaches took. Asked with the key of whoever just attached: two logins at one instant from
    the laptop may have their sshd log lines joined to one process (the agent's matcher), and
    with one key that changes no one's answer."""
    time.sleep(0.5)
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = lab.ssh_from_laptop(key, f"ec2-user@{B}", ask).stdout
        if len([line for line in out.splitlines() if line.strip()]) >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"the attach did not take: `{ask}` printed {out!r}")


def wait_screen(lab: Lab, name: str, attached: int, timeout: float = 30) -> None:
    time.sleep(0.5)
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = lab.ssh_from_laptop("bob", f"ec2-user@{B}", "screen -ls || true").stdout
        if any(f".{name}" in line and ("Attached" if attached else "Detached") in line for line in out.splitlines()):
            return
        time.sleep(0.3)
    raise AssertionError(f"screen {name} did not reach attached={attached}: {out!r}")


def play(lab: Lab, tag: str) -> None:
    # tmux-attached: jim starts and leaves; bob attaches and types
    sock = f"wd{tag}a"
    as_ec2(lab, "jim", f"tmux -L {sock} new -d -s x")
    bob = Terminal(lab, "bob", f"tmux -L {sock} attach -t x")
    try:
        wait_clients(lab, "bob", f"tmux -L {sock} list-clients", 1)
        time.sleep(1.0)                         # the read-only polls (list-clients) are no clients of it
        bob.type(typed(tag, "tmux-attached") + "\r")
        time.sleep(2.0)
    finally:
        bob.close()
    as_ec2(lab, "jim", f"tmux -L {sock} kill-server")

    # tmux-both: jim and bob attached; bob types
    sock = f"wd{tag}b"
    as_ec2(lab, "jim", f"tmux -L {sock} new -d -s y")
    jim = Terminal(lab, "jim", f"tmux -L {sock} attach -t y")
    bob = None
    try:
        # one login at a time: the agent joins each to sshd's log line by its connection
        wait_clients(lab, "jim", f"tmux -L {sock} list-clients", 1)
        bob = Terminal(lab, "bob", f"tmux -L {sock} attach -t y")
        wait_clients(lab, "bob", f"tmux -L {sock} list-clients", 2)
        time.sleep(1.0)
        bob.type(typed(tag, "tmux-both") + "\r")
        time.sleep(2.0)
    finally:
        if bob:
            bob.close()
        jim.close()
    as_ec2(lab, "jim", f"tmux -L {sock} kill-server")

    # tmux-injected: nobody attached; bob's send-keys
    sock = f"wd{tag}c"
    as_ec2(lab, "jim", f"tmux -L {sock} new -d -s z")
    time.sleep(1.0)
    as_ec2(lab, "bob", f"tmux -L {sock} send-keys -t z '{typed(tag, 'tmux-injected')}' Enter")
    time.sleep(2.0)
    as_ec2(lab, "jim", f"tmux -L {sock} kill-server")

    # screen: jim starts and leaves; bob attaches, and sends the command with -X stuff
    name = f"wd{tag}s"
    as_ec2(lab, "jim", f"screen -dmS {name}")
    bob = Terminal(lab, "bob", f"screen -x {name}")
    try:
        wait_screen(lab, name, 1)
        time.sleep(1.0)
        as_ec2(lab, "bob", f"screen -S {name} -X stuff '{typed(tag, 'screen')}\n'")
        time.sleep(2.0)
    finally:
        bob.close()
    as_ec2(lab, "jim", f"screen -S {name} -X quit || true")


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    db = tmp_path_factory.mktemp("mux") / "lab.db"
    tag = f"mx{os.getpid() % 100000}"
    with Lab(db) as lab:
        play(lab, tag)
        time.sleep(1.5)                         # the agents' last flush
        logs = lab.stop_hosts()
        keys = dict(lab.keys)
    ident = Identity(people=(Person("jim", ssh_keys=(keys["jim"],)), Person("bob", ssh_keys=(keys["bob"],))))
    store = Store.open(db)
    traces = {}
    for name in SCENARIOS:
        traces[name] = Tracer(store, ident).find(Query(pattern=f"{tag}-{name}", limit=10))
    # no people configured: ec2-user names no one, bob's key included
    unmapped = Tracer(store, Identity()).find(Query(pattern=f"{tag}-tmux-attached", limit=10))
    yield dict(traces=traces, logs=logs, store=store, tag=tag, keys=keys, unmapped=unmapped)
    store.close()


def one(lab_run, name):
    found = lab_run["traces"][name]
    assert len(found) == 1, (name, [t.poi.command for t in found], lab_run["logs"])
    tr = found[0]
    print(name, trace_json(tr))                 # what the trace said, for the record (pytest -s)
    return tr


def people(session):
    return {(c.role, c.who.user) for c in session.clients}


def test_bob_typing_in_jims_tmux_session_is_bob_inferred_not_jim(lab_run):
    tr = one(lab_run, "tmux-attached")
    assert tr.chain[0].login and tr.chain[0].login["user"] == "ec2-user"
    assert tr.attributed.user == "bob" and tr.attributed.confidence == INFERRED, tr.attributed
    assert tr.attributed.account == "ec2-user"
    (session,) = tr.shared
    assert session.kind == TMUX and session.starter.user == "jim"
    assert people(session) == {(ATTACHED, "bob")}
    assert "jim" in session.note and "bob was the only client attached" in session.note
    assert not any("typed by" in n for n in tr.notes)
    assert trace_json(tr)["attributed_to"]["user"] == "bob"


def test_jim_and_bob_both_attached_is_person_unknown_with_both(lab_run):
    tr = one(lab_run, "tmux-both")
    assert tr.attributed.user == PERSON_UNKNOWN and tr.attributed.confidence == UNKNOWN
    assert {c.person for c in tr.attributed.candidates} == {"jim", "bob"}
    (session,) = tr.shared
    assert session.starter.user == "jim" and people(session) == {(ATTACHED, "jim"), (ATTACHED, "bob")}
    # jim's two logins: the one that started the server, the one he attached from
    evidence = [e for c in tr.attributed.candidates if c.person == "jim" for e in c.evidence]
    assert any(e.startswith("started the tmux server") for e in evidence)
    assert any(e.startswith("attached to the tmux server") for e in evidence)
    bob = next(c for c in tr.attributed.candidates if c.person == "bob")
    assert bob.evidence[0].startswith("attached to the tmux server")


def test_bobs_send_keys_into_a_detached_session_is_bob_inferred(lab_run):
    tr = one(lab_run, "tmux-injected")
    assert tr.attributed.user == "bob" and tr.attributed.confidence == INFERRED, tr.attributed
    (session,) = tr.shared
    assert session.starter.user == "jim" and people(session) == {(INJECTED, "bob")}
    assert "send-keys" in session.clients[0].command


def test_bob_in_jims_screen_session_is_bob_inferred(lab_run):
    tr = one(lab_run, "screen")
    assert tr.attributed.user == "bob" and tr.attributed.confidence == INFERRED, tr.attributed
    (session,) = tr.shared
    assert session.kind == SCREEN and session.starter.user == "jim"
    assert people(session) == {(ATTACHED, "bob"), (INJECTED, "bob")}


def test_bob_alone_in_jims_session_with_no_people_configured_is_person_unknown_not_the_starter(lab_run):
    (tr,) = lab_run["unmapped"]
    print("tmux-attached (no people)", trace_json(tr))
    keys = lab_run["keys"]
    assert tr.attributed.user == PERSON_UNKNOWN and tr.attributed.confidence == UNKNOWN
    cands = {(c.account, c.key_fp, c.named) for c in tr.attributed.candidates}
    assert cands == {("ec2-user", keys["bob"], False), ("ec2-user", keys["jim"], False)}
    bob = next(c for c in tr.attributed.candidates if c.key_fp == keys["bob"])
    assert bob.evidence[0].startswith("attached to the tmux server")
    assert trace_json(tr)["attributed_to"]["user"] is None
