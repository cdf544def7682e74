"""The systemd units in deploy/systemd (issue 22 item 1), checked as far as a machine whose PID 1
is not systemd allows:

- `systemd-analyze verify` reads both units against this host's systemd, in a scratch root
  (--root) where /usr/bin/whodid and /usr/bin/whodid-agent are shims to this checkout's
  commands, and must say nothing at all: verify exits 0 on a misspelt setting (it only warns),
  so a warning counts as a failure, and the harness is shown to catch one.
- systemd-sysusers creates the `whodid` user from whodid.sysusers.conf, in a scratch root.
- The agent runs on the real kernel with exactly the unit's CapabilityBoundingSet (uid 0, as
  the unit runs it, through setpriv) and records what it must; with any one of those
  capabilities taken away, it loses the fact that capability is there for.

Not checked here: the sandboxing systemd itself applies (ProtectSystem=, the system call
filter, the address families) - that needs systemd as PID 1 (docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from test_agent_live import REASON

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
VENV_BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> its values in file order (systemd allows a key more than once)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def scratch_root(tmp_path: Path, units: dict[str, str]) -> Path:
    """A root holding the units, this host's own unit library (for the targets they name) and
    shims for the two commands, which run this checkout's."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    for command in ("whodid", "whodid-agent"):
        shim = root / "usr/bin" / command
        shim.write_text(f"#!/bin/sh\nexec {VENV_BIN / command} \"$@\"\n")
        shim.chmod(0o755)
    return root


def verify(root: Path, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", "--man=no", f"--root={root}", *names],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_both_units_verify_without_a_word_and_a_misspelling_would_be_caught(tmp_path):
    names = ("whodid-agent.service", "whodid-serve.service")
    root = scratch_root(tmp_path, {n: (UNITS / n).read_text() for n in names})
    for shim in ("whodid", "whodid-agent"):       # the shims are real: the commands behind them run
        assert subprocess.run([root / "usr/bin" / shim, "--help"], capture_output=True).returncode == 0
    result = verify(root, *names)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    # the same harness on the same units, each broken once the way a hand edit breaks them
    agent = (UNITS / "whodid-agent.service").read_text()
    for old, new in (("ProtectSystem=strict", "ProtectSystem=strickt"), ("NoNewPrivileges=", "NoNewPrivilege="),
                     ("@system-service bpf", "@system-servce bpf"),
                     ("/usr/bin/whodid-agent run", "/usr/bin/whodid-agentx run")):
        assert old in agent
        bad = scratch_root(tmp_path / new.split("=")[0].strip("/"), {"whodid-agent.service": agent.replace(old, new)})
        result = verify(bad, "whodid-agent.service")
        assert result.returncode != 0 or result.stdout + result.stderr, f"{new!r} went unnoticed"


def test_the_units_run_the_commands_whodid_has_with_the_hardening_promised():
    serve = unit_settings(UNITS / "whodid-serve.service")
    agent = unit_settings(UNITS / "whodid-agent.service")
    for unit in (serve, agent):
        assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"] and unit["KillSignal"] == ["SIGTERM"]
        assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
        assert unit["PrivateTmp"] == ["yes"] and unit["ConfigurationDirectory"] == ["whodid"]
        assert "@system-service" in unit["SystemCallFilter"][0].split()
        assert unit["StartLimitBurst"] and unit["TimeoutStopSec"]     # a bad config ends failed; the flush has time
    assert serve["User"] == ["whodid"] and serve["CapabilityBoundingSet"] == [""]
    assert serve["StateDirectory"] == ["whodid"] and serve["ProtectHome"] == ["yes"]
    assert "AF_PACKET" not in serve["RestrictAddressFamilies"][0]
    assert "User" not in agent and agent["StateDirectory"] == ["whodid-agent"]   # not serve's: it chowns its own
    # the options ExecStart passes exist (the commands' own --help lists them)
    for unit, command in ((serve, ["serve"]), (agent, ["run"])):
        argv = unit["ExecStart"][0].split()
        assert argv[0] in ("/usr/bin/whodid", "/usr/bin/whodid-agent") and argv[1:2] == command
        helped = subprocess.run([VENV_BIN / Path(argv[0]).name, *command, "--help"], capture_output=True,
                                text=True).stdout
        assert all(opt in helped for opt in argv[2:] if opt.startswith("--"))
    spool = agent["ExecStart"][0].split("--spool ")[1].split()[0]
    assert Path(spool).parent == Path("/var/lib") / agent["StateDirectory"][0]
    db = dict(pair.split("=", 1) for pair in serve["Environment"][0].split())
    assert Path(db["WHODID_DB"]).parent == Path("/var/lib") / serve["StateDirectory"][0]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_the_whodid_user_without_a_login(tmp_path):
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "whodid.sysusers.conf")],
                   check=True, capture_output=True, timeout=60)
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    name, _, uid, gid, _, home, shell = users["whodid"]
    assert int(uid) < 1000 and home == "/var/lib/whodid" and shell.endswith("nologin")
    assert "whodid" in (tmp_path / "etc/group").read_text()


