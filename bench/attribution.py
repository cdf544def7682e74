"""The attribution scenario suite (issue 17): real scenarios, played by real people's keys over
real sshd in the two-host lab (agent/lab.py) under the real agents, each with the answer whodid
must give - a person, or "person unknown" with the logins that could be behind it - and scored
from the `whodid trace --json` contract as right / honest-unknown / wrong. The target is 0 wrong.

    .venv/bin/python bench/attribution.py                 # plays the lab, writes bench/attribution-score.md

Verdicts (`verdict`, a pure function of a scenario and the JSON matches):
- right: a person is named (confidence observed or inferred) and it is the expected one; or the
  answer was expected to be unknown, it is, and its candidates are exactly the expected ones;
- honest-unknown: a person was expected, the answer says unknown and lists that person;
- wrong: anything else - another person, a shared account or root as the person, an unknown
  that leaves out the real person when the evidence pointed at them, a candidate with no
  evidence (someone who logged in later), a command not found or split into several matches,
  or a switch of user worded as another.

A candidate is scored by who holds the evidence: the person identity names, else the holder of
its ssh key (the lab knows whose key is whose; whodid, unmapped, does not), else its account.
Needs root, tracefs, BCC, sshd and sudo (as tests/test_two_hosts.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whodid.agent.lab import A_IN, B, SSH_OPTS, Lab, Terminal, children, run
from whodid.tracer import Identity, Person, Query, Store, Tracer
from whodid.tracer.render.jsonout import trace_json

RIGHT, HONEST, WRONG = "right", "honest-unknown", "wrong"
UNKNOWN = "unknown"
DETACHED_DELAY = 2.0        # seconds a detached command waits after its session ended


@dataclass(frozen=True)
class Scenario:
    name: str                           # also the marker the scenario's command carries
    rule: str                           # the issue-17 rule it shows
    what: str                           # what happened, in words
    person: str | None                  # who is behind it; None: the answer must be "person unknown"
    candidates: frozenset[str] = frozenset()   # when person is None: exactly who must be listed
    people: bool = True                 # identity.people maps the lab's keys to jim and bob
    says: str | None = None             # the How line must contain this
    never_says: str | None = None       # ... and must not contain this
    confidence: str | None = None       # the confidence a right answer has, when only one is right
    broken: bool = False                # traced in a copy of the store without its parent's fork record
    place: str = "lab"                  # "lab": the two hosts, agents in --pid-namespace self mode;
                                        # "host": this machine, its agent in the normal mode
    marker: str | None = None           # the marker, when another scenario's command is traced again


SCENARIOS = [
    Scenario("plain-sudo", "-", "jim logs in to host-a and runs a command with sudo", "jim", says="sudo to root"),
    Scenario("hop", "-", "jim hops from host-a to host-b as the shared ec2-user and uses sudo; no people "
             "configured", "jim", people=False),
    Scenario("shared-mapped", "3", "jim logs in to host-b as the shared ec2-user with his key, which "
             "identity.people maps to him", "jim"),
    Scenario("shared-unmapped", "3", "the same command, with no people configured: ec2-user is not a person",
             None, frozenset({"jim"}), people=False, marker="shared-mapped"),
    Scenario("setsid", "1", f"jim runs `setsid cmd &` and logs out; cmd runs {DETACHED_DELAY:g} s later", "jim"),
    Scenario("nohup", "1", "jim runs `nohup cmd &` and logs out", "jim"),
    Scenario("double-fork", "1", "jim runs `(cmd &)` (a double fork) and logs out", "jim"),
    Scenario("sudo-b", "1", "jim runs `sudo -b cmd` (sudo detaches it) and logs out", "jim"),
    Scenario("late-mapped", "3", "jim (as ec2-user, his key mapped) leaves a detached command on host-b "
             "and logs out; bob logs in as ec2-user before it runs", "jim"),
    Scenario("late-unmapped", "3", "the same, with no people configured: jim's login is the candidate, "
             "bob's (begun after the process) is not", None, frozenset({"jim"}), people=False,
             marker="late-mapped"),
    Scenario("sudo-u-ops", "7", "jim runs `sudo -u ops cmd`", "jim", says="sudo to {ops}", never_says="to root"),
    Scenario("su-ops", "7", "jim runs `sudo su - ops -c cmd`", "jim", says="su to {ops}"),
    Scenario("execs", "4", "one process execs `env` then the command (a shim): one match", "jim"),
    Scenario("nested-pidns", "5", "jim runs the command in a nested pid namespace (`sudo unshare --pid --fork`)",
             "jim"),
    Scenario("broken-jim", "2", "jim's command, with its parent's fork record lost (removed from the real "
             "capture): the audit session joins jim's login, inferred", "jim", confidence="inferred",
             broken=True),
    Scenario("broken-shared", "2", "the same as ec2-user (jim's key, mapped): the chain breaks below the "
             "shared account's login", "jim", confidence="inferred", broken=True),
    Scenario("normal-detached", "1", "on the host, agent in its normal mode: jim runs `setsid cmd &` and "
             "logs out", "jim", place="host"),
    Scenario("normal-unshare", "5", "on the host, agent in its normal mode: jim runs the command in a nested "
             "pid namespace", "jim", place="host"),
    Scenario("outage", "6", "on the host: jim's session waits while the agent is stopped and started "
             "again, then runs the command: the link across the outage is inferred", "jim",
             confidence="inferred", never_says="setuid", place="host"),
    Scenario("cron-shared", "3", "a job run as ec2-user with its login uid but no login (as cron does), on "
             "host-b after everyone logged out", None, frozenset(), people=False),
    Scenario("service", "3", "a root process with no login and no audit session (a service, entered with "
             "nsenter) runs the command", None, frozenset()),
    # issue 19: tmux and screen (played by _play_multiplexers)
    Scenario("tmux-attached", "19", "jim (as ec2-user) starts `tmux new -d` on host-b and logs out; bob (as "
             "ec2-user) attaches and types the command into the pane", "bob", confidence="inferred"),
    Scenario("tmux-both", "19", "jim and bob are both attached to jim's tmux session when bob types the command",
             None, frozenset({"jim", "bob"})),
    Scenario("tmux-send-keys", "19", "nobody attached to jim's tmux session; bob sends the command with "
             "`tmux send-keys`", "bob", confidence="inferred"),
    Scenario("screen-attached", "19", "jim starts `screen -dmS`; bob attaches with `screen -x` and sends the "
             "command with `screen -X stuff`", "bob", confidence="inferred"),
    # issue 19: sessions carried over an ssh master connection (ControlMaster), and ProxyJump
    Scenario("cm-jim-own", "19", "jim opens a ControlMaster on host-a to ec2-user@host-b, then runs the "
             "command over it (a mux client of his own)", "jim", confidence="inferred"),
    Scenario("cm-bob-root", "19", "bob, root on host-a by sudo, reuses jim's control socket to run the command "
             "on host-b: the master's login is jim's key", "bob", confidence="inferred", never_says="jim"),
    Scenario("cm-unmapped-bob", "19", "the same, with no people configured: bob's own login on host-a names him",
             "bob", people=False, confidence="inferred", marker="cm-bob-root"),
    Scenario("cm-bob-jump", "19", "bob, root on host-a, jumps through jim's master (`ProxyCommand=ssh -S <socket> "
             "-W %h:%p`, what -J runs) to ec2-user@host-b with his own key", "bob", confidence="inferred"),
    Scenario("cm-race-jim", "19", "jim and bob (root) ask jim's master for a session at the same moment; jim's "
             "lasts 4 s longer: the sessions' ends tell whose is whose", "jim", confidence="inferred"),
    Scenario("cm-race-bob", "19", "the same race, bob's session", "bob", confidence="inferred"),
    Scenario("cm-renamed-bob", "19", "bob, root on host-a, uses jim's socket with a renamed copy of ssh (its "
             "connect goes unrecorded, 8 s after any other request): no one may be named; the master's nearest "
             "recorded clients (jim's and bob's) and its owner are the candidates", None, frozenset({"jim", "bob"})),
    Scenario("cm-jim-j", "19", "jim, from his laptop, `ssh -J jim@host-a ec2-user@host-b` (no master): host-a's "
             "session process connects on", "jim"),
]


# Who plays each scenario (by name): jim with his key, logged in to host-a as jim or to host-b as
# the shared ec2-user; or no one (a root service on host-a).
AS_EC2_USER_ON_B = ("shared-mapped", "broken-shared", "late-mapped")     # late-mapped last: bob follows it
AS_JIM_ON_A = ("plain-sudo", "hop", "setsid", "nohup", "double-fork", "sudo-b", "sudo-u-ops", "su-ops",
               "execs", "nested-pidns", "broken-jim")
AS_ROOT_SERVICE_ON_A = ("service",)
AS_CRON_JOB_ON_B = ("cron-shared",)                                    # after bob's session ended
AS_JIM_ON_HOST = ("normal-detached", "normal-unshare")
ACROSS_AN_OUTAGE = ("outage",)
AS_JIM_AND_BOB_IN_A_MULTIPLEXER = ("tmux-attached", "tmux-both", "tmux-send-keys", "screen-attached")  # issue 19
OVER_A_SHARED_MASTER = ("cm-jim-own", "cm-bob-root", "cm-bob-jump", "cm-race-jim", "cm-race-bob",
                        "cm-renamed-bob", "cm-jim-j")                   # play_shared_master


def marker(tag: str, name: str) -> str:
    return f"{tag}-{name}"


def target(tag: str, name: str) -> str:
    """The scenario's command. Its marker is joined by printf in the shell that runs it, so it is
    in that one process's argv and in no script or shell above it."""
    return f'/bin/true "$(printf %s-%s {tag} {name})"'


