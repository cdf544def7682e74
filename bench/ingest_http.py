"""Collector ingest: events/s from agents' spools, over HTTP, into the store.

The demo fleet's events (22 hosts, 4 days) are spooled per host, then every host's shipper
sends its spool concurrently to a real `whodid serve` process on loopback - gzip, tokens,
validation, the one writer, the store's natural-key de-duplication. The reference, measured
in the same run on the same disk, is the ceiling for writing these rows at all: a bare
sqlite3 `executemany` of the same events (host, kind, ts and the JSON line) into one
unindexed table. Also shown: the same events through `ingest()` in-process, to separate the
store's cost from the network's.

    .venv/bin/python bench/ingest_http.py [--seed 7] [--agents 22]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from whodid.agent.ship import Shipper
from whodid.agent.spool import Spool
from whodid.bot.demo import story as demo
from whodid.tracer import Store, ingest

sys.path.insert(0, str(Path(__file__).parent))
from result import result  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_executemany(events: list[dict], path: Path) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE events (host TEXT, kind TEXT, ts REAL, line TEXT)")
    rows = [(e["host"], e["kind"], e["ts"], json.dumps(e, separators=(",", ":"))) for e in events]
    t = time.perf_counter()
    db.execute("BEGIN")
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
    db.execute("COMMIT")
    elapsed = time.perf_counter() - t
    db.close()
    return elapsed


def in_process(events: list[dict], path: Path) -> float:
    store = Store.open(path, create=True)
    t = time.perf_counter()
    report = ingest(store, events)
    elapsed = time.perf_counter() - t
    assert report.rejected == 0
    return elapsed


def over_http(events: list[dict], work: Path, agents: int) -> tuple[float, int, dict]:
    db = work / "collector.db"
    store = Store.open(db, create=True)
    by_host: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_host[e["host"]].append(e)
    hosts = sorted(by_host)[:agents] if agents < len(by_host) else sorted(by_host)
    tokens = {h: store.add_agent(h) for h in hosts}
    store.close()
    spools = {}
    for h in hosts:
        spools[h] = Spool(work / f"spool-{h}.db", host=h, boot="bench")
        spools[h].put(by_host[h])
    port = free_port()
    ready = work / "ready"
    serve = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "serve", "--db", str(db), "--listen",
                              f"127.0.0.1:{port}", "--ready-file", str(ready)], stderr=subprocess.DEVNULL,
                             env=dict(os.environ, WHODID_CONFIG="/dev/null"))
    while not ready.exists():
        if serve.poll() is not None:       # it could not start (its port taken meanwhile): say so, do not hang
            raise SystemExit(f"whodid serve exited with {serve.returncode} before it was ready")
        time.sleep(0.05)
    errors: list[str] = []

    def ship(h):
        shipper = Shipper(spools[h], f"http://127.0.0.1:{port}", tokens[h], log=errors.append)
        while (wait := shipper.ship_once()) is not None:
            if wait:
                time.sleep(wait)

    t = time.perf_counter()
    threads = [threading.Thread(target=ship, args=(h,)) for h in hosts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    serve.terminate()
    serve.wait()
    stored = Store.open(db).counts()
    assert not errors, errors[:3]
    return elapsed, sum(len(by_host[h]) for h in hosts), stored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--agents", type=int, default=22, help="how many of the fleet's hosts ship (default: all 22)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the reference, ingest() "
                   "and the HTTP path (medians; default 3)")
    args = p.parse_args()
    now = time.time()
    fleet, _ = demo.build(now, seed=args.seed)
    events = fleet.events()
    n = len(events)
    with tempfile.TemporaryDirectory(prefix="whodid-bench-") as tmp:
        work = Path(tmp)
        # alternating rounds: a noisy neighbour slows every path of a round alike
        rounds = []
        for r in range(args.rounds):
            (work / f"http-{r}").mkdir()
            http, shipped, stored = over_http(events, work / f"http-{r}", args.agents)
            rounds.append((bare_executemany(events, work / f"bare-{r}.db"), in_process(events, work / f"direct-{r}.db"),
                           http * n / shipped))       # per the whole fleet's events, when fewer agents ship
    bare, direct, http = (statistics.median(r[i] for r in rounds) for i in range(3))
    direct_ratio, http_ratio = (statistics.median(r[0] / r[i] for r in rounds) for i in (1, 2))
    print(f"conditions: {n:,} events of the demo fleet (seed {args.seed}); the reference, ingest() and the HTTP "
          f"path in {args.rounds} alternating rounds, medians (the ratios: the median of each round's ratio); "
          f"{args.agents} agents shipping "
          f"concurrently, gzip batches of up to 5000; {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}")
    print()
    print("| path | events | seconds | events/s | ratio to bare executemany |")
    print("|---|---:|---:|---:|---:|")
    for name, secs, ratio in (("bare sqlite3 executemany (reference)", bare, 1.0),
                              ("ingest() in-process", direct, direct_ratio),
                              ("agents -> HTTP -> collector -> store (the target's path)", http, http_ratio)):
        print(f"| {name} | {n:,} | {secs:.2f} | {n / secs:,.0f} | {ratio:.2f} |")
    # the target (issue 23) is the whole path's; ingest() alone shows how much of it is the store's
    result("ingest over HTTP vs bare executemany", http_ratio, 0.25, "higher", "x")
    result("ingest() in-process vs bare executemany", direct_ratio, None, "higher", "x")
    result("ingest() events/s", n / direct, 50000, "higher", "ev/s")
    print()
    print(f"stored by the collector: {stored['execs']:,} execs, {stored['procs']:,} processes, "
          f"{stored['logins']:,} logins, {stored['conns']:,} connections")


if __name__ == "__main__":
    main()