# --- the agent's capabilities, measured on this kernel ---------------------------------------

def bounding_set() -> list[str]:
    caps = unit_settings(UNITS / "whodid-agent.service")["CapabilityBoundingSet"][0].split()
    assert caps and all(c.startswith("CAP_") for c in caps)
    return caps


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PAIR = ("import socket, sys, time\n"
        "srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen()\n"
        "cli = socket.socket(socket.AF_UNIX); cli.connect(sys.argv[1]); conn, _ = srv.accept()\n"
        "print('ok', flush=True); time.sleep(600)\n")


def agent_with(caps: list[str], tmp_path: Path) -> dict:
    """Run the agent (uid 0, these capabilities and no other) while another user's process sits
    in /tmp and holds a unix-socket connection under /tmp/tmux-*: what did it record?"""
    sockdir = Path(f"/tmp/tmux-whodid-test-{uuid.uuid4().hex[:8]}")
    sockdir.mkdir(mode=0o777)
    sockdir.chmod(0o777)
    victims = []
    try:
        pair = subprocess.Popen([*NOBODY, "/usr/bin/python3", "-c", PAIR, str(sockdir / "s")], cwd="/tmp",
                                stdout=subprocess.PIPE, text=True)
        victims.append(pair)
        assert pair.stdout.readline() == "ok\n"
        ready, out = tmp_path / "ready", tmp_path / "events.jsonl"
        bounding = ",".join(["-all", *("+" + c[4:].lower() for c in caps)])
        agent = subprocess.Popen(["setpriv", f"--bounding-set={bounding}", "--", VENV_BIN / "whodid-agent", "run",
                                  "--mode", "bpf", "--out", str(out), "--auth-log", "none", "--flush-interval", "0.2",
                                  "--ready-file", str(ready)], stderr=subprocess.PIPE, text=True)
        while not ready.exists() and agent.poll() is None:
            time.sleep(0.1)
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
        events = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        mine = [e for e in events if e.get("kind") == "exec" and e.get("pid") == pair.pid]
        return {"returncode": agent.returncode, "err": err, "victim": mine[0] if mine else None,
                "unix": [e for e in events if e.get("kind") in ("uconnect", "uaccept")
                         and e.get("path", "").startswith(str(sockdir))]}
    finally:
        for v in victims:
            v.kill()
            v.wait()
        shutil.rmtree(sockdir, ignore_errors=True)


needs_bpf = pytest.mark.skipif(REASON is not None or shutil.which("setpriv") is None
                               or not os.path.exists("/usr/bin/python3"),
                               reason=f"BPF capture or setpriv unavailable: {REASON}")


@needs_bpf
def test_the_agent_records_everything_with_only_the_units_capabilities(tmp_path):
    seen = agent_with(bounding_set(), tmp_path)
    assert seen["returncode"] == 0, seen["err"]
    assert seen["victim"]["cwd"] == "/tmp" and seen["victim"]["exe"].endswith("python3.11") \
        and seen["victim"]["pidns"], seen["victim"]
    assert {e["kind"] for e in seen["unix"]} == {"uconnect", "uaccept"}
    assert "naming connects from the DNS answers" in seen["err"]


# what each capability of the unit is there for: without it, this is lost
LOST = {
    # its ring buffer is the first BPF object it makes (agent/capture.py, make_ring)
    "CAP_BPF": lambda s: s["returncode"] == 1 and "could not make the BPF ring buffer" in s["err"]
    and "needs root, or CAP_BPF and CAP_PERFMON" in s["err"],
    "CAP_PERFMON": lambda s: s["returncode"] == 1 and "could not load the BPF program" in s["err"],
    "CAP_SYS_PTRACE": lambda s: s["returncode"] == 0 and s["victim"].get("cwd") is None,
    "CAP_DAC_READ_SEARCH": lambda s: s["returncode"] == 0 and s["victim"]["cwd"] == "/tmp" and not s["unix"],
    "CAP_NET_RAW": lambda s: s["returncode"] == 0 and "cannot read DNS answers" in s["err"],
}


@needs_bpf
@pytest.mark.parametrize("cap", sorted(LOST))
def test_each_capability_of_the_agent_unit_is_needed(cap, tmp_path):
    assert set(LOST) == set(bounding_set())          # a capability added to the unit must say why here
    seen = agent_with([c for c in bounding_set() if c != cap], tmp_path)
    assert LOST[cap](seen), (seen["returncode"], seen["err"], seen["victim"], seen["unix"])


