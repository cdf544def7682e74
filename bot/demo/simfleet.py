"""A simulated fleet that emits schema-v1 events, the way agents on real hosts would.

Used by `whodid demo` and by tests and benchmarks that need a realistic store. It models
what the stitching relies on - sshd's per-connection processes, the client's connect
4-tuple, sudo's setuid exec and setresuid, audit login uids and session ids, pid reuse -
and nothing about the answer: the trace engine has to find it like it would on real hosts.
"""

from __future__ import annotations

import base64
import hashlib
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

AUID_UNSET = 4294967295


def key_fingerprint(owner: str) -> str:
    digest = hashlib.sha256(f"ssh-ed25519 key of {owner}".encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass
class SimProc:
    host: "SimHost"
    pid: int
    start: int
    uid: int
    euid: int
    auid: int = AUID_UNSET
    ses: int | None = None
    cwd: str = "/"
    tty: str | None = None
    argv: list[str] = field(default_factory=list)


class SimHost:
    """One machine: pid allocation, users, and the events its agent would ship."""

    def __init__(self, name: str, addr: str, boot_ts: float, rng: random.Random, pid_max: int = 32768):
        self.name, self.addr, self.boot_ts = name, addr, boot_ts
        self.rng = rng
        self.boot = str(uuid.UUID(int=rng.getrandbits(128)))
        self.pid_max = pid_max
        self.next_pid = rng.randint(2000, 5000)
        self.next_ses = 1
        self.users: dict[int, str] = {0: "root"}
        self.events: list[dict[str, Any]] = []
        self.emit("host", boot_ts, addrs=[addr], os="Debian GNU/Linux 12", agent="simfleet")
        self.init = self._proc(None, boot_ts, 0, 0, pid=1)
        self.exec(self.init, boot_ts + 0.01, ["/sbin/init"], snapshot=True)

    def add_user(self, uid: int, name: str) -> None:
        self.users[uid] = name

    def emit(self, kind: str, ts: float, **fields) -> None:
        self.events.append({"v": 1, "kind": kind, "host": self.name, "boot": self.boot, "ts": round(ts, 6),
                            **fields})

    def _ids(self, p: SimProc) -> dict[str, int]:
        return {"pid": p.pid, "start": p.start}

    def _alloc_pid(self) -> int:
        pid = self.next_pid
        self.next_pid = pid + 1 if pid + 1 < self.pid_max else 300
        return pid

    def _proc(self, parent: SimProc | None, ts: float, uid: int, euid: int, pid: int | None = None) -> SimProc:
        start = int((ts - self.boot_ts) * 1e9)
        p = SimProc(self, pid or self._alloc_pid(), start, uid, euid)
        if parent is not None:
            p.auid, p.ses, p.cwd, p.tty, p.argv = parent.auid, parent.ses, parent.cwd, parent.tty, parent.argv
        return p

    # --- process life ---------------------------------------------------------------------

    def fork(self, parent: SimProc, ts: float) -> SimProc:
        child = self._proc(parent, ts, parent.uid, parent.euid)
        self.emit("fork", ts, **self._ids(child), ppid=parent.pid, pstart=parent.start)
        return child

    def exec(self, p: SimProc, ts: float, argv: list[str], *, euid: int | None = None,
             snapshot: bool = False, exe: str | None = None) -> SimProc:
        if euid is not None:
            p.euid = euid
        p.argv = argv
        ev: dict[str, Any] = dict(**self._ids(p), argv=argv, exe=exe or _exe(argv[0]), cwd=p.cwd, uid=p.uid,
                                  euid=p.euid, gid=p.uid, egid=p.euid, comm=_exe(argv[0]).rsplit("/", 1)[-1][:15],
                                  user=self.users.get(p.uid, str(p.uid)), euser=self.users.get(p.euid, str(p.euid)))
        if p.auid != AUID_UNSET:
            ev.update(auid=p.auid, auser=self.users.get(p.auid, str(p.auid)))
        if p.ses is not None:
            ev["ses"] = p.ses
        if p.tty:
            ev["tty"] = p.tty
        if snapshot:
            ev["snapshot"] = True
        self.emit("exec", ts, **ev)
        return p

    def spawn(self, parent: SimProc, ts: float, argv: list[str], *, duration: float | None = 0.2,
              euid: int | None = None, code: int = 0) -> SimProc:
        """fork + exec (+ exit after `duration`, unless None: still running)."""
        child = self.fork(parent, ts)
        self.exec(child, ts + 0.0007, argv, euid=euid)
        if duration is not None:
            self.exit(child, ts + duration, code)
        return child

    def exit(self, p: SimProc, ts: float, code: int = 0) -> None:
        self.emit("exit", ts, **self._ids(p), code=code)

    def setuid(self, p: SimProc, ts: float, uid: int, via: str = "setresuid") -> None:
        self.emit("cred", ts, **self._ids(p), via=via, old_uid=p.uid, old_euid=p.euid, uid=uid, euid=uid,
                  old_user=self.users[p.uid], old_euser=self.users[p.euid], user=self.users[uid],
                  euser=self.users[uid])
        p.uid = p.euid = uid

    def daemon(self, ts: float, argv: list[str], uid: int = 0) -> SimProc:
        """A long-running service already there when the agent started (a /proc snapshot)."""
        p = self._proc(self.init, ts, uid, uid)
        self.emit("fork", ts, **self._ids(p), ppid=1, pstart=self.init.start)
        self.exec(p, ts + 0.001, argv, snapshot=True)
        return p

    def file(self, p: SimProc, ts: float, op: str, path: str, **extra) -> None:
        self.emit("file", ts, **self._ids(p), op=op, path=path, euid=p.euid,
                  euser=self.users.get(p.euid, str(p.euid)), **extra)

    # --- network ----------------------------------------------------------------------------

    def connect(self, p: SimProc, ts: float, raddr: str, rport: int, rname: str | None = None) -> int:
        """p connects to raddr:rport; rname is the name the host's DNS answer gave the address."""
        lport = self.rng.randint(32768, 60999)
        self.emit("connect", ts, **self._ids(p), laddr=self.addr, lport=lport, raddr=raddr, rport=rport,
                  **({"rname": rname} if rname else {}))
        return lport


    def unix_connect(self, client: SimProc, server: SimProc, ts: float, path: str) -> None:
        """client connects to server's unix socket at path, and server accepts: a tmux client
        attaching, an ssh client asking its master (the agent's uconnect + uaccept). Its end is
        the client's exit."""
        conn = f"{self.rng.getrandbits(48):x}-{int(ts * 1e9)}"
        self.emit("uconnect", ts, **self._ids(client), path=path, conn=conn, peer_pid=server.pid,
                  peer_start=server.start, peer_uid=server.uid)
        self.emit("uaccept", ts + 0.0002, **self._ids(server), conn=conn, path=path, peer_pid=client.pid,
                  peer_start=client.start, peer_uid=client.uid)


class SimFleet:
    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.hosts: dict[str, SimHost] = {}

    def add_host(self, name: str, addr: str, boot_ts: float) -> SimHost:
        h = SimHost(name, addr, boot_ts, self.rng)
        h.sshd = h.daemon(boot_ts + 5, ["/usr/sbin/sshd", "-D"])
        h.cron = h.daemon(boot_ts + 6, ["/usr/sbin/cron", "-f"])
        self.hosts[name] = h
        return h

    def ssh_login(self, server: SimHost, ts: float, account: str, *, raddr: str, rport: int,
                  key_fp: str | None, method: str = "publickey") -> SimProc:
        """sshd's side of a login, as OpenSSH 9 on Debian does it; returns the login shell."""
        uid = next(u for u, n in server.users.items() if n == account)
        listener = server.sshd
        server.emit("accept", ts, **server._ids(listener), laddr=server.addr, lport=22, raddr=raddr, rport=rport)
        priv = server.fork(listener, ts + 0.001)
        server.exec(priv, ts + 0.002, ["sshd:", f"{account}", "[priv]"], exe="/usr/sbin/sshd")
        ses = server.next_ses
        server.next_ses += 1
        priv.auid, priv.ses = uid, ses
        login: dict[str, Any] = dict(pid=priv.pid, start=priv.start, user=account, uid=uid, method=method,
                                     raddr=raddr, rport=rport, laddr=server.addr, lport=22, ses=ses,
                                     service="sshd")
        if key_fp:
            login.update(key_fp=key_fp, key_type="ED25519")
        server.emit("login", ts + 0.3, **login)
        user_proc = server.fork(priv, ts + 0.31)
        server.setuid(user_proc, ts + 0.312, uid)
        user_proc.tty = f"pts/{self.rng.randint(0, 9)}"
        user_proc.cwd = "/root" if uid == 0 else f"/home/{account}"
        shell = server.fork(user_proc, ts + 0.32)
        server.exec(shell, ts + 0.321, ["-bash"], exe="/usr/bin/bash")
        return shell

    def ssh_hop(self, client_shell: SimProc, ts: float, server: SimHost, account: str,
                key_fp: str | None, argv: list[str] | None = None) -> tuple[SimProc, SimProc]:
        """Run ssh in a shell on one host and log in on another: (ssh process, remote shell)."""
        client = client_shell.host
        ssh = client.spawn(client_shell, ts, argv or ["ssh", f"{account}@{server.name}"], duration=None)
        lport = client.connect(ssh, ts + 0.05, server.addr, 22)
        shell = self.ssh_login(server, ts + 0.06, account, raddr=client.addr, rport=lport, key_fp=key_fp)
        return ssh, shell

    def sudo_shell(self, shell: SimProc, ts: float, argv: list[str]) -> SimProc:
        """`sudo -i` or `sudo su -` in a shell: returns root's shell."""
        host = shell.host
        sudo = host.spawn(shell, ts, argv, duration=None, euid=0)
        host.setuid(sudo, ts + 0.01, 0)
        if argv[1:2] == ["su"]:
            su = host.spawn(sudo, ts + 0.02, argv[1:], duration=None)
            root = host.spawn(su, ts + 0.03, ["-bash"], duration=None)
        else:
            root = host.spawn(sudo, ts + 0.02, ["-bash"], duration=None)
        root.cwd = "/root"
        return root

    def events(self) -> list[dict[str, Any]]:
        return [ev for h in self.hosts.values() for ev in h.events]


def _exe(argv0: str) -> str:
    name = argv0.lstrip("-")
    if name.startswith("/"):
        return name
    return f"/usr/bin/{name}"