def scripts(tag: str, ops: str, lab: Lab) -> dict[str, str]:
    """What each scenario's session runs (as `sh FILE`; quoting through ssh and sudo is kept out)."""
    t = lambda name: target(tag, name)                                          # noqa: E731
    later = lambda name: f"sh -c 'sleep {DETACHED_DELAY:g}; {t(name)}; true' </dev/null >/dev/null 2>&1"  # noqa: E731
    return {
        "plain-sudo": f"sudo sh -c '{t('plain-sudo')}; true'",
        "hop": f"ssh -i {lab.work}/jim-hop {' '.join(SSH_OPTS)} ec2-user@{B} sh {{dir}}/hop-b.sh",
        "hop-b": f"sudo sh -c '{t('hop')}; true'",
        "shared-mapped": f"{t('shared-mapped')}; true",
        "setsid": f"setsid {later('setsid')} &",
        "nohup": f"nohup {later('nohup')} &",
        "double-fork": f"({later('double-fork')} &)",
        "sudo-b": f"sudo -b {later('sudo-b')}",
        "late-mapped": f"setsid sh -c 'sleep 3; {t('late-mapped')}; true' </dev/null >/dev/null 2>&1 &",
        "sudo-u-ops": f"sudo -u {ops} sh -c '{t('sudo-u-ops')}; true'",
        "su-ops": f"sudo su - {ops} -c '{t('su-ops')}; true'",
        "execs": f"exec env WHODID_SHIM=1 {t('execs')}",
        "nested-pidns": f"sudo unshare --pid --fork sh -c '{t('nested-pidns')}; true'",
        # the shell at the break, and the session, live on a second: long enough for the agent to read
        # their audit session from /proc (a process gone by then has none: docs/attribution.md)
        "broken-jim": f"sh -c '{t('broken-jim')}; sleep 1'; true",
        "broken-shared": f"sh -c '{t('broken-shared')}; sleep 1'; true",
        "service": f"sh -c '{t('service')}; true'",
        "cron-shared": f"sh -c '{t('cron-shared')}; true'",
        "normal-detached": f"setsid {later('normal-detached')} &",
        "normal-unshare": f"sudo unshare --pid --fork sh -c '{t('normal-unshare')}; true'",
        # waits for the agent to be restarted ({dir}/drop is jim's to write)
        "outage": f"touch {{dir}}/drop/waiting; while [ ! -e {{dir}}/drop/go ]; do sleep 0.1; done; "
                  f"sh -c '{t('outage')}; true'; true",
    }


