"""The record path under attack and under a full disk: what the store keeps must stay whole.

The collector runs for real (HTTP on loopback, its writer thread, the store on a file system);
the full disk is a small tmpfs, made bigger again to "free space". Hostile events are sent
by a token-holding host, as a compromised or buggy agent would.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import sys
import subprocess
import urllib.error
import urllib.request

import pytest

from whodid.collector.server import Collector, Limits
from whodid.tracer import Store

import kit
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
    return kit.collector_on(path, hosts, Limits(max_body=8 << 20, max_batch=32 << 20))


def calm_contents(path: str, batches: list[tuple[str, bytes]]) -> dict[str, list]:
    """contents() of a new store at path that took these (host, body) batches and never failed:
    what a store that went through trouble must equal once the agents have resent."""
    calm, tokens = collector_on(path)
    try:
        for host, body in batches:
            assert post(calm, body, tokens[host])[0] == 200
    finally:
        calm.stop()
    return contents(path)


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

    store = Store.open(small_disk.path / "c.db")
    assert store.check() == []
    store.close()
    assert contents(str(small_disk.path / "c.db")) == calm_contents(str(tmp_path / "calm.db"), batches)


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


# --- item 2: one bad event ---------------------------------------------------------------------------

@pytest.fixture
def collector(tmp_path):
    c, tokens = collector_on(str(tmp_path / "c.db"))
    c.tokens = tokens
    yield c
    c.stop()


def exec_line(n: int, host: str = "web-1", **fields) -> str:
    ev = {"v": 1, "kind": "exec", "host": host, "boot": "b1", "ts": T0 + n, "pid": n, "start": n,
          "argv": ["echo", str(n)], "uid": 0, "euid": 0, **fields}
    return json.dumps(ev)


HOSTILE = [   # (raw JSON line, the field named in the refusal, words of the reason)
    (exec_line(2, pid=2 ** 63), "pid", "does not fit in 64 bits"),
    (exec_line(3, auid=2 ** 64 + 5), "auid", "does not fit in 64 bits"),
    (exec_line(4, code=0).replace('"kind": "exec"', '"kind": "exit"').replace('"code": 0', f'"code": {-2 ** 63 - 1}'),
     "code", "does not fit in 64 bits"),
    (exec_line(5).replace('"pid": 5', '"pid": ' + "9" * 5000), "json", "an integer of more than 4300 digits"),
    (exec_line(17).replace('"pid": 17', '"pid": ' + "9" * 4000), "pid", "a 4000-digit number does not fit"),
    (exec_line(6, cwd="\ud800"), "cwd", "lone surrogate U+D800"),
    (exec_line(7, argv=["ls", "\udfff"]), "argv[1]", "lone surrogate U+DFFF"),
    (exec_line(8).replace(f'"ts": {T0 + 8}', '"ts": 1e400'), "ts", "finite number"),
    (exec_line(9).replace(f'"ts": {T0 + 9}', '"ts": NaN'), "ts", "finite number"),
    (exec_line(10).replace(f'"ts": {T0 + 10}', '"ts": -Infinity'), "ts", "finite number"),
    (exec_line(11).replace(f'"ts": {T0 + 11}', f'"ts": {10 ** 400}'), "ts", "finite number"),
    (exec_line(12).replace(f'"ts": {T0 + 12}', '"ts": 1e300'), "ts", "between 1970 and 9999"),
    ('{"v": 1, "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "json", "nested more than"),
    ("[" * 100_000, "json", "nested more than"),
    (exec_line(13, uid="0"), "uid", "expected an integer"),
    (exec_line(14, argv="rm -rf /"), "argv", "non-empty list"),
    (exec_line(15, pid=1.5), "pid", "expected an integer"),
    (exec_line(16, host=["web-1"]), "host", "expected a string"),
    ('"just a string"', "event", "expected a JSON object"),
]


def test_hostile_events_are_refused_one_by_one_and_the_rest_is_stored(collector):
    good = [exec_line(100 + i) for i in range(5)]
    body = "\n".join([good[0], *(raw for raw, _, _ in HOSTILE), *good[1:]]).encode() + b"\n"
    status, answer = post(collector, body, collector.tokens["web-1"])
    assert status == 200, answer
    assert answer["accepted"] == len(good) and answer["refused_count"] == len(HOSTILE)
    assert answer["refused_lines"] == list(range(2, 2 + len(HOSTILE)))
    for refusal, (_, field, words) in zip(answer["refused"], HOSTILE):
        assert refusal["field"] == field and words in refusal["error"], refusal
    assert all(len(r["error"]) < 300 for r in answer["refused"])        # a 5000-digit number is not echoed
    assert healthz(collector) == (200, healthz(collector)[1]) and healthz(collector)[1]["status"] == "ok"
    status, answer = post(collector, lines([json.loads(exec_line(200, host="web-2"))]), collector.tokens["web-2"])
    assert status == 200 and answer["accepted"] == 1                    # another host is not held up
    store = Store.open(collector.store_path)
    assert store.check() == []
    assert sorted(p for (p,) in store.db.execute("SELECT pid FROM procs")) == [100, 101, 102, 103, 104, 200]
    assert len(store.rejects(100)) == len(HOSTILE)


def test_an_event_the_store_cannot_take_fails_neither_its_group_nor_its_batch(tmp_path):
    # Validation is the first wall; this is the second. Three hosts' batches queue up before the
    # writer starts, so they go into one transaction; web-1's holds an event that reached the
    # writer without validation (a gap in events.py) with a number SQLite cannot hold.
    from whodid.collector.writer import Writer
    writer = Writer(str(tmp_path / "c.db"))
    batches = {h: story(h, 0, 20) for h in HOSTS}
    poison = {**batches["web-1"][7], "pid": 2 ** 64}
    batches["web-1"].insert(7, poison)
    futures = {h: writer.submit(h, evs, T0, None, [], list(range(1, len(evs) + 1))) for h, evs in batches.items()}
    writer.start()
    try:
        results = {h: f.result(60) for h, f in futures.items()}
    finally:
        writer.stop()
    assert [r.refused for h, r in results.items() if h != "web-1"] == [[], []]
    assert [(i, f) for i, f, _ in results["web-1"].refused] == [(7, "event")]
    assert "OverflowError" in results["web-1"].refused[0][2]
    assert results["web-1"].accepted == len(batches["web-1"]) - 1
    assert writer.error is None
    store = Store.open(tmp_path / "c.db")
    assert store.check() == []
    calm = Store.open(tmp_path / "calm.db", create=True)
    for h in HOSTS:
        calm.write([e for e in batches[h] if e is not poison])
    calm.close()
    assert contents(str(tmp_path / "c.db")) == contents(str(tmp_path / "calm.db"))
    assert [(r["host"], r["line"], r["field"]) for r in store.rejects()] == [("web-1", 8, "event")]


def test_an_argument_that_is_not_utf8_arrives_intact_from_agent_to_trace(collector, tmp_path):
    # `/bin/true $'\xff'`: the agent decodes argv with surrogateescape (agent/decode.py), the
    # spool writes the line with a \udcff escape (agent/spool.py event_line)
    from whodid.agent.ship import Shipper
    from whodid.agent.spool import Spool
    argv = [a.decode("utf-8", "surrogateescape") for a in (b"/bin/true", b"\xff", b"caf\xc3\xa9", b"\xfe/x")]
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    ev = {"v": 1, "kind": "exec", "host": "web-1", "boot": "b1", "ts": T0, "pid": 42, "start": 42, "argv": argv,
          "uid": 0, "euid": 0, "exe": "/bin/true", "cwd": "/tmp/\udcff"}
    spool.put([ev])
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=lambda m: None)
    assert shipper.ship_once() == 0 and shipper.stats.refused == 0 and spool.pending() == 0

    store = Store.open(collector.store_path)
    (image,) = store.images(store.db.execute("SELECT id FROM procs WHERE pid = 42").fetchone()[0])
    assert image.argv == argv                                          # exactly, byte for byte
    assert [a.encode("utf-8", "surrogateescape") for a in image.argv] == [b"/bin/true", b"\xff", b"caf\xc3\xa9",
                                                                          b"\xfe/x"]
    assert image.cmd == "/bin/true \\xff café \\xfe/x" and image.cwd == "/tmp/\\xff"
    assert store.check() == []

    run = lambda *extra: subprocess.run(
        [sys.executable, "-m", "whodid.bot.cli", "trace", "true", "--db", collector.store_path, "--since",
         "2000-01-01", *extra], capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""})
    out = run("--json")
    assert out.returncode == 0, out.stderr.decode()
    (match,) = json.loads(out.stdout)["matches"]
    assert match["poi"]["pid"] == 42 and match["poi"]["argv"] == argv
    out = run()
    assert out.returncode == 0, out.stderr.decode()
    assert "/bin/true \\xff café" in out.stdout.decode()


def test_ingest_keeps_the_rest_when_the_store_refuses_an_event_validation_let_through(monkeypatch):
    # local mode (whodid-agent --db, whodid ingest) goes through ingest(), not the collector's
    # writer: the same second wall must hold there
    import importlib
    ingest_mod = importlib.import_module("whodid.tracer.ingest")
    monkeypatch.setattr(ingest_mod, "parse_event", lambda obj: obj)          # a gap in validation
    events = story("web-1", 0, 10)
    events.insert(5, {**events[5], "pid": 2 ** 64})
    store = Store.open(":memory:", create=True)
    report = ingest_mod.ingest(store, events)
    assert report.rejected == 1 and report.accepted == len(events) - 1
    assert report.samples[0].position == 6 and report.samples[0].field == "event"
    assert "OverflowError" in report.samples[0].message
    assert store.check() == [] and store.counts()["execs"] == 10
