"""The record path attacked where the first round of hardening did not look: the agent's own
disk filling under its spool, a spool damaged at start, and the collector killed mid-write.

Each test reproduces one way an event was lost, doubled or stuck, or a daemon died: real
spools on real (tmpfs) filesystems, real collectors over loopback, the real agent process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from whodid.agent.ship import Shipper
from whodid.agent.spool import Spool
from whodid.tracer import Store

from kit import collector_on, free_port, shipping_agent

T0 = 1_700_000_000.0


def ev(i: int, host: str = "web-1", **fields) -> dict:
    return {"v": 1, "kind": "exec", "host": host, "boot": "b1", "ts": T0 + i, "pid": 1000 + i, "start": i,
            "argv": ["echo", "x" * 200, str(i)], "uid": 0, "euid": 0, **fields}


@pytest.fixture
def collector(tmp_path):
    c, c.tokens = collector_on(str(tmp_path / "c.db"))
    yield c
    c.stop()


def fill(spool: Spool) -> int:
    """Put events until the disk under the spool is full; returns the last index tried."""
    i = 0
    while spool.put([ev(i + j) for j in range(100)]):
        i += 100
    return i + 100


def stored_pids(db: str) -> list[int]:
    store = Store.open(db)
    try:
        return sorted(p for (p,) in store.db.execute("SELECT p.pid FROM execs e JOIN procs p ON p.id = e.proc"))
    finally:
        store.close()


# --- the agent's disk fills ---------------------------------------------------------------------

def test_a_full_disk_under_the_spool_does_not_kill_shipping(collector, small_disk):
    # Deleting acknowledged events from a full spool needs room in its write-ahead log: that
    # failed with SQLITE_FULL out of ship_once, the shipping thread died, and the agent went on
    # capturing into a spool nobody would ever ship again.
    spool = Spool(small_disk.path / "spool.db", host="web-1", boot="b1")
    last = fill(spool)
    waiting = spool.pending()
    said = []
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], batch_events=500, log=said.append)
    stop = threading.Event()
    thread = threading.Thread(target=shipper.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive(), "the shipping thread died on a full spool"
        assert said and "disk full" in said[0] and str(spool.path) in said[0]
        small_disk.grow("16m")                      # space comes back
        while spool.pending() and time.monotonic() < deadline:
            stop.wait(0.1)
        assert thread.is_alive() and spool.pending() == 0
    finally:
        shipper.wake(stop)
        thread.join(30)
    # everything that reached the spool is stored once; what never did was counted (next test)
    assert stored_pids(collector.store_path) == [1000 + i for i in range(waiting)]
    assert last > waiting


def test_events_dropped_because_the_disk_was_full_reach_the_collector_as_a_loss(small_disk):
    # The count of events dropped on a full disk was written to the spool's `dropped` table -
    # on the same full disk - so it was never reported: traces over that window said nothing.
    spool = Spool(small_disk.path / "spool.db", host="web-1", boot="b1")
    fill(spool)
    filler = small_disk.path / "filler"          # the last free block goes too (another process's log)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    assert spool.put([ev(i) for i in range(50_000, 50_100)]) == 0
    assert spool.dropped_total == 200
    filler.unlink()
    small_disk.grow("16m")
    spool.report_drops()
    losses = [json.loads(line) for _, line in spool.peek(100000, 1 << 30) if b'"loss"' in line]
    assert [(x["count"], x["since"], x["ts"]) for x in losses] == [(200, losses[0]["since"], losses[0]["ts"])]
    assert losses[0]["since"] <= losses[0]["ts"] and "not writable" in losses[0]["what"]
    spool.report_drops()                              # reported once, not again
    assert sum(b'"loss"' in line for _, line in spool.peek(100000, 1 << 30)) == 1


# --- a damaged spool at start -------------------------------------------------------------------

def damaged_spool(path) -> None:
    """A spool with events whose pages were then overwritten (a disk error, a bad copy)."""
    spool = Spool(path, host="web-1", boot="b1")
    spool.put([ev(i) for i in range(3000)])
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    spool.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        for page in range(3, size // 4096, 7):
            fh.seek(page * 4096)
            fh.write(b"\xa5" * 4096)


@pytest.mark.parametrize("damage", ["pages", "header"])
def test_a_damaged_spool_is_set_aside_and_capture_goes_on(collector, tmp_path, damage):
    # A spool with damaged pages crashed the agent at start with a traceback (the size query sat
    # outside the open's error handling), and one that was not a database stopped it with exit
    # 2: restarted by systemd, it failed the same way for ever, capturing nothing.
    spool_path = tmp_path / "spool.db"
    if damage == "pages":
        damaged_spool(spool_path)
    else:
        spool_path.write_bytes(b"\x00garbage" * 1000)
    ready = tmp_path / "ready"
    agent = shipping_agent(collector.url, collector.tokens["web-1"], spool_path, ready)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.poll() is None, agent.stderr.read().decode()
        # a shell that stays while netlink mode reads its argv from /proc (a /bin/true can be
        # gone by then, and recorded without its arguments); its extra argument is $0
        mark = ["/bin/sh", "-c", "sleep 0.5", f"damaged-spool-{damage}-{os.getpid()}"]
        subprocess.run(mark, check=True)
        while time.monotonic() < deadline and not Store.open(collector.store_path).search_commands(
                mark[3], glob=False, since=None, until=None, host_glob=None, limit=1):
            time.sleep(0.1)
    finally:
        agent.send_signal(signal.SIGTERM)
        err = agent.communicate(timeout=60)[1].decode()
    assert agent.returncode == 0, err
    assert "Traceback" not in err
    aside = [p for p in os.listdir(tmp_path) if p.startswith("spool.db.damaged-")]
    assert len(aside) == 1 and f"set aside as {tmp_path / aside[0]}" in err, err
    assert Store.open(collector.store_path).search_commands(mark[3], glob=False, since=None, until=None,
                                                            host_glob=None, limit=1)


# --- stopping while the collector hangs -------------------------------------------------------

@pytest.fixture
def hung_collector():
    """A collector that accepts connections and never answers (hung, or behind a broken proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_sigterm_with_a_hung_collector_stops_within_the_grace_and_keeps_the_spool(hung_collector, collector,
                                                                                 tmp_path):
    # The shipper's request to a collector that never answers held SIGTERM for its 30 s timeout,
    # then the drain sent one more with the same timeout: a minute to stop, with capture already
    # stopped, so a restart lost a minute of events. Stopping now takes the 5 s grace, and what
    # was not delivered is shipped by the next start.
    ready, spool = tmp_path / "ready", tmp_path / "spool.db"
    env = {**os.environ, "WHODID_AGENT_TOKEN": collector.tokens["web-1"]}
    agent = shipping_agent(hung_collector, collector.tokens["web-1"], spool, ready)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)                                 # the first batch is in flight, unanswered
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(20)                           # the grace is 5 s; the request timeout 30 s
    finally:
        if agent.poll() is None:
            agent.kill()
    err = agent.stderr.read().decode()
    assert code == 0 and "Traceback" not in err, err
    assert "did not answer" in err and "whodid-agent: stopped" in err
    waiting = sqlite3.connect(spool).execute("SELECT count(*) FROM events").fetchone()[0]
    assert waiting > 0
    # the next start ships them: nothing was lost
    out = subprocess.run([sys.executable, "-m", "whodid.agent.cli", "forward", "--collector", collector.url,
                          "--spool", str(spool)], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert sqlite3.connect(spool).execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert Store.open(collector.store_path).counts_by_host()["web-1"].get("exec", 0) + \
        Store.open(collector.store_path).counts_by_host()["web-1"].get("fork", 0) > 0


# --- the collector: a full disk while a poison event is being isolated ---------------------------

@pytest.mark.parametrize("room_kib", [40, 48, 64, 96, 128, 160, 200, 256, 320, 400])
def test_a_disk_that_fills_while_a_poison_batch_is_isolated_loses_and_doubles_nothing(tmp_path, room_kib):
    # The group holding a poison event fails and is written again batch by batch, each poison
    # batch split in halves, every part its own transaction; here the disk fills somewhere in
    # that (where depends on room_kib). The batches that failed are resent whole, as agents do.
    # After that the store must equal one that never filled and never saw the poison, pass its
    # checks, and hold the poison's refusal once.
    from test_abuse_store import HOSTS, contents, story
    from whodid.collector.writer import Writer
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        db = str(mnt / "c.db")
        Store.open(db, create=True).close()
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        with open(mnt / "filler", "wb") as fh:
            fh.write(b"\0" * max(0, free - room_kib * 1024))
        batches = {h: story(h, 0, 40) for h in HOSTS}
        poison = {**batches["web-2"][11], "pid": 2 ** 64}          # past validation, as a gap would let it
        batches["web-2"].insert(11, poison)
        writer = Writer(db)
        lines = {h: list(range(1, len(evs) + 1)) for h, evs in batches.items()}
        futures = {h: writer.submit(h, evs, T0, None, [], lines[h]) for h, evs in batches.items()}
        writer.start()
        try:
            results = {}
            for h, fut in futures.items():
                try:
                    results[h] = fut.result(60)
                except Exception as exc:
                    results[h] = exc
            (mnt / "filler").unlink()                               # space freed
            for h, res in results.items():
                if isinstance(res, Exception):                      # the agent resends the batch whole
                    results[h] = writer.submit(h, batches[h], T0, None, [], lines[h]).result(60)
        finally:
            writer.stop()
        assert [(i, f) for i, f, _ in results["web-2"].refused] == [(11, "event")]
        assert all(r.refused == [] for h, r in results.items() if h != "web-2")
        store = Store.open(db)
        assert store.check() == []
        assert [(r["host"], r["line"]) for r in store.rejects()] == [("web-2", 12)]
        store.close()
        calm = Store.open(tmp_path / "calm.db", create=True)
        for h in HOSTS:
            calm.write([e for e in batches[h] if e is not poison])
        calm.close()
        assert contents(db) == contents(str(tmp_path / "calm.db"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- the collector killed mid-write ----------------------------------------------------------------

def test_a_collector_killed_mid_group_commit_recovers_and_the_resent_batches_equal_a_calm_store(tmp_path):
    # kill -9 while three hosts post at once (group commits under way), then a new collector on
    # the same store: SQLite's write-ahead log drops the unfinished transaction, the new
    # process's id caches start empty, and the agents resend what was not acknowledged.
    from test_abuse_store import HOSTS, contents, lines, post, story
    db, ready = str(tmp_path / "c.db"), tmp_path / "ready"
    store = Store.open(db, create=True)
    tokens = {h: store.add_agent(h) for h in HOSTS}
    store.close()
    batches = [(h, lines(story(h, part, 30))) for part in range(10) for h in HOSTS]
    port = free_port()
    config = tmp_path / "whodid.yaml"                # the collector alone: no Slack, no trace pages
    config.write_text("slack:\n  mode: \"off\"\nweb:\n  listen: \"off\"\n")
    env = {**os.environ, "WHODID_CONFIG": str(config)}
    serve = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "serve", "--db", db, "--listen",
                              f"127.0.0.1:{port}", "--ready-file", str(ready)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert serve.poll() is None and time.monotonic() < deadline, serve.stderr.read().decode()
            time.sleep(0.05)
        remote = SimpleNamespace(httpd=SimpleNamespace(server_address=("127.0.0.1", port)))
        acked: set[int] = set()

        def agent(host):
            for n, (h, body) in enumerate(batches):
                if h == host:
                    try:
                        if post(remote, body, tokens[h])[0] == 200:
                            acked.add(n)
                    except OSError:
                        return
        agents = [threading.Thread(target=agent, args=(h,)) for h in HOSTS]
        for t in agents:
            t.start()
        while len(acked) < 6:                         # mid-stream, with batches in flight
            time.sleep(0.005)
        serve.kill()
        for t in agents:
            t.join(60)
    finally:
        if serve.poll() is None:
            serve.kill()
        serve.wait()
    assert len(acked) < len(batches), "every batch went in before the kill"
    from test_abuse_store import calm_contents, collector_on
    again, _ = collector_on(db, hosts=())
    try:
        for n, (h, body) in enumerate(batches):       # what was not acknowledged, sent again
            if n not in acked:
                assert post(again, body, tokens[h])[0] == 200
    finally:
        again.stop()
    store = Store.open(db)
    assert store.check() == []
    store.close()
    assert contents(db) == calm_contents(str(tmp_path / "calm.db"), batches)


# --- /healthz while the writer is wedged ------------------------------------------------------------

def test_healthz_says_failing_while_the_writer_is_wedged_and_ok_once_it_writes_again(collector):
    # Another process holds the store's write lock (a long `whodid db vacuum`, a hung disk
    # behaves alike): the writer waits inside a group commit, agents' requests time out, and
    # /healthz answered 200 "ok" all along - it only looked at the last error and the thread.
    from test_abuse_store import healthz, lines, post
    collector.writer.stalled_after = 1.0                 # 90 s in service; the test need not wait that
    other = sqlite3.connect(collector.store_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    answer = {}
    sender = threading.Thread(target=lambda: answer.update(r=post(collector, lines([ev(1)]),
                                                                  collector.tokens["web-1"])))
    sender.start()
    try:
        deadline = time.monotonic() + 25                 # SQLite gives up its wait for the lock at 30 s
        status, body = healthz(collector)
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            status, body = healthz(collector)
    finally:
        other.execute("ROLLBACK")
        other.close()
    sender.join(60)
    assert status == 503 and any("writer has been on one write" in p for p in body["problems"]), body
    assert answer["r"][0] == 200                         # the batch went in once the lock was free
    assert healthz(collector)[0] == 200


# --- a host's clock set back ---------------------------------------------------------------------

@pytest.mark.xfail(strict=True, reason="retention compares each event's time on its host's clock with the "
                   "horizon; the store keeps no arrival time per row, so events from a host whose clock was "
                   "set back past the horizon are pruned at the next retention run, minutes after they arrived "
                   "(a root user can hide commands this way; needs an arrival time per process, a migration)")
def test_events_from_a_host_whose_clock_was_set_back_survive_the_next_retention_run(collector):
    # root on web-1 runs `date -s 'last year'`, then the commands to hide; the agent ships them at
    # once (the collector even measures the year of offset), and the next prune removes them.
    import http.client
    import gzip
    now = time.time()
    back = 365 * 86400
    events = [{"v": 1, "kind": "fork", "host": "web-1", "boot": "b1", "ts": now - back, "pid": 4242, "start": 7,
               "ppid": 1, "pstart": 1},
              {**ev(0), "ts": now - back + 1, "pid": 4242, "start": 7, "argv": ["rm", "-rf", "/var/log/audit"]},
              {"v": 1, "kind": "exit", "host": "web-1", "boot": "b1", "ts": now - back + 2, "pid": 4242,
               "start": 7, "code": 0}]
    conn = http.client.HTTPConnection(*collector.httpd.server_address[:2], timeout=60)
    conn.request("POST", "/v1/events", body=gzip.compress("".join(json.dumps(e) + "\n" for e in events).encode()),
                 headers={"Authorization": f"Bearer {collector.tokens['web-1']}", "Content-Encoding": "gzip",
                          "X-Whodid-Clock": f"offset={back:.6f} error=0.001"})
    assert conn.getresponse().status == 200
    conn.close()
    collector.writer.call(lambda store: store.prune(now - 30 * 86400, now)).result(60)
    assert stored_pids(collector.store_path) == [4242]


# --- commands longer than the schema holds ----------------------------------------------------------

@pytest.mark.parametrize("mode", ["netlink", "bpf"])
def test_a_command_with_more_arguments_than_the_schema_holds_is_recorded_cut_not_refused(collector, tmp_path,
                                                                                      mode):
    # `xargs rm` with thousands of names, a JVM's 20 kB classpath, or padding on purpose: the
    # agent read the whole argv from /proc (always in netlink mode, when the kernel could not in
    # BPF mode, and for the processes running at start) and shipped it; the collector refused the
    # event (more than 1024 arguments, or one longer than 8192 characters), so the command was
    # nowhere in the store - anyone could hide a command from whodid by padding its arguments.
    mark = f"pad-{mode}-{os.getpid()}"
    spool, ready = tmp_path / "spool.db", tmp_path / "ready"
    agent = shipping_agent(collector.url, collector.tokens["web-1"], spool, ready, mode=mode)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert agent.poll() is None and time.monotonic() < deadline, agent.stderr.read().decode()
            time.sleep(0.05)
        # a shell that stays while /proc is read; its extra arguments are $0, $1...
        many = subprocess.Popen(["/bin/sh", "-c", "sleep 2; true", mark + "-many", *["1"] * 2000])
        long = subprocess.Popen(["/bin/sh", "-c", "sleep 2; true", mark + "-long", "c" * 20_000])
        many.wait(), long.wait()
        found = {}
        while time.monotonic() < deadline and len(found) < 2:
            store = Store.open(collector.store_path)
            for which in ("many", "long"):
                hit = store.search_commands(f"{mark}-{which}", glob=False, since=None, until=None, host_glob=None,
                                            limit=1)
                if hit:
                    found[which] = hit[0][1]
            store.close()
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        err = agent.communicate(timeout=60)[1].decode()
    assert set(found) == {"many", "long"}, err[-2000:]
    assert found["many"].argv[:4] == ["/bin/sh", "-c", "sleep 2; true", mark + "-many"]
    assert len(found["many"].argv) <= 1024
    assert found["long"].argv[:4] == ["/bin/sh", "-c", "sleep 2; true", mark + "-long"]
    assert all(len(a) <= 8192 for a in found["long"].argv)


def test_import_audit_records_a_command_with_more_arguments_than_the_schema_holds(tmp_path):
    from test_audit import execve
    log = tmp_path / "audit.log"
    log.write_text("\n".join(execve(10, 500, 1, ["rm", "-f", *[f"/srv/f{i}" for i in range(2000)]])) + "\n")
    db = tmp_path / "s.db"
    out = subprocess.run([sys.executable, "-m", "whodid.bot.cli", "import-audit", str(log), "--host", "web-1",
                          "--db", str(db)], capture_output=True, env={**os.environ, "WHODID_CONFIG": "/dev/null"})
    assert out.returncode == 0, out.stderr.decode()
    hits = Store.open(db).search_commands("/srv/f1", glob=False, since=None, until=None, host_glob=None, limit=1)
    assert hits and hits[0][1].argv[:3] == ["rm", "-f", "/srv/f0"]


# --- what is set aside has a bound too -------------------------------------------------------------

def test_events_set_aside_count_against_the_spools_cap(collector, tmp_path):
    # A host renamed after its token was made (or an agent given another host's token): the
    # collector refuses every event ("this agent's token is for host ..."), and the shipper sets
    # each aside in the spool's `refused` table - which counted against no cap, so the table grew
    # at the capture rate until the disk was full and the spool stopped taking anything.
    cap = 200_000
    spool = Spool(tmp_path / "spool.db", max_bytes=cap, host="web-1", boot="b1")
    shipper = Shipper(spool, collector.url, collector.tokens["web-2"], log=lambda m: None)
    for round_ in range(20):                                 # ~1.3 MB of events, shipped as they come
        spool.put([ev(round_ * 200 + i) for i in range(200)])
        while shipper.ship_once() == 0:
            pass
    kept = spool.db.execute("SELECT coalesce(sum(length(line)), 0), count(*) FROM refused").fetchone()
    assert spool.pending() == 0 and shipper.stats.set_aside == 4000
    assert kept[0] <= cap, f"the refused table holds {kept[0]} bytes, past the spool's cap of {cap}"
    assert kept[1] > 0                                       # the newest are kept for people to look at
    newest = json.loads(spool.db.execute("SELECT line FROM refused ORDER BY seq DESC LIMIT 1").fetchone()[0])
    assert newest["pid"] == 1000 + 3999


# --- the same batch twice at once --------------------------------------------------------------------

def test_the_same_batch_sent_at_once_on_several_connections_is_stored_once(collector, tmp_path):
    # An agent that timed out and resent while its first request was still being written, many
    # times over: the copies land in one group commit or in consecutive ones. Facts are stored
    # once; `new` is counted once in all.
    from test_abuse_store import contents, lines, post, story
    body = lines(story("web-1", 0, 40))
    answers = []
    senders = [threading.Thread(target=lambda: answers.append(post(collector, body, collector.tokens["web-1"])))
               for _ in range(8)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    assert [status for status, _ in answers] == [200] * 8
    calm = Store.open(tmp_path / "calm.db", create=True)
    first_new = calm.write(story("web-1", 0, 40))
    calm.close()
    assert sum(a["new"] for _, a in answers) == first_new
    assert Store.open(collector.store_path).check() == []
    assert contents(collector.store_path) == contents(str(tmp_path / "calm.db"))