class Played:
    """The stores after the scenarios (by place), the lab's key fingerprints, the ops account,
    and what each agent said when it stopped."""
    def __init__(self, dbs: dict[str, Path], keys: dict[str, str], ops: str, tag: str, logs: dict[str, str],
                 restarted_at: float):
        self.dbs, self.keys, self.ops, self.tag, self.logs = dbs, keys, ops, tag, logs
        self.restarted_at = restarted_at            # when the host's second agent began to capture


def play(work: Path, tag: str | None = None) -> Played:
    """Bring the lab up, play every scenario in it, stop it, and return what it stored."""
    tag = tag or f"wdscore{os.getpid() % 100000}"
    ops = f"ops{os.getpid() % 100000}"
    db, host_db = work / "lab.db", work / "host.db"
    sdir = Path(tempfile.mkdtemp(prefix="whodid-score-"))
    os.chmod(sdir, 0o755)                             # jim, ec2-user and ops read the scripts
    sudoers = Path(f"/etc/sudoers.d/whodid-score-{os.getpid()}")
    made_ops = False
    try:
        with Lab(db) as lab:
            run("useradd", "-m", "-s", "/bin/bash", ops)
            made_ops = True
            sudoers.write_text("jim ALL=(ALL) NOPASSWD: ALL\n")
            os.chmod(sudoers, 0o440)
            for name, text in scripts(tag, ops, lab).items():
                path = sdir / f"{name}.sh"
                path.write_text(text.replace("{dir}", str(sdir)) + "\n")
                os.chmod(path, 0o755)
            sh = lambda name: f"sh {sdir}/{name}.sh"                              # noqa: E731
            for name in AS_EC2_USER_ON_B:
                lab.ssh_from_laptop("jim", f"ec2-user@{B}", sh(name))
            # jim has left a command on host-b and logged out; bob logs in to the same account
            # before it runs, and stays while it does
            time.sleep(1.0)
            bob = lab.ssh_from_laptop("bob", f"ec2-user@{B}", "sleep 4", background=True)
            for name in AS_JIM_ON_A:
                lab.ssh_from_laptop("jim", f"jim@{A_IN}", sh(name))
            for name in AS_ROOT_SERVICE_ON_A:
                _service(lab, sh(name))
            bob.communicate(timeout=60)
            time.sleep(1.0)                             # bob's sshd session has ended too
            for name in AS_CRON_JOB_ON_B:
                _cron_job(lab, "ec2-user", sh(name))
            # after the cron job: the master's login as ec2-user must not be open when it ran
            play_shared_master(lab, tag, sdir)
            time.sleep(DETACHED_DELAY + 1.5)            # the detached commands, the agents' last flush
            _play_multiplexers(lab, tag)
            logs = lab.stop_hosts()
            keys = dict(lab.keys)
            host_logs, restarted_at = _play_on_host(lab, host_db, sdir, work)
            logs.update(host_logs)
    finally:
        sudoers.unlink(missing_ok=True)
        if made_ops:
            run("userdel", "-r", ops, check=False)
        shutil.rmtree(sdir, ignore_errors=True)
    return Played({"lab": db, "host": host_db}, keys, ops, tag, logs, restarted_at)


