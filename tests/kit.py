"""Hand-made events for stitching fixtures: small, explicit, one rule per scenario.

Each helper returns one schema-v1 event dict exactly as a producer would send it; a
process is (pid, start), and start defaults to pid * 1000 unless a test needs pid reuse.
"""

from __future__ import annotations

from whodid.tracer import Store, ingest

T0 = 1_700_000_000.0
NAMES = {0: "root", 1000: "ec2-user", 1001: "jim", 1002: "bob"}


class Host:
    def __init__(self, name: str, addr: str, boot: str = "boot-1"):
        self.name, self.addr, self.boot = name, addr, boot

    def _ev(self, kind: str, ts: float, **fields) -> dict:
        return {"v": 1, "kind": kind, "host": self.name, "boot": self.boot, "ts": T0 + ts, **fields}

    def fork(self, ts, pid, ppid, start=None, pstart=None):
        return self._ev("fork", ts, pid=pid, start=start or pid * 1000, ppid=ppid, pstart=pstart or ppid * 1000)

    def exec(self, ts, pid, argv, uid=0, euid=None, auid=None, ses=None, start=None, **extra):
        euid = uid if euid is None else euid
        ev = self._ev("exec", ts, pid=pid, start=start or pid * 1000, argv=argv, uid=uid, euid=euid,
                      user=NAMES.get(uid, str(uid)), euser=NAMES.get(euid, str(euid)), **extra)
        if auid is not None:
            ev.update(auid=auid, auser=NAMES.get(auid, str(auid)))
        if ses is not None:
            ev["ses"] = ses
        return ev

    def exit(self, ts, pid, code=0, start=None):
        return self._ev("exit", ts, pid=pid, start=start or pid * 1000, code=code)

    def cred(self, ts, pid, old, new, via="setresuid"):
        return self._ev("cred", ts, pid=pid, start=pid * 1000, via=via, old_uid=old, old_euid=old,
                        uid=new, euid=new, user=NAMES.get(new, str(new)), euser=NAMES.get(new, str(new)))

    def login(self, ts, pid, user, raddr, rport, key_fp=None, ses=None, laddr=None, lport=22):
        ev = self._ev("login", ts, pid=pid, start=pid * 1000, user=user, method="publickey",
                      raddr=raddr, rport=rport, laddr=laddr or self.addr, lport=lport)
        if key_fp:
            ev["key_fp"] = key_fp
        if ses is not None:
            ev["ses"] = ses
        return ev

    def connect(self, ts, pid, raddr, rport, lport, laddr=None):
        return self._ev("connect", ts, pid=pid, start=pid * 1000, laddr=laddr or self.addr, lport=lport,
                        raddr=raddr, rport=rport)

    def uconnect(self, ts, pid, path, conn, peer=None, start=None, **extra):
        """pid connects to the unix socket at path; peer = (pid, start) of its listener."""
        ev = self._ev("uconnect", ts, pid=pid, start=start or pid * 1000, path=path, conn=conn, **extra)
        if peer:
            ev.update(peer_pid=peer[0], peer_start=peer[1])
        return ev

    def uaccept(self, ts, pid, conn, peer=None, start=None, **extra):
        """pid (a server) accepts connection conn; peer = (pid, start) of its client."""
        ev = self._ev("uaccept", ts, pid=pid, start=start or pid * 1000, conn=conn, **extra)
        if peer:
            ev.update(peer_pid=peer[0], peer_start=peer[1])
        return ev

    def file(self, ts, pid, op, path, **extra):
        return self._ev("file", ts, pid=pid, start=pid * 1000, op=op, path=path, **extra)


def store_with(events, path=":memory:") -> Store:
    store = Store.open(path, create=True)
    report = ingest(store, events)
    assert report.rejected == 0, report.samples
    return store


