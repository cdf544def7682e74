"""The record path under attack and under a full disk: what the store keeps must stay whole.

The collector runs for real (HTTP on loopback, its writer thread, the store on a file system);
the full disk is a small tmpfs, made bigger again to "free space". Hostile events are sent
by a token-holding host, as a compromised or buggy agent would.
"""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from whodid.collector.server import Collector, Limits
from whodid.tracer import Store

from kit import Host, T0

HOSTS = ("web-1", "web-2", "db-1")


# --- helpers -------------------------------------------------------------------------------------

def lines(events) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in events).encode()


def post(c: Collector, body: bytes, token: str):
    conn = http.client.HTTPConnection(*c.httpd.server_address[:2], timeout=60)
    conn.request("POST", "/v1/events", body=gzip.compress(body),
                 headers={"Authorization": f"Bearer {token}", "Content-Encoding": "gzip",
                          "Content-Type": "application/x-ndjson"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def healthz(c: Collector):
    try:
        with urllib.request.urlopen(c.url + "/healthz") as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def collector_on(path: str, hosts=HOSTS) -> tuple[Collector, dict[str, str]]:
    store = Store.open(path, create=True)
    tokens = {h: store.add_agent(h) for h in hosts}
    store.close()
    return Collector(path, "127.0.0.1", 0, limits=Limits(max_body=8 << 20, max_batch=32 << 20)).start(), tokens


def contents(path: str) -> dict[str, list]:
    """Everything the store knows, by natural keys (row ids depend on arrival order), sorted.
    Left out: when batches arrived (seen_at, clocks) and the rejects log, which keeps one row
    per refusal received."""
    store = Store.open(path)
    proc = "h.name, b.boot, p.pid, p.start"
    procs_of = "JOIN procs p ON p.id = x.proc JOIN boots b ON b.id = p.boot JOIN hosts h ON h.id = b.host"
    queries = {
        "hosts": "SELECT name, first_ts, last_ts, addrs, os, agent FROM hosts",
        "boots": "SELECT h.name, b.boot FROM boots b JOIN hosts h ON h.id = b.host",
        "procs": f"SELECT {proc}, pp.pid, pp.start, p.parent_by_fork, p.parent_ts, p.fork_ts, p.exit_ts, "
                 "p.exit_code, p.exit_signal FROM procs p JOIN boots b ON b.id = p.boot "
                 "JOIN hosts h ON h.id = b.host LEFT JOIN procs pp ON pp.id = p.parent",
        "execs": f"SELECT {proc}, x.ts, x.cmd, c.cmd, x.argv, x.truncated, x.exe, x.cwd, x.uid, x.euid, x.gid, "
                 f"x.egid, x.auid, x.ses, x.tty, x.comm, x.pidns, x.container, x.snapshot FROM execs x {procs_of} "
                 "LEFT JOIN cmds c ON c.id = x.cmd_id",
        "creds": f"SELECT {proc}, x.ts, x.via, x.old_uid, x.old_euid, x.uid, x.euid, x.old_gid, x.old_egid, x.gid, "
                 f"x.egid FROM creds x {procs_of}",
        "logins": f"SELECT {proc}, x.ts, x.user, x.uid, x.method, x.key_fp, x.key_type, x.raddr, x.rport, x.laddr, "
                  f"x.lport, x.service, x.ses, x.tty FROM logins x {procs_of}",
        "conns": f"SELECT {proc}, x.ts, x.dir, x.laddr, x.lport, x.raddr, x.rport FROM conns x {procs_of}",
        "files": f"SELECT {proc}, x.ts, x.op, x.path, x.path2, x.mode, x.uid, x.gid, x.euid FROM files x {procs_of}",
        "users": "SELECT h.name, u.uid, u.name FROM users u JOIN hosts h ON h.id = u.host",
        "losses": "SELECT h.name, x.since, x.ts, x.count, x.what FROM losses x JOIN hosts h ON h.id = x.host",
        "cmds": "SELECT cmd FROM cmds",
    }
    out = {name: sorted(store.db.execute(sql).fetchall(), key=repr) for name, sql in queries.items()}
    store.close()
    return out


def story(host: str, part: int, size: int) -> list[dict]:
    """One batch of a host's activity: shells (forked from the previous batch's shell, so ids
    cached in one batch are used by the next) that log in, run commands, connect, change
    files and users, and exit."""
    h = Host(host, "10.0.0.1")
    out = []
    for i in range(size):
        n = part * size + i
        pid, parent = 10_000 + n, (10_000 + n - size if n >= size else 1)
        ts = n * 0.01
        out += [h.fork(ts, pid, parent),
                h.exec(ts + 0.001, pid, ["/bin/sh", "-c", f"deploy --step {n} " + "x" * 100], uid=1000,
                       auid=1000, ses=n % 50, cwd="/srv/app", tty="pts/1"),
                h.cred(ts + 0.002, pid, 1000, 0),
                h.connect(ts + 0.003, pid, "10.0.0.9", 5432, 30_000 + n % 30_000),
                h.file(ts + 0.004, pid, "write", f"/etc/app/{n}.conf", euid=0, euser="root"),
                h.exit(ts + 0.005, pid, code=n % 3)]
        if n % 10 == 0:
            out.append(h.login(ts + 0.0005, pid, "jim", "203.0.113.7", 40_000 + n % 20_000, ses=n % 50))
    out.append({"v": 1, "kind": "loss", "host": host, "boot": "boot-1", "ts": T0 + part, "since": T0 + part - 1,
                "count": part + 1, "what": "ring buffer full"})
    return out


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs; grow(size) frees space by making it bigger."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], check=True)

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)
    try:
        yield SimpleNamespace(path=mnt, grow=grow)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- item 1: a full disk -----------------------------------------------------------------------------

def test_a_disk_full_episode_leaves_the_store_whole_and_equal_to_one_that_never_filled(small_disk, tmp_path):
    batches = [(host, lines(story(host, part, 60))) for part in range(12) for host in HOSTS]

    full, tokens = collector_on(str(small_disk.path / "c.db"))
    try:
        statuses = [post(full, body, tokens[host])[0] for host, body in batches]
        assert 503 in statuses, f"the disk never filled: {statuses}"
        assert set(statuses) <= {200, 503}, statuses
        assert healthz(full)[0] == 503
        small_disk.grow("256m")                                    # space freed
        for host, body in batches:                                 # the agents resend what got 503
            status, answer = post(full, body, tokens[host])
            assert status == 200, answer
        assert healthz(full)[0] == 200
    finally:
        full.stop()

    calm, calm_tokens = collector_on(str(tmp_path / "calm.db"))
    try:
        for host, body in batches:
            assert post(calm, body, calm_tokens[host])[0] == 200
    finally:
        calm.stop()

    store = Store.open(small_disk.path / "c.db")
    assert store.check() == []
    store.close()
    assert contents(str(small_disk.path / "c.db")) == contents(str(tmp_path / "calm.db"))


def test_a_commit_that_fails_after_every_statement_succeeded_forgets_the_ids(tmp_path):
    # The collector's writer wraps store.write() in its own transaction (group commit), so the
    # failure can come at its COMMIT, after write() returned: here a deferred constraint of a
    # test-only table refuses the COMMIT, as a full disk does, and leaves the transaction open.
    store = Store.open(tmp_path / "s.db", create=True)
    store.db.execute("CREATE TABLE trap (host INTEGER REFERENCES hosts(id) DEFERRABLE INITIALLY DEFERRED)")
    store.db.execute("PRAGMA foreign_keys = ON")
    batch = story("web-1", 0, 50) + story("web-1", 1, 50)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        with store.transaction():
            store.write(batch)
            store.db.execute("INSERT INTO trap VALUES (12345)")
    assert not store.db.conn.in_transaction, "a failed COMMIT left the transaction open"
    store.db.execute("PRAGMA foreign_keys = OFF")
    store.write(batch)
    assert store.check() == []
    assert store.counts()["execs"] == 100 and store.db.execute(
        "SELECT count(*) FROM procs WHERE exit_ts IS NOT NULL AND fork_ts IS NOT NULL").fetchone()[0] == 100
    store.close()
    reopened = Store.open(tmp_path / "s.db")          # and it was committed, not left in a transaction
    assert reopened.counts()["execs"] == 100