def _play_on_host(lab: Lab, db: Path, sdir: Path, work: Path) -> tuple[dict[str, str], float]:
    """The scenarios for the agent's normal mode, on this machine: an sshd of our own on a
    loopback port (the lab's users and keys), the agent recording everything. The ssh client is
    left out of the record (`--exclude`), as a person's laptop is outside the fleet - otherwise
    the chain would go on from jim's login, through the loopback connect, to whoever ran us."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    w, log = lab.work, work / "sshd-host.log"
    conf = work / "sshd-host.conf"
    conf.write_text(f"ListenAddress 127.0.0.1:{port}\nHostKey {w}/host-a\nAuthorizedKeysFile {w}/auth/%u\n"
                    f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM yes\nStrictModes no\n"
                    f"PidFile {work}/sshd-host.pid\nPermitRootLogin no\n")
    run("/usr/sbin/sshd", "-f", str(conf), "-E", str(log))
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    as_jim = ["ssh", "-i", str(w / "jim"), "-p", str(port), *SSH_OPTS, "jim@127.0.0.1"]
    args = ("--auth-log", str(log), "--exclude", os.path.realpath(ssh))
    logs = {}
    (sdir / "drop").mkdir()
    os.chmod(sdir / "drop", 0o777)
    try:
        with Agent(db, work / "ready-host-1", args) as first:
            for name in AS_JIM_ON_HOST:
                run(*as_jim, f"sh {sdir}/{name}.sh", timeout=90)
            waiting = subprocess.Popen([*as_jim, f"sh {sdir}/outage.sh"], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            _wait_for(sdir / "drop" / "waiting", waiting)
            time.sleep(DETACHED_DELAY + 1.0)           # the detached command, the agent's last flush
        logs["host (before the outage)"] = first.err
        time.sleep(1.0)                                # the outage
        with Agent(db, work / "ready-host-2", args) as second:
            restarted_at = time.time()
            (sdir / "drop" / "go").touch()
            waiting.communicate(timeout=60)
            time.sleep(1.0)
        logs["host (after the outage)"] = second.err
    finally:
        pid = (work / "sshd-host.pid")
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
    return logs, restarted_at


def _play_multiplexers(lab: Lab, tag: str) -> None:
    """The issue-19 scenarios on host-b, after the others (their logins begin after every other
    scenario's command): sessions jim starts as ec2-user, which bob attaches to or sends keys to."""
    def as_ec2(key: str, command: str) -> None:
        lab.ssh_from_laptop(key, f"ec2-user@{B}", command)

    def until(key: str, ask: str, enough) -> None:
        """Until a read-only `ask` (no client of the command) says the attach took; asked with the
        key of who just attached: two logins at one instant may have their sshd lines joined to
        one process, which with one key changes no one's answer."""
        time.sleep(0.5)
        deadline = time.time() + 30
        while time.time() < deadline and not enough(lab.ssh_from_laptop(key, f"ec2-user@{B}", ask).stdout):
            time.sleep(0.3)

    def clients(n: int):
        return lambda out: len([ln for ln in out.splitlines() if ln.strip()]) >= n

    def tmux(sock: str, session: str, attach: tuple[str, ...], name: str) -> None:
        as_ec2("jim", f"tmux -L {sock} new -d -s {session}")
        terms: list[Terminal] = []
        try:
            for key in attach:          # one login at a time: each is joined to sshd's line by its connection
                terms.append(Terminal(lab, key, f"tmux -L {sock} attach -t {session}"))
                until(key, f"tmux -L {sock} list-clients", clients(len(terms)))
            time.sleep(1.0)
            if terms:
                terms[-1].type(target(tag, name) + "\r")
            else:
                as_ec2("bob", f"tmux -L {sock} send-keys -t {session} '{target(tag, name)}' Enter")
            time.sleep(2.0)
        finally:
            for term in terms:
                term.close()
        as_ec2("jim", f"tmux -L {sock} kill-server")

    tmux(f"{tag}a", "x", ("bob",), "tmux-attached")
    tmux(f"{tag}b", "y", ("jim", "bob"), "tmux-both")
    tmux(f"{tag}c", "z", (), "tmux-send-keys")
    screen = f"{tag}s"
    as_ec2("jim", f"screen -dmS {screen}")
    bob = Terminal(lab, "bob", f"screen -x {screen}")
    try:
        until("bob", "screen -ls || true",
              lambda out: any(f".{screen}" in ln and "Attached" in ln for ln in out.splitlines()))
        time.sleep(1.0)
        as_ec2("bob", f"screen -S {screen} -X stuff '{target(tag, 'screen-attached')}\n'")
        time.sleep(2.0)
    finally:
        bob.close()
    as_ec2("jim", f"screen -S {screen} -X quit || true")
def play_shared_master(lab: Lab, tag: str, sdir: Path) -> dict[str, str]:
    """Issue 19's ssh connection sharing in a running lab (OVER_A_SHARED_MASTER), in order: jim
    logs in to host-a and opens a master to ec2-user@host-b (`ssh -fN -o ControlMaster=yes`,
    checked with `-O check`); jim runs a command over it; bob logs in to host-a as himself and,
    root by sudo, reuses jim's socket; bob jumps through it with his own key; jim and bob ask it
    at the same moment (jim's session 4 s longer); bob uses it with a renamed copy of ssh (not
    recorded); jim, from the laptop,
    `ssh -J jim@host-a ec2-user@host-b` (no master); jim stops the master (`-O exit`). Returns
    what each printed. Each session runs a script in `sdir` (quoting through ssh and sudo kept out)."""
    w, opts = lab.work, " ".join(SSH_OPTS)
    cp = f"/tmp/cm-{tag}-%r@%h:%p"
    sock = f"/tmp/cm-{tag}-ec2-user@{B}:22"
    (w / "auth" / "bob").write_text((w / "bob.pub").read_text())     # bob may log in to host-a as bob
    bob_hop = w / "bob-hop"                                         # and, as root there, use his key
    shutil.copy(w / "bob", bob_hop)
    os.chmod(bob_hop, 0o600)
    t = lambda name: target(tag, name)                                          # noqa: E731
    xsh = f"/tmp/xsh-{tag}"
    go = sdir / "cm-go"
    wait_go = f"while [ ! -e {go} ]; do sleep 0.02; done"
    scripts = {
        "cm-master": f"ssh -i {w}/jim-hop {opts} -fN -o ControlMaster=yes -o ControlPath={cp} "
                     f"-o ControlPersist=120 ec2-user@{B} && ssh {opts} -o ControlPath={cp} -O check ec2-user@{B}",
        "cm-jim-own": f"ssh {opts} -o ControlPath={cp} ec2-user@{B} '{t('cm-jim-own')}'",
        "cm-bob-root": f"sudo ssh {opts} -o ControlPath={sock} ec2-user@{B} '{t('cm-bob-root')}'",
        "cm-bob-jump": f"sudo ssh -i {bob_hop} {opts} -o 'ProxyCommand=ssh {opts} -o ControlPath={sock} -W %h:%p "
                       f"ec2-user@{B}' ec2-user@{B} '{t('cm-bob-jump')}'",
        "cm-race-jim": f"{wait_go}; ssh {opts} -o ControlPath={cp} ec2-user@{B} '{t('cm-race-jim')}; sleep 4'",
        "cm-race-bob": f"{wait_go}; sudo ssh {opts} -o ControlPath={sock} ec2-user@{B} '{t('cm-race-bob')}'",
        # a copy of ssh under another name: the agent's comm filter does not know it, and the
        # socket's path is under no watched prefix
        "cm-renamed-bob": f"sudo sh {sdir}/cm-renamed-root.sh",
        "cm-renamed-root": f"cp /usr/bin/ssh {xsh} && {xsh} {opts} -o ControlPath={sock} ec2-user@{B} "
                           f"'{t('cm-renamed-bob')}'; rm -f {xsh}",
        "cm-exit": f"ssh {opts} -o ControlPath={cp} -O exit ec2-user@{B}",
    }
    for name, text in scripts.items():
        (sdir / f"{name}.sh").write_text(text + "\n")
    laptop = sdir / "cm-laptop.conf"                  # -J hands -F to the jump's own ssh
    laptop.write_text(f"Host *\n  IdentityFile {w}/jim\n" + "".join(
        f"  {SSH_OPTS[i + 1].replace('=', ' ')}\n" for i in range(0, len(SSH_OPTS), 2)))
    sudoers = Path(f"/etc/sudoers.d/whodid-cm-{os.getpid()}")
    sudoers.write_text("bob ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(sudoers, 0o440)
    out: dict[str, str] = {}
    try:
        for who, name in (("jim", "cm-master"), ("jim", "cm-jim-own"), ("bob", "cm-bob-root"), ("bob", "cm-bob-jump")):
            res = lab.ssh_from_laptop(who, f"{who}@{A_IN}", f"sh {sdir}/{name}.sh")
            out[name] = res.stdout + res.stderr
            time.sleep(1.0)                           # one request at a time: each pairs in its own turn
        # jim and bob at the same moment: their requests may cross (sshmux.RACE). They log in a
        # second apart (two logins from one address at once may be joined to the wrong sshd by the
        # agent's log matching, which is not what this plays), then both go at once
        racing = {}
        for who, name in (("jim", "cm-race-jim"), ("bob", "cm-race-bob")):
            racing[name] = lab.ssh_from_laptop(who, f"{who}@{A_IN}", f"sh {sdir}/{name}.sh", background=True)
            time.sleep(1.5)
        go.touch()
        for name, proc in racing.items():
            out[name] = proc.communicate(timeout=90)[0]
        time.sleep(1.0)
        time.sleep(8.0)                               # out of every earlier request's window
        res = lab.ssh_from_laptop("bob", f"bob@{A_IN}", f"sh {sdir}/cm-renamed-bob.sh")
        out["cm-renamed-bob"] = res.stdout + res.stderr
        time.sleep(1.0)
        res = run("ip", "netns", "exec", lab.ns["laptop"], "ssh", "-F", str(laptop), "-J", f"jim@{A_IN}",
                  f"ec2-user@{B}", t("cm-jim-j"), timeout=90)
        out["cm-jim-j"] = res.stdout + res.stderr
        time.sleep(1.0)
        res = lab.ssh_from_laptop("jim", f"jim@{A_IN}", f"sh {sdir}/cm-exit.sh")
        out["cm-exit"] = res.stdout + res.stderr
    finally:
        sudoers.unlink(missing_ok=True)
    return out


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the session did not start: {proc.communicate()[0] if proc.poll() is not None else ''}")
        time.sleep(0.05)


class Agent:
    """`whodid-agent run --db DB` on this machine, in its normal mode, around a block: waited for
    until it captures, stopped with SIGTERM after; `err` is what it said."""
    def __init__(self, db: Path, ready: Path, args: tuple[str, ...]):
        self.db, self.ready, self.args, self.err = db, ready, args, ""

    def __enter__(self) -> "Agent":
        self.proc = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--db", str(self.db),
                                      "--host", "live", "--ready-file", str(self.ready), "--flush-interval", "0.2",
                                      *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(self.ready, self.proc, 120)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.err = self.proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.err = self.proc.communicate()[1]


def _service(lab: Lab, command: str) -> None:
    """A root process with no login on host-a: from outside, with the login uid unset (so no audit
    session), enter host-a's namespaces and run the command - as a service manager would."""
    (init,) = children(lab.hosts["a"].pid)           # host-a's pid 1 (the agent), as we see it
    run("sh", "-c", f"echo 4294967295 > /proc/self/loginuid && exec nsenter -t {init} -p -m -u -n -- {command}")


def _cron_job(lab: Lab, user: str, command: str) -> None:
    """A job as cron runs it on host-b: its login uid set to the job's owner (a new audit
    session), no login, entered from outside host-b's namespaces."""
    (init,) = children(lab.hosts["b"].pid)
    uid = run("id", "-u", user).stdout.strip()
    run("sh", "-c", f"echo {uid} > /proc/self/loginuid && exec nsenter -t {init} -p -m -u -n -- "
                    f"runuser -u {user} -- {command}")


def cut_parent(db: Path, out: Path, mark: str) -> None:
    """A copy of the store in which the record of how the marked command's parent was forked is
    gone - as when the agent's ring buffer overflows or it was not yet running."""
    shutil.copy(db, out)
    con = sqlite3.connect(out)
    with con:
        (parent,) = con.execute("SELECT p.parent FROM procs p JOIN execs e ON e.proc = p.id "
                                "WHERE instr(e.cmd, ?)", (mark,)).fetchone()
        con.execute("UPDATE procs SET parent = NULL, parent_by_fork = 0 WHERE id = ?", (parent,))
    con.close()


def identity(keys: dict[str, str], people: bool) -> Identity:
    if not people:
        return Identity()
    return Identity(people=(Person("jim", ssh_keys=(keys["jim"],)), Person("bob", ssh_keys=(keys["bob"],))))


def answers(played: Played, work: Path) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's JSON matches, as `whodid trace --json` gives them."""
    stores = {place: Store.open(db) for place, db in played.dbs.items()}
    out = {}
    for scn in SCENARIOS:
        if scn.broken:
            cut_parent(played.dbs[scn.place], work / f"{scn.name}.db", marker(played.tag, scn.name))
            stores[scn.name] = Store.open(work / f"{scn.name}.db")
        tracer = Tracer(stores[scn.name if scn.broken else scn.place], identity(played.keys, scn.people))
        pattern = marker(played.tag, scn.marker or scn.name)
        out[scn.name] = [trace_json(tr) for tr in tracer.find(Query(pattern=pattern, limit=10))]
    for store in stores.values():
        store.close()
    return out


# --- scoring: pure ------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    scenario: str
    place: str
    rule: str
    expected: str
    got: str
    confidence: str
    verdict: str
    why: str


def holder(candidate: dict[str, Any], keys: dict[str, str]) -> str:
    """Who a candidate is: the person whodid names, else whose key it is, else its account."""
    if candidate.get("person") and candidate["person"] != candidate.get("account"):
        return candidate["person"]
    by_key = {fp: name for name, fp in keys.items()}
    return by_key.get(candidate.get("key_fp") or "", candidate.get("account") or "?")


def expected_text(scn: Scenario) -> str:
    if scn.person:
        return scn.person
    return f"unknown, candidates {{{', '.join(sorted(scn.candidates))}}}"


def verdict(scn: Scenario, matches: list[dict[str, Any]], keys: dict[str, str], ops: str = "ops") -> Row:
    def row(got: str, confidence: str, v: str, why: str) -> Row:
        return Row(scn.name, scn.place, scn.rule, expected_text(scn), got, confidence, v, why)

    if not matches:
        return row("no match", "-", WRONG, "the command was not found: it was dropped")
    m = matches[0]
    conf = m.get("confidence") or "?"
    user = m["attributed_to"]["user"]
    cands = {holder(c, keys) for c in m.get("candidates") or []}
    got = user if conf != UNKNOWN else f"unknown, candidates {{{', '.join(sorted(cands))}}}"
    if len(matches) > 1:
        return row(got, conf, WRONG, f"{len(matches)} matches for one process")
    if conf != UNKNOWN and user is None:
        return row(got, conf, WRONG, f"confidence {conf} but no person named")
    if scn.person:
        if conf == UNKNOWN:
            if scn.person in cands:
                return row(got, conf, HONEST, f"{scn.person} is among the candidates")
            return row(got, conf, WRONG, f"{scn.person} is missing from the candidates")
        if user != scn.person:
            return row(got, conf, WRONG, f"names {user}, not {scn.person}")
        says = (scn.says or "").format(ops=ops)
        if says and says not in m["summary"]:
            return row(got, conf, WRONG, f"reads `{m['summary']}`, not `{says}`")
        if scn.never_says and scn.never_says in m["summary"]:
            return row(got, conf, WRONG, f"reads `{m['summary']}`")
        if scn.confidence and conf != scn.confidence:
            return row(got, conf, WRONG, f"confidence {conf}, but a link was {scn.confidence}")
        return row(got, conf, RIGHT, conf)
    if conf != UNKNOWN:
        return row(got, conf, WRONG, f"names {user} as the person")
    missing, extra = scn.candidates - cands, cands - scn.candidates
    if missing:
        return row(got, conf, WRONG, f"{', '.join(sorted(missing))} missing from the candidates")
    if extra:
        return row(got, conf, WRONG, f"{', '.join(sorted(extra))} listed without evidence")
    return row(got, conf, RIGHT, "unknown, with the right candidates")


def score(rows: list[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in (RIGHT, HONEST, WRONG)}


def table(rows: list[Row]) -> str:
    s = score(rows)
    lines = [f"Score: {s[RIGHT]} right / {s[HONEST]} honest-unknown / {s[WRONG]} wrong "
             f"(of {len(rows)} scenarios; the target is 0 wrong)", "",
             "| scenario | where | rule | expected | got | confidence | verdict | why |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.place} | {r.rule} | {r.expected} | {r.got} | {r.confidence} | {r.verdict} | "
                     f"{r.why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "attribution-score.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="whodid-score-") as tmp:
        t0 = time.perf_counter()
        played = play(Path(tmp))
        got = answers(played, Path(tmp))
        rows = [verdict(scn, got[scn.name], played.keys, played.ops) for scn in SCENARIOS]
        took = time.perf_counter() - t0
    conditions = (f"Conditions: the two-host lab (agent/lab.py: real sshd, the real agent per host in "
                  f"`--pid-namespace self` mode) and this machine (an sshd of its own on loopback, the agent "
                  f"in its normal mode, stopped and started again for the outage), "
                  f"Linux {os.uname().release}, {os.cpu_count()} cores; "
                  f"played and scored in {took:.0f} s.")
    text = "# Attribution scenario suite: score\n\n" + table(rows) + "\n" + conditions + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 1 if score(rows)[WRONG] else 0


if __name__ == "__main__":
    sys.exit(main())
