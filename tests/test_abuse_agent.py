"""The agent against a collector that refuses, disappears and comes back, and on SIGTERM.

A refused event must be set aside (kept, said, counted), never resent for ever; after an
outage the spool must drain within a bounded number of probes; an idle agent stops at once.
Real collectors over loopback; delays are checked as the shipper computes them (a seeded
random generator), not by the clock.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from whodid.agent.cli import stop_shipping
from whodid.agent.ship import Shipper
from whodid.agent.spool import Spool
from whodid.collector.server import Collector, Limits
from whodid.tracer import Store

from kit import collector_on, shipping_agent

T0 = 1_700_000_000.0


def ev(i: int, host: str = "web-1", **fields) -> dict:
    return {"v": 1, "kind": "exec", "host": host, "boot": "b1", "ts": T0 + i, "pid": 1000 + i, "start": i,
            "argv": ["echo", str(i)], "uid": 0, "euid": 0, **fields}


@pytest.fixture
def collector(tmp_path):
    c, c.tokens = collector_on(str(tmp_path / "c.db"), limits=Limits(max_body=8 << 20, max_batch=32 << 20))
    yield c
    c.stop()


def stored_pids(db: str) -> list[int]:
    return sorted(p for (p,) in Store.open(db).db.execute("SELECT p.pid FROM execs e JOIN procs p ON p.id = e.proc"))


# --- refused events: set aside, said, counted ------------------------------------------------------

def test_events_refused_inside_an_accepted_batch_are_set_aside_and_the_rest_delivered(collector, tmp_path, capsys):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    bad = {3: ev(3, pid=2 ** 64), 5: ev(5, host="db-1"), 8: ev(8, ts=float("nan")), 9: ev(9, cwd="\ud800")}
    spool.put([bad.get(i, ev(i)) for i in range(12)])
    said = []
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=said.append)
    assert shipper.ship_once() == 0
    assert spool.pending() == 0 and shipper.ship_once() is None           # nothing is resent
    assert spool.refused_count() == 4 and shipper.stats.set_aside == 4 and shipper.stats.refused == 4
    kept = spool.db.execute("SELECT line, why FROM refused ORDER BY seq").fetchall()
    assert [json.loads(line)["pid"] for line, _ in kept] == [2 ** 64, 1005, 1008, 1009]
    assert kept[0][1].startswith("pid: ") and "64 bits" in kept[0][1] and kept[1][1].startswith("host: ")
    assert len(said) == 1 and "refused 4 of 12 events" in said[0] and "set aside" in said[0] and "line 4: pid" in said[0]
    assert stored_pids(collector.store_path) == [1000 + i for i in range(12) if i not in bad]
    stop, idle = threading.Event(), threading.Thread(target=lambda: None)
    idle.start()
    stop_shipping(shipper, spool, stop, idle, grace=1.0)                # and the agent says so when it stops
    assert "4 events the collector refused were set aside" in capsys.readouterr().err


def test_a_batch_of_only_invalid_events_is_set_aside_not_dropped(collector, tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(i, pid=-1) for i in range(3)])
    said = []
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=said.append)
    assert shipper.ship_once() == 0 and spool.pending() == 0
    assert spool.refused_count() == 3 and shipper.stats.set_aside == 3
    assert "refused 3 of 3 events" in said[0]


class _Refuser(http.server.BaseHTTPRequestHandler):
    """A collector that refuses every batch whole with a status no resend will change."""
    status = 422
    seen = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        body = json.dumps({"error": "unprocessable"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def test_a_batch_refused_whole_with_a_4xx_is_set_aside_and_shipping_goes_on(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuser)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
        spool.put([ev(i) for i in range(10)])
        said = []
        shipper = Shipper(spool, f"http://127.0.0.1:{server.server_address[1]}", "t", batch_events=4, log=said.append)
        probes = 0
        while shipper.ship_once() is not None:
            probes += 1
            assert probes < 10, said
        assert probes == 3 and _Refuser.seen == 3 and spool.pending() == 0 and spool.refused_count() == 10
        assert shipper.stats.set_aside == 10 and "422: unprocessable" in said[0] and "(10 so far)" in said[-1]
    finally:
        server.shutdown()
        server.server_close()


def test_one_event_too_large_for_the_collector_is_set_aside_once_batches_are_down_to_one(collector, tmp_path):
    collector.limits.max_batch = 4000
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(0), ev(1, argv=["x" * 8000]), ev(2)])
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=lambda m: None)
    probes = 0
    while shipper.ship_once() is not None:
        probes += 1
        assert probes < 20
    assert spool.refused_count() == 1 and stored_pids(collector.store_path) == [1000, 1002]


# --- outage: bounded backoff, a true count, a prompt drain -----------------------------------------

def test_after_an_outage_the_spool_drains_within_a_bounded_number_of_probes(collector, tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(i) for i in range(12_000)])
    said = []
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], batch_events=5000, log=said.append,
                      rng=random.Random(16))
    port = collector.httpd.server_address[1]
    collector.stop()                                              # the outage
    waits = [shipper.ship_once() for _ in range(20)]
    assert all(0 < w <= shipper.backoff_delay(n) for n, w in enumerate(waits, 1))
    assert shipper.backoff_delay(1) <= 1.0                        # the first probe comes within a second
    assert max(shipper.backoff_delay(n) for n in range(1, 200)) == 30.0     # and none waits longer than 30 s
    assert len(said) == 1 and "12000 events wait in the spool" in said[0]   # what waits, not the batch size

    back = Collector(collector.store_path, "127.0.0.1", port).start()      # the collector returns
    try:
        probes = 0
        while shipper.ship_once() is not None:
            probes += 1
            assert probes <= 3, said                              # 12,000 events in batches of 5,000
        assert spool.pending() == 0 and len(stored_pids(collector.store_path)) == 12_000
        assert "answers again after 20 failed attempts" in said[-1]
        back.stop()
        spool.put([ev(20_000)])
        assert shipper.ship_once() <= shipper.backoff_delay(1)    # a new outage starts from the bottom again
    finally:
        back.stop()
    collector.stop = lambda: None


def test_retry_after_is_honoured(collector, tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(i) for i in range(500)])
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=lambda m: None)
    collector.writer.store.db.execute("PRAGMA max_page_count = 1")     # no room to grow: 503
    assert shipper.ship_once() >= 5.0                                   # the collector said Retry-After: 5
    collector.writer.store.db.execute("PRAGMA max_page_count = 1073741823")
    assert shipper.ship_once() == 0 and spool.pending() == 0


# --- stopping -----------------------------------------------------------------------------------

class _LongPoll(threading.Event):
    """The idle shipper's wait for new events, made as long as can be: only a wake-up ends it."""

    def wait(self, timeout=None):
        return super().wait(None)


