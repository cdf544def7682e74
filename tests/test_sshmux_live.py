"""ssh connection sharing for real (issue 19, item 3): the two-host lab (agent/lab.py: real sshd,
the real agent per host), jim's ControlMaster on host-a to ec2-user@host-b, and who used it.

- jim logs in to host-a and starts a master (`ssh -fN -o ControlMaster=yes ... ec2-user@host-b`);
- jim runs a command on host-b over his master (a mux client of his own): jim;
- bob logs in to host-a as bob, becomes root with sudo and reuses jim's control socket to run a
  command on host-b: bob (INFERRED) - never jim, never "corroborated";
- bob, as root on host-a, jumps through jim's master to ec2-user@host-b with his own key
  (`ProxyCommand=ssh -S <jim's socket> -W %h:%p`, what `ssh -J` runs): bob;
- jim and bob ask the master at the same moment (jim's session lasts 4 s longer): each his own;
- bob uses jim's socket with a renamed copy of ssh (its connect goes unrecorded): person unknown;
- jim, from his laptop, `ssh -J jim@host-a ec2-user@host-b` (no master): jim, as before;
- in a lab of its own, jim's plain `ssh -N -L PORT:host-b:22` on host-a, through which bob and
  then jim log in to ec2-user@host-b: bob (INFERRED), never "corroborated"; then jim.

Run under the lab lock (`flock /work/lab.lock .venv/bin/python -m pytest tests/test_sshmux_live.py`):
another run of the lab makes the same users. Needs root, tracefs, BCC, sshd and sudo.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from whodid.agent.lab import Lab, missing_tools
from whodid.tracer import Identity, Person, Query, Store, Tracer
from whodid.tracer.sharing import ASKED, SSH_MASTER
from whodid.tracer.stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN

from test_agent_live import REASON

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from attribution import play_shared_master  # noqa: E402  (the scenario suite plays the same)

MISSING = missing_tools()
pytestmark = pytest.mark.skipif(bool(REASON or MISSING), reason=f"{REASON or 'missing ' + ', '.join(MISSING)}")


def play_in_a_lab(db: Path, tag: str, play) -> dict:
    """Bring a lab up, run `play(lab, tag, scripts dir)`, stop it: the store, the lab's keys and
    people (jim's and bob's keys mapped), what each step printed and what the agents said."""
    sdir = Path(tempfile.mkdtemp(prefix=f"whodid-{tag}-"))
    os.chmod(sdir, 0o755)                             # jim and bob read the scripts
    try:
        with Lab(db) as lab:
            out = play(lab, tag, sdir)
            time.sleep(1.5)                           # the agents' last flush
            logs = lab.stop_hosts()
            keys = dict(lab.keys)
    finally:
        shutil.rmtree(sdir, ignore_errors=True)
    ident = Identity(people=(Person("jim", ssh_keys=(keys["jim"],)), Person("bob", ssh_keys=(keys["bob"],))))
    return dict(store=Store.open(db), tag=tag, keys=keys, ident=ident, out=out, logs=logs)


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    return play_in_a_lab(tmp_path_factory.mktemp("cm") / "lab.db", f"cm{os.getpid() % 100000}", play_shared_master)


def traced(played, name: str, ident: Identity | None = None):
    tracer = Tracer(played["store"], ident if ident is not None else played["ident"])
    (tr,) = tracer.find(Query(pattern=f"{played['tag']}-{name}", limit=10))
    return tr


def said(tr) -> str:
    """Everything the trace says in words, to look for a word that must never be said."""
    who = tr.attributed
    return "\n".join([who.how, *who.notes, *tr.notes, *(s.note or "" for s in tr.chain)])


def test_the_master_ran_and_the_agents_lost_nothing(played):
    assert "Master running" in played["out"]["cm-master"], played["out"]
    for host, log in played["logs"].items():
        assert "stopped;" in log and "0 records lost" in log, log


def test_jims_own_command_over_his_master_is_jims(played):
    tr = traced(played, "cm-jim-own")
    who = tr.attributed
    assert (who.user, who.confidence) == ("jim", INFERRED), (who, tr.chain)
    (shared,) = tr.shared
    assert shared.kind == SSH_MASTER and shared.host == "host-a"
    assert shared.starter.user == "jim"
    (client,) = shared.clients
    assert client.role == ASKED and client.host == "host-a" and client.who.user == "jim"
    assert "asked for by jim's ssh" in said(tr)


def test_bob_reusing_jims_master_as_root_is_bob_never_jim_never_corroborated(played):
    tr = traced(played, "cm-bob-root")
    who = tr.attributed
    assert who.user == "bob" and who.confidence == INFERRED, (who, tr.chain)
    assert "jim" != who.user and "corroborated" not in said(tr), said(tr)
    assert not any(n.startswith("conflict") for n in [*who.notes, *tr.notes]), said(tr)
    (shared,) = tr.shared
    assert (shared.kind, shared.starter.user) == (SSH_MASTER, "jim")
    (client,) = shared.clients
    assert client.role == ASKED and client.who.user == "bob"
    assert f"over jim's master connection (pid {shared.pid} on host-a), asked for by bob's ssh (pid {client.pid})" \
        in said(tr), said(tr)
    # the chain goes on from bob's own login on host-a, through his sudo, to the mux client
    assert tr.chain[0].login and tr.chain[0].login["user"] == "bob" and tr.chain[0].host == "host-a"
    assert any(s.edge == "sudo" and s.host == "host-a" for s in tr.chain)


def test_without_people_bob_as_root_over_jims_master_is_still_bob(played):
    # bob logged in to an account of his own: his login names him without a people map
    tr = traced(played, "cm-bob-root", Identity())
    assert tr.attributed.user == "bob" and "corroborated" not in said(tr)


def test_bob_jumping_through_jims_master_is_bob(played):
    tr = traced(played, "cm-bob-jump")
    who = tr.attributed
    assert who.user == "bob" and who.confidence == INFERRED, (who, tr.chain)
    assert "conflict" not in said(tr)
    (shared,) = tr.shared
    assert shared.starter.user == "jim" and [c.who.user for c in shared.clients] == ["bob"]
    # the last login is bob's own, with his key: host-b -> host-b through the master's connect
    assert tr.chain[-1].host == "host-b"


def test_plain_proxyjump_without_a_master_is_jims_as_before(played):
    tr = traced(played, "cm-jim-j")
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", OBSERVED) and tr.shared == [], tr.attributed
    assert [s.host for s in tr.chain if s.edge in ("login", "ssh")] == ["host-a", "host-b"]


@pytest.mark.parametrize("name, person, other", [("cm-race-jim", "jim", "bob"), ("cm-race-bob", "bob", "jim")])
def test_jim_and_bob_asking_at_the_same_moment_each_get_their_own(played, name, person, other):
    # their connects may be less than sshmux.RACE apart: the order alone would not say whose
    # channel came first; the sessions' ends (jim's 4 s longer) do
    tr = traced(played, name)
    who = tr.attributed
    assert (who.user, who.confidence) == (person, INFERRED), (who, [c.__dict__ for c in tr.shared[0].clients])
    assert "corroborated" not in said(tr)


def test_bob_with_a_renamed_ssh_is_never_named_and_jim_is_never_the_answer(played):
    # the agent keeps unix connects by the client's comm (ssh) or a watched path: a renamed copy
    # of ssh on an unwatched ControlPath is not recorded. The channel then pairs with no client:
    # person unknown, never jim (whose master it was) and never "corroborated"
    tr = traced(played, "cm-renamed-bob")
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    assert "corroborated" not in said(tr) and "no client's request pairs with this channel" in who.how
    assert "started the master connection" in who.candidates[-1].evidence[0] and who.candidates[-1].person == "jim"
    # the master's clients nearest in time are offered - bob's earlier ones among them - with what they did
    assert {c.person for c in who.candidates[:-1]} == {"jim", "bob"}
    assert all("used the master's control socket" in c.evidence[0] for c in who.candidates[:-1])


# --- a port forward (ssh -L) used by another person ---------------------------------------------
# jim, on host-a, runs a plain `ssh -N -L PORT:host-b:22 ec2-user@host-b` (his key); bob,
# on host-a as himself, logs in to ec2-user@host-b through jim's forward with his own key
# (`ssh -p PORT ec2-user@127.0.0.1`); then jim does the same with his. On host-b each second login
# is made by the session process of jim's forward's login (a direct-tcpip channel).

def play_forward(lab, tag: str, sdir: Path) -> dict[str, str]:
    from whodid.agent.lab import A_IN, B, SSH_OPTS
    w, opts = lab.work, " ".join(SSH_OPTS)
    port = 20000 + os.getpid() % 10000
    (w / "auth" / "bob").write_text((w / "bob.pub").read_text())     # bob may log in to host-a as bob
    bob_key = sdir / "bob-key"                       # bob's own key, readable by bob on host-a
    shutil.copy(w / "bob", bob_key)
    os.chmod(bob_key, 0o600)
    shutil.chown(bob_key, "bob")
    mark = lambda name: f'/bin/true "$(printf %s-%s {tag} {name})"'                  # noqa: E731
    scripts = {
        # in a session of its own (the lab's sshd ends an `ssh -f` with jim's login), for a minute
        "fwd-start": f"setsid timeout 60 ssh -i {w}/jim-hop {opts} -N -o ExitOnForwardFailure=yes "
                     f"-L {port}:{B}:22 ec2-user@{B} </dev/null >/dev/null 2>&1 & sleep 2",
        "fwd-bob": f"ssh -i {bob_key} {opts} -p {port} ec2-user@127.0.0.1 '{mark('fwd-bob')}'",
        "fwd-jim-own": f"ssh -i {w}/jim-hop {opts} -p {port} ec2-user@127.0.0.1 '{mark('fwd-jim-own')}'",
    }
    for name, text in scripts.items():
        (sdir / f"{name}.sh").write_text(text + "\n")
    out = {}
    for who, name in (("jim", "fwd-start"), ("bob", "fwd-bob"), ("jim", "fwd-jim-own")):
        res = lab.ssh_from_laptop(who, f"{who}@{A_IN}", f"sh {sdir}/{name}.sh")
        out[name] = res.stdout + res.stderr
        time.sleep(9.0 if name != "fwd-start" else 1.0)    # out of each other's window (mux_rtt + mux_skew)
    return out


@pytest.fixture(scope="module")
def forwarded(tmp_path_factory):
    return play_in_a_lab(tmp_path_factory.mktemp("fwd") / "lab.db", f"fw{os.getpid() % 100000}", play_forward)


def test_bob_through_jims_L_forward_is_bob_never_jim_never_corroborated(forwarded):
    from whodid.tracer.sharing import SSH_FORWARD, USED
    tr = traced(forwarded, "fwd-bob")
    who = tr.attributed
    assert (who.user, who.confidence) == ("bob", INFERRED), (who, tr.chain, forwarded["out"])
    assert "corroborated" not in said(tr) and "conflict" not in said(tr), said(tr)
    (shared,) = tr.shared
    assert (shared.kind, shared.host, shared.starter.user) == (SSH_FORWARD, "host-a", "jim")
    (client,) = shared.clients
    assert (client.role, client.host, client.who.user) == (USED, "host-a", "bob")
    assert f"through jim's ssh -L {shared.path.split(':')[1]}:" in said(tr)


def test_jims_own_use_of_his_forward_is_jims(forwarded):
    tr = traced(forwarded, "fwd-jim-own")
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", INFERRED), (tr.attributed, tr.chain)
    assert [c.who.user for c in tr.shared[0].clients] == ["jim"]