# --- the system calls and socket families the daemons use, against the units' filters -------
# systemd enforces SystemCallFilter= and RestrictAddressFamilies= with seccomp; without systemd
# as PID 1 the filter cannot be installed, but what the daemons call can be watched (strace)
# and compared with what the unit lets through. This covers the paths a test drives (start,
# capture or a batch, /healthz, /metrics, SIGTERM), not every path.

STRACE = shutil.which("strace")


def syscall_group(name: str) -> set[str]:
    text = subprocess.run([ANALYZE, "syscall-filter", name], capture_output=True, text=True, check=True).stdout
    out: set[str] = set()
    for line in text.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            out |= syscall_group(line) if line.startswith("@") else {line}
    return out


def allowed_syscalls(unit: dict[str, list[str]]) -> set[str]:
    """The set the unit's SystemCallFilter= lines leave, read as systemd reads them: allow
    lists add up, a line starting with ~ takes away."""
    allowed: set[str] = set()
    for line in unit["SystemCallFilter"]:
        deny = line.startswith("~")
        names = set().union(*(syscall_group(n) if n.startswith("@") else {n} for n in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def strace_calls(trace: Path, command: str) -> str:
    """An `strace -f` log from the exec of command on, one whole call a line: strace splits a
    call another thread interrupted into `<unfinished ...>` and `<... resumed>` halves, and a
    pattern reading across the split would pair one call's path with the next call's flags."""
    import re
    text = trace.read_text()
    text = text[text.index(f'execve("{VENV_BIN / command}"'):]
    pending: dict[str, str] = {}
    lines = []
    for line in text.splitlines():
        if m := re.match(r"^(\d+)\s+(.*) <unfinished \.\.\.>$", line):
            pending[m[1]] = f"{m[1]}  {m[2]}"
        elif (m := re.match(r"^(\d+)\s+<\.\.\. [a-z_0-9]+ resumed>(.*)$", line)) and m[1] in pending:
            lines.append(pending.pop(m[1]) + m[2])
        else:
            lines.append(line)
    return "\n".join(lines + list(pending.values()))


def traced(trace: Path, command: str) -> tuple[set[str], set[str]]:
    """(system calls made, socket families opened) in an `strace -f` log, from the exec of
    command on (before it, setpriv drops the capabilities: systemd's part)."""
    import re
    text = strace_calls(trace, command)
    return set(re.findall(r"^\d+\s+([a-z_0-9]+)\(", text, re.M)), set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", text))


def written(trace: Path, command: str) -> set[str]:
    """The paths command created, wrote, renamed or removed, as strace shows them: under
    ProtectSystem=strict, anything outside the state directory and /tmp fails."""
    import re
    text = strace_calls(trace, command)
    out = set(re.findall(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)", [^)\n]*O_(?:WRONLY|RDWR|CREAT)[^)\n]*\) = \d', text))
    for call in ("rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat"):
        for args in re.findall(rf"^\d+\s+{call}\(([^)\n]*)\) = 0", text, re.M):
            out.update(re.findall(r'"([^"]+)"', args))
    return {p if p.startswith("/") else str(ROOT / p) for p in out}   # relative: to the test's cwd


def test_written_pairs_a_split_call_with_its_own_flags(tmp_path):
    """Two threads: strace splits one's read-only open around the other's write. The CI run of
    2026-12-01 read /…/tracer/retention.py as written, pairing its path with the next line's O_RDWR."""
    trace = tmp_path / "trace"
    trace.write_text(f'100 execve("{VENV_BIN / "whodid"}", ["whodid"], 0x0 /* 1 vars */) = 0\n'
                     '101 openat(AT_FDCWD, "/srv/code/retention.py", O_RDONLY|O_CLOEXEC <unfinished ...>\n'
                     '102 openat(AT_FDCWD, "/state/s.db-wal", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0644) = 5\n'
                     '101 <... openat resumed>) = 6\n'
                     '102 openat(AT_FDCWD, "/state/split", O_WRONLY|O_CREAT <unfinished ...>\n'
                     '101 rename("/state/a", "/state/b" <unfinished ...>\n'
                     '102 <... openat resumed>, 0600) = 7\n'
                     '101 <... rename resumed>) = 0\n')
    assert written(trace, "whodid") == {"/state/s.db-wal", "/state/split", "/state/a", "/state/b"}
    assert traced(trace, "whodid")[0] == {"openat", "rename"}    # execve: the log is read from it on


needs_strace = pytest.mark.skipif(ANALYZE is None or STRACE is None or shutil.which("setpriv") is None,
                                  reason="systemd-analyze, strace or setpriv is not installed")


@needs_strace
def test_serve_stays_inside_its_units_system_call_filter_and_address_families(tmp_path):
    from kit import free_port
    unit = unit_settings(UNITS / "whodid-serve.service")
    config = tmp_path / "config.yaml"
    port, web = free_port(), free_port()
    config.write_text(f"slack:\n  mode: \"off\"\nweb:\n  listen: 127.0.0.1:{web}\n")
    trace, ready = tmp_path / "trace", tmp_path / "ready"
    # CapabilityBoundingSet= (empty): not one capability
    serve = subprocess.Popen([STRACE, "-f", "-qq", "-o", str(trace), "setpriv", "--bounding-set=-all", "--",
                              VENV_BIN / "whodid", "serve", "--config", str(config), "--db", str(tmp_path / "s.db"),
                              "--listen", f"127.0.0.1:{port}", "--ready-file", str(ready)],
                             stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists() and serve.poll() is None:
            time.sleep(0.1)
        assert serve.poll() is None, serve.communicate()[1]
        import urllib.request
        for path in ("/healthz", "/metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
                assert resp.status == 200
        os.kill(int(ready.read_text().split()[0]), signal.SIGTERM)
        _, err = serve.communicate(timeout=120)
        assert "stopped;" in err, err
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    calls, families = traced(trace, "whodid")
    # SQLite calls fchown() only when its euid is 0, as here (this test cannot run serve as
    # another user: the virtualenv lives under /root); the unit runs serve as `whodid`
    outside = calls - allowed_syscalls(unit) - {"fchown"}
    assert not outside, f"serve calls {sorted(outside)}, which its unit's SystemCallFilter= refuses"
    assert families and families <= set(unit["RestrictAddressFamilies"][0].split())
    # ProtectSystem=strict: it writes into its state directory (tmp_path stands for it) alone
    outside = {p for p in written(trace, "whodid") if not p.startswith(str(tmp_path) + "/") and p != "/dev/null"}
    assert written(trace, "whodid") and not outside, sorted(outside)


@needs_strace
@needs_bpf
def test_the_agent_stays_inside_its_units_system_call_filter_and_address_families(tmp_path):
    unit = unit_settings(UNITS / "whodid-agent.service")
    trace, ready = tmp_path / "trace", tmp_path / "ready"
    bounding = ",".join(["-all", *("+" + c[4:].lower() for c in bounding_set())])
    agent = subprocess.Popen([STRACE, "-f", "-qq", "-o", str(trace), "setpriv", f"--bounding-set={bounding}", "--",
                              VENV_BIN / "whodid-agent", "run", "--mode", "bpf", "--out", str(tmp_path / "ev.jsonl"),
                              "--auth-log", "none", "--flush-interval", "0.2", "--ready-file", str(ready)],
                             stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists() and agent.poll() is None:
            time.sleep(0.1)
        assert agent.poll() is None, agent.communicate()[1]
        socket.getaddrinfo("localhost", 22)              # something for it to see
        subprocess.run(["/bin/true"], check=True)
        os.kill(int(ready.read_text()), signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
        assert "stopped;" in err, err
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    calls, families = traced(trace, "whodid-agent")
    outside = calls - allowed_syscalls(unit)
    assert not outside, f"the agent calls {sorted(outside)}, which its unit's SystemCallFilter= refuses"
    assert {"bpf", "perf_event_open"} <= calls                       # the two the unit adds, in use
    assert "AF_PACKET" in families and families <= set(unit["RestrictAddressFamilies"][0].split())
    outside = {p for p in written(trace, "whodid-agent") if not p.startswith(str(tmp_path) + "/") and p != "/dev/null"}
    assert written(trace, "whodid-agent") and not outside, sorted(outside)


def test_deploy_md_names_the_units_capabilities_and_tests_that_exist():
    import fnmatch
    import re
    doc = (ROOT / "docs" / "deploy.md").read_text()
    table = set(re.findall(r"^\| `(CAP_[A-Z_]+)` \|", doc, re.M))
    assert table == set(bounding_set())                      # the table explains exactly the unit's set

    def defined(module: str) -> list[str]:
        return re.findall(r"^def (test_\w+)", (ROOT / "tests" / module).read_text(), re.M)

    named = re.findall(r"`tests/(test_\w+\.py)(?:::([\w*]+))?`", doc)
    assert named
    for module, test in named:
        assert not test or fnmatch.filter(defined(module), test), f"{module}::{test}"
    for test in re.findall(r"`::([\w*]+)`", doc):            # `::name` continues test_units.py's row
        assert fnmatch.filter(defined("test_units.py"), test), test
