"""Fleet mode end to end with real processes: `whodid serve` and `whodid-agent forward`
talking HTTP on loopback, each killed with SIGKILL at the worst moment and restarted.
Every event must end up in the store exactly once."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from whodid.tracer import Store

from kit import free_port

N = 20_000


class Fleet:
    def __init__(self, tmp):
        self.tmp = tmp
        self.db = str(tmp / "collector.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = Store.open(self.db, create=True).add_agent("web-1")
        self.collector = self.agent = None
        self.events = tmp / "events.jsonl"
        now = time.time() - 3600
        with open(self.events, "w") as fh:
            for i in range(N):
                fh.write(json.dumps({"v": 1, "kind": "exec", "host": "web-1", "boot": "b1", "ts": now + i * 0.01,
                                     "pid": 10_000 + i, "start": i, "argv": ["job", str(i)], "uid": 0,
                                     "euid": 0}) + "\n")

    def start_collector(self):
        ready = self.tmp / "ready"
        ready.unlink(missing_ok=True)
        self.collector = subprocess.Popen(
            [sys.executable, "-m", "whodid.bot.cli", "serve", "--db", self.db, "--listen", f"127.0.0.1:{self.port}",
             "--ready-file", str(ready)], stderr=open(self.tmp / "collector.err", "a"))
        deadline = time.time() + 30
        while not ready.exists():
            assert self.collector.poll() is None and time.time() < deadline, (self.tmp / "collector.err").read_text()
            time.sleep(0.05)

    def start_agent(self, *files):
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "whodid.agent.cli", "forward", "--collector", self.url, "--spool",
             str(self.tmp / "spool.db"), "--batch-events", "200", *map(str, files)],
            stderr=open(self.tmp / "agent.err", "a"), env=dict(os.environ, WHODID_AGENT_TOKEN=self.token))

    def stored(self) -> int:
        return Store.open(self.db).db.execute("SELECT count(*) FROM execs").fetchone()[0]

    def wait_stored(self, at_least: int, timeout: float = 60):
        deadline = time.time() + timeout
        while self.stored() < at_least:
            assert time.time() < deadline, (self.tmp / "agent.err").read_text()
            time.sleep(0.05)

    def exactly_once(self):
        store = Store.open(self.db)
        rows = store.db.execute("SELECT p.pid, count(*) FROM execs e JOIN procs p ON p.id = e.proc GROUP BY 1")
        counts = dict(rows.fetchall())
        assert set(counts) == {10_000 + i for i in range(N)}, f"{N - len(counts)} events missing"
        assert set(counts.values()) == {1}

    def close(self):
        for p in (self.agent, self.collector):
            if p and p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def test_collector_killed_mid_stream_and_restarted(fleet):
    fleet.start_collector()
    fleet.start_agent(fleet.events)
    fleet.wait_stored(2000)
    os.kill(fleet.collector.pid, signal.SIGKILL)          # no chance to finish what it was doing
    fleet.collector.wait()
    time.sleep(1.5)                                       # the agent retries meanwhile, and backs off
    assert fleet.agent.poll() is None
    fleet.start_collector()
    assert fleet.agent.wait(timeout=180) == 0, (fleet.tmp / "agent.err").read_text()
    fleet.exactly_once()
    assert "cannot reach the collector" in (fleet.tmp / "agent.err").read_text()


def test_agent_killed_mid_batch_and_restarted(fleet):
    fleet.start_collector()
    fleet.start_agent(fleet.events)
    fleet.wait_stored(2000)
    # Freeze the collector: the agent's next request goes out and waits for an answer that
    # cannot come. Kill the agent then - certainly mid-batch - and let the collector go on:
    # it stores that batch, but the agent never heard so, and sends it again after restart.
    os.kill(fleet.collector.pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(fleet.agent.pid, signal.SIGKILL)
    fleet.agent.wait()
    os.kill(fleet.collector.pid, signal.SIGCONT)
    before = fleet.stored()
    fleet.start_agent()                                   # no files: only what the spool holds
    assert fleet.agent.wait(timeout=180) == 0, (fleet.tmp / "agent.err").read_text()
    fleet.exactly_once()
    assert before < N
    metrics = __import__("urllib.request").request.urlopen(fleet.url + "/metrics").read().decode()
    accepted = float(next(l.split()[-1] for l in metrics.splitlines() if l.startswith("whodid_events_accepted_total")))
    new = float(next(l.split()[-1] for l in metrics.splitlines() if l.startswith("whodid_events_new_total")))
    assert new == N and accepted > N                      # the re-sent batch arrived twice, was stored once


def test_a_50_mb_body_is_refused_without_the_collector_growing(fleet):
    fleet.start_collector()
    rss = lambda: int(next(l.split()[1] for l in open(f"/proc/{fleet.collector.pid}/status")
                           if l.startswith("VmRSS:")))
    before = rss()
    s = socket.create_connection(("127.0.0.1", fleet.port))
    s.sendall((f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fleet.token}\r\n"
               f"Content-Length: {50 << 20}\r\n\r\n").encode())
    sent = 0
    try:
        chunk = b"x" * (1 << 20)
        while sent < 50 << 20:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass                                               # the collector hung up on the rest
    answer = b""
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except OSError:
        pass
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"collector.max_body" in answer
    assert rss() - before < 8 * 1024, f"collector grew {rss() - before} KiB"


def test_serve_stops_cleanly_on_sigterm(fleet):
    fleet.start_collector()
    fleet.start_agent(fleet.events)
    fleet.wait_stored(1)
    fleet.collector.send_signal(signal.SIGTERM)
    try:
        code = fleet.collector.wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = None
    log = (fleet.tmp / "collector.err").read_text()
    assert code == 0, log
    assert "stopping: finishing requests in flight" in log and "events written since start" in log
    fleet.start_collector()
    try:
        code = fleet.agent.wait(timeout=300)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, (fleet.tmp / "agent.err").read_text() + (fleet.tmp / "collector.err").read_text()
    fleet.exactly_once()