def test_an_idle_shipper_stops_when_asked_without_waiting_out_its_poll(collector, tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.arrived = _LongPoll()
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=lambda m: None)
    stop = threading.Event()
    thread = threading.Thread(target=shipper.run, args=(stop,), daemon=True)
    thread.start()
    spool.put([ev(1)])
    while spool.pending():                                       # shipped; the shipper is idle now
        time.sleep(0.01)
    thread.join(0.2)
    stop_shipping(shipper, spool, stop, thread, grace=5.0)
    assert not thread.is_alive(), "the shipper is still waiting for events after being told to stop"


def test_sigterm_stops_an_idle_fleet_agent_promptly(collector, tmp_path):
    # The real agent (netlink capture: no BPF program to build), its spool emptied, then SIGTERM.
    # The bound is generous: five times what it takes (BPF mode adds the kernel's detaching of
    # its tracepoints, see the report in issue 16).
    ready, spool = tmp_path / "ready", tmp_path / "spool.db"
    agent = shipping_agent(collector.url, collector.tokens["web-1"], spool, ready, flush_interval=None)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() or sqlite3.connect(spool).execute("SELECT count(*) FROM events").fetchone()[0]:
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)                                          # past the agent's flush: idle
        t = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        took = time.monotonic() - t
    finally:
        if agent.poll() is None:
            agent.kill()
    err = agent.stderr.read().decode()
    assert code == 0, err
    assert took < 3.0, f"SIGTERM took {took:.2f} s"
    assert "whodid-agent: stopped" in err


def test_a_non_utf8_argument_is_captured_shipped_stored_and_traced_intact(collector, tmp_path):
    # `/bin/true $'\xff'` for real: BPF capture, the spool, HTTP, the collector, the store, the trace
    from test_agent_live import bpf_ready
    reason = bpf_ready()
    if reason:
        pytest.skip(f"BPF capture unavailable: {reason}")
    ready, spool = tmp_path / "ready", tmp_path / "spool.db"
    mark = f"whodid-abuse-{os.getpid()}".encode()
    agent = shipping_agent(collector.url, collector.tokens["web-1"], spool, ready, mode="bpf")
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert agent.poll() is None and time.monotonic() < deadline, agent.stderr.read().decode()
            time.sleep(0.1)
        subprocess.run([b"/bin/true", mark, b"\xff", b"caf\xc3\xa9"], check=True)
        query = "SELECT e.argv FROM execs e JOIN cmds c ON c.id = e.cmd_id WHERE instr(c.cmd, ?) > 0"
        while not (rows := Store.open(collector.store_path).db.execute(query, [mark.decode()]).fetchall()):
            assert agent.poll() is None and time.monotonic() < deadline, agent.stderr.read().decode()
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    argv = json.loads(rows[0][0])
    assert [a.encode("utf-8", "surrogateescape") for a in argv] == [b"/bin/true", mark, b"\xff", b"caf\xc3\xa9"]
    out = subprocess.run([sys.executable, "-m", "whodid.bot.cli", "trace", mark.decode(), "--db",
                          collector.store_path, "--since", "1h", "--json"], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout)["matches"][0]["poi"]["argv"] == argv
    out = subprocess.run([sys.executable, "-m", "whodid.bot.cli", "trace", mark.decode(), "--db",
                          collector.store_path, "--since", "1h"], capture_output=True)
    assert out.returncode == 0 and f"{mark.decode()} \\xff café".encode() in out.stdout, out.stdout + out.stderr
