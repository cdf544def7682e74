"""Simulated hosts on one kernel: each in its own network, PID, mount and UTS namespaces,
with its own real sshd and its own whodid agent (scoped to its pid namespace). Used by
`whodid demo --live` and by tests/test_two_hosts.py.

    laptop (10.77.1.2) --- (10.77.1.1) host-a (10.77.0.1) --- (10.77.0.2) host-b

The laptop is only a network namespace (no agent), like a person's machine outside the
fleet; host-a forwards between the two links. Everything made is undone on exit, also
when the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAPTOP, A_OUT, A_IN, B = "10.77.1.2", "10.77.1.1", "10.77.0.1", "10.77.0.2"
USERS = ("jim", "bob", "ec2-user")
COLLECTOR_PORT = 8470
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def missing_tools() -> list[str]:
    return [t for t in ("ip", "unshare", "ssh", "ssh-keygen", "/usr/sbin/sshd", "sudo", "useradd")
            if not shutil.which(t)]


def run(*cmd: str, check: bool = True, timeout: float = 60, user: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, user=user)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


class Lab:
    def __init__(self, db: Path, fleet: bool = False):
        self.db = db
        self.fleet = fleet
        self.collector: subprocess.Popen | None = None
        self.collector_url = f"http://{A_IN}:{COLLECTOR_PORT}"
        self.tokens: dict[str, str] = {}
        self.tag = f"wd{os.getpid() % 100000}"
        self.ns = {name: f"{self.tag}-{name}" for name in ("laptop", "a", "b")}
        self.work = Path(tempfile.mkdtemp(prefix="whodid-lab-"))
        os.chmod(self.work, 0o755)                        # jim must reach his key here
        self.made_users: list[str] = []
        self.hosts: dict[str, subprocess.Popen] = {}
        self.sudoers = Path(f"/etc/sudoers.d/{self.tag}")
        self.keys: dict[str, str] = {}
        self.logs: dict[str, str] = {}

    # --- set-up -------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        try:
            self._network()
            self._users_and_keys()
            if self.fleet:
                self._start_collector()
            for host, addr in (("a", A_IN), ("b", B)):
                self._start_host(host, addr)
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _network(self) -> None:
        ns, t = self.ns, self.tag
        for name in ns.values():
            run("ip", "netns", "add", name)
        links = ((f"{t}la", "laptop", LAPTOP, f"{t}al", "a", A_OUT), (f"{t}ab", "a", A_IN, f"{t}ba", "b", B))
        for left, lns, laddr, right, rns, raddr in links:
            run("ip", "link", "add", left, "type", "veth", "peer", "name", right)
            for dev, where, addr in ((left, lns, laddr), (right, rns, raddr)):
                run("ip", "link", "set", dev, "netns", ns[where])
                run("ip", "-n", ns[where], "addr", "add", f"{addr}/24", "dev", dev)
                run("ip", "-n", ns[where], "link", "set", dev, "up")
        for name in ns.values():
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns["a"], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        run("ip", "-n", ns["laptop"], "route", "add", "10.77.0.0/24", "via", A_OUT)
        run("ip", "-n", ns["b"], "route", "add", "10.77.1.0/24", "via", A_IN)

    def _users_and_keys(self) -> None:
        for user in USERS:
            if run("id", user, check=False).returncode:
                run("useradd", "-m", "-s", "/bin/bash", user)
                self.made_users.append(user)
        self.sudoers.write_text("ec2-user ALL=(ALL) NOPASSWD: ALL\n")
        os.chmod(self.sudoers, 0o440)
        auth = self.work / "auth"
        auth.mkdir()
        for name in ("jim", "bob", "host-a", "host-b"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.work / name))
            self.keys[name] = run("ssh-keygen", "-lf", str(self.work / f"{name}.pub")).stdout.split()[1]
        pub = {n: (self.work / f"{n}.pub").read_text() for n in ("jim", "bob")}
        (auth / "jim").write_text(pub["jim"])
        (auth / "ec2-user").write_text(pub["jim"] + pub["bob"])
        # jim's key, readable by jim on host-a, for his hop to host-b
        hop = self.work / "jim-hop"
        shutil.copy(self.work / "jim", hop)
        shutil.chown(hop, "jim")
        os.chmod(hop, 0o600)
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        (bin_dir / "aws").write_text("#!/bin/sh\necho \"aws $*: pretend done\"\n")
        os.chmod(bin_dir / "aws", 0o755)
        os.makedirs("/run/sshd", exist_ok=True)

    def _start_collector(self) -> None:
        from whodid.tracer import Store
        store = Store.open(self.db, create=True)
        self.tokens = {h: store.add_agent(f"host-{h}") for h in ("a", "b")}
        store.close()
        ready = self.work / "ready-collector"
        self.collector = subprocess.Popen(
            ["ip", "netns", "exec", self.ns["a"], sys.executable, "-m", "whodid.bot.cli", "serve", "--db",
             str(self.db), "--listen", f"{A_IN}:{COLLECTOR_PORT}", "--ready-file", str(ready)],
            stderr=open(self.work / "collector.err", "w"), env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.time() + 60
        while not ready.exists():
            if self.collector.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the collector did not start: {self.collector_log()}")
            time.sleep(0.1)

    def collector_log(self) -> str:
        try:
            return (self.work / "collector.err").read_text()
        except OSError:
            return ""

    def _start_host(self, host: str, addr: str) -> None:
        w = self.work
        conf = w / f"sshd-{host}.conf"
        conf.write_text(f"ListenAddress {addr}\nPort 22\nHostKey {w}/host-{host}\nAuthorizedKeysFile {w}/auth/%u\n"
                        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM yes\nStrictModes no\n"
                        f"PidFile {w}/sshd-{host}.pid\nPermitRootLogin no\n")
        log = str(w / f"sshd-{host}.log")
        self.logs[host] = log
        # `ip netns exec` mounts a fresh /sys for the namespace, without tracefs: mount it again
        script = (f"hostname host-{host} && (mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev "
                  f"/sys/kernel/tracing) && /usr/sbin/sshd -f {conf} -E {log} && exec {sys.executable} -m "
                  f"whodid.agent.cli run {self._destination(host)} --pid-namespace self --auth-log {log} "
                  f"--ready-file {w}/ready-{host} --flush-interval 0.2 --watch {w}/watched")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.fleet:
            env["WHODID_AGENT_TOKEN"] = self.tokens[host]
        self.hosts[host] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], "unshare", "--pid", "--fork", "--mount-proc", "--uts",
             "--kill-child=SIGTERM", "sh", "-c", script],
            stderr=open(w / f"agent-{host}.err", "w"), env=env)

    def _destination(self, host: str) -> str:
        if self.fleet:
            return f"--collector {self.collector_url} --spool {self.work}/spool-{host}.db"
        return f"--db {self.db}"

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        for host in self.hosts:
            while not (self.work / f"ready-{host}").exists():
                if self.hosts[host].poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"host-{host} did not start: {self.agent_log(host)}")
                time.sleep(0.2)

    def agent_log(self, host: str) -> str:
        try:
            return (self.work / f"agent-{host}.err").read_text()
        except OSError:
            return ""

    # --- doing things -------------------------------------------------------------------

    def ssh_from_laptop(self, key: str, target: str, command: str, background: bool = False):
        cmd = ["ip", "netns", "exec", self.ns["laptop"], "ssh", "-i", str(self.work / key), *SSH_OPTS, target, command]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return run(*cmd, timeout=90)

    def hop_command(self, command: str) -> str:
        """What jim types on host-a to run `command` on host-b as ec2-user."""
        opts = " ".join(SSH_OPTS)
        return f"ssh -i {self.work}/jim-hop {opts} ec2-user@{B} '{command}'"

    # --- tear-down ----------------------------------------------------------------------

    def stop_hosts(self) -> dict[str, str]:
        """SIGTERM each host's agent (its namespace's pid 1), as systemd would stop it. unshare
        itself ignores SIGTERM while it waits, so the signal goes to its child."""
        for proc in self.hosts.values():
            if proc.poll() is None:
                for child in children(proc.pid):
                    os.kill(child, signal.SIGTERM)
        for host, proc in self.hosts.items():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs = {host: self.agent_log(host) for host in self.hosts}
        if self.collector and self.collector.poll() is None:
            self.collector.terminate()            # after the agents: it writes what they shipped last
            try:
                self.collector.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.collector.kill()
        if self.collector:
            logs["collector"] = self.collector_log()
        return logs

    def __exit__(self, *exc) -> None:
        self.stop_hosts()
        for name in self.ns.values():
            run("ip", "netns", "del", name, check=False)
        self.sudoers.unlink(missing_ok=True)
        for user in self.made_users:
            run("userdel", "-r", user, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


class Terminal:
    """Someone at a terminal on the laptop: `ssh -tt` to host-b as ec2-user with their key,
    running `command` (a tmux or screen attach); what they type goes to its stdin; closing it
    hangs up (the client exits on the hangup: detached)."""

    def __init__(self, lab: Lab, key: str, command: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns["laptop"], "ssh", "-tt", "-i", str(lab.work / key), *SSH_OPTS,
             f"ec2-user@{B}", command], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=dict(os.environ, TERM="xterm"))

    def type(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


def play_story(lab: Lab) -> dict:
    """The story of whodid's demo, for real: bob works on host-b as ec2-user with sudo while
    jim logs in to host-a and, from there, deletes the cluster on host-b as ec2-user via
    `sudo -i` (a harmless fake aws). Returns what each session printed."""
    bob = lab.ssh_from_laptop("bob", f"ec2-user@{B}",
                              f"sudo -i id; sleep 3; sudo -i {lab.work}/bin/aws eks describe-cluster --name prod",
                              background=True)
    time.sleep(1.0)
    jim = lab.ssh_from_laptop("jim", f"jim@{A_IN}", lab.hop_command(
        f"sudo -i {lab.work}/bin/aws eks delete-cluster --name prod"))
    bob_out = bob.communicate(timeout=90)[0]
    time.sleep(1.5)                                   # the agents' last flush and log lines
    return {"jim": jim, "bob": (bob.returncode, bob_out), "logs": lab.stop_hosts(), "keys": dict(lab.keys)}