def ssh_session(h: Host, ts: float, sshd_pid: int, user: str, uid: int, raddr: str, rport: int,
                key_fp: str | None = None, ses: int | None = None) -> list[dict]:
    """sshd listener (pid 100) -> per-connection sshd (sshd_pid, the login) -> shell (sshd_pid + 1)."""
    ses = ses if ses is not None else sshd_pid
    return [
        h.exec(0, 100, ["/usr/sbin/sshd", "-D"], snapshot=True),
        h.fork(ts, sshd_pid, 100),
        h.exec(ts + 0.01, sshd_pid, ["sshd:", user, "[priv]"]),
        h.login(ts + 0.2, sshd_pid, user, raddr, rport, key_fp=key_fp, ses=ses),
        h.fork(ts + 0.3, sshd_pid + 1, sshd_pid),
        h.exec(ts + 0.31, sshd_pid + 1, ["-bash"], uid=uid, auid=uid, ses=ses),
    ]


def copy_store(src: str, dst: str) -> None:
    """A consistent copy of a live store (a plain file copy would miss what is still in its WAL)."""
    import sqlite3
    with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
        s.backup(d)


def collector_on(path: str, hosts=("web-1", "web-2"), limits=None):
    """A running collector (127.0.0.1, a free port) on a new store at path, and an agent token
    for each host: (collector, {host: token}). The caller stops it."""
    from whodid.collector.server import Collector
    store = Store.open(path, create=True)
    tokens = {h: store.add_agent(h) for h in hosts}
    store.close()
    return Collector(path, "127.0.0.1", 0, limits=limits).start(), tokens


def shipping_agent(url: str, token: str, spool, ready, mode: str = "netlink", flush_interval: str | None = "0.2"):
    """`whodid-agent run` as host web-1 shipping to the collector at url through spool (no sshd
    log), touching ready once it captures; its stderr is piped. The caller stops it."""
    import os
    import subprocess
    import sys
    args = [sys.executable, "-m", "whodid.agent.cli", "run", "--collector", url, "--host", "web-1",
            "--auth-log", "none", "--mode", mode, "--spool", str(spool), "--ready-file", str(ready)]
    if flush_interval is not None:
        args += ["--flush-interval", flush_interval]
    return subprocess.Popen(args, env={**os.environ, "WHODID_AGENT_TOKEN": token}, stderr=subprocess.PIPE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server started in another process)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalAgent:
    """`whodid-agent run --db DB` (host "live", with args) around a block: started and waited for
    until it captures, then stopped with SIGTERM as systemd would, and killed only if it does not
    stop. After the block: `returncode`, `out` and `err` (what it printed).

        with LocalAgent(db, tmp_path / "ready") as agent:
            subprocess.run([...])
        assert agent.returncode == 0, agent.err
    """

    def __init__(self, db, ready, *args: str, settle: float = 1.0):
        self.db, self.ready, self.args, self.settle = db, ready, args, settle
        self.returncode: int | None = None
        self.out = self.err = ""

    def __enter__(self) -> "LocalAgent":
        import os
        import subprocess
        import sys
        import time
        self.proc = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--db", str(self.db),
                                      "--host", "live", "--ready-file", str(self.ready), "--flush-interval", "0.2",
                                      *self.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"the agent did not start: {self.proc.communicate()[1]}")
            time.sleep(0.1)
        return self

    def __exit__(self, exc_type, *_):
        import signal
        import subprocess
        import time
        if exc_type is None:
            time.sleep(self.settle)             # let the last records reach the agent
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.out, self.err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.returncode = self.proc.returncode


def file_agent(tmp_path, name: str, *extra: str):
    """`whodid-agent run --out <tmp_path>/<name>.jsonl` on this kernel, waited for until it
    captures (its ready file): the agent of the restart and outage tests."""
    import subprocess
    import sys
    import time
    ready = tmp_path / f"{name}.ready"
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--out", str(tmp_path / f"{name}.jsonl"),
                              "--ready-file", str(ready), "--flush-interval", "0.2", *extra, "--auth-log", "none"],
                             stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if ready.exists() or agent.poll() is not None:
            break
        time.sleep(0.1)
    assert agent.poll() is None, agent.communicate()[1]
    return agent


def stop_file_agent(agent, how=None) -> None:
    """Stop it (SIGTERM unless told) and check it ended as that signal should end it."""
    import signal
    how = signal.SIGTERM if how is None else how
    agent.send_signal(how)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == (0 if how == signal.SIGTERM else -how), err
