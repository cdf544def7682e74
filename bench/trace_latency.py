"""Trace latency on a large store: p50/p95 of `whodid trace delete-cluster` at scope 0 and 2.

The store is bench/bigfleet.py's (250 hosts, 30 days, about 10 million events by default; built
once and cached). Each figure is measured in-process (the query, the walk across hosts, the
attribution - not Python's start-up), repeated, with a fresh Tracer each time so no cache of
a previous run helps. As a reference measured in the same run: one bare `SELECT count(*)` over
the execs of the same 7-day window, the floor of any search that scans them.

Targets: scope 0 p95 under 100 ms, scope 2 p95 under 1 s.

    .venv/bin/python bench/trace_latency.py [--hosts 250] [--days 30] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bigfleet import cached  # noqa: E402
from result import result  # noqa: E402

from whodid.bot.demo import story as demo  # noqa: E402
from whodid.config import IdentityConfig  # noqa: E402
from whodid.tracer import Query, Store, Tracer  # noqa: E402


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=250)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    path, now, events = cached(args.hosts, args.days, log=lambda m: print(m, file=sys.stderr, flush=True))
    store = Store.open(path)
    ident = IdentityConfig(people=demo.story_people()).identity()
    since = now - 7 * 86400
    results = {}
    for scope in (0, 2):
        times, answer = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            traces = Tracer(store, ident).find(Query(pattern="delete-cluster", since=since, scope=scope, limit=5))
            times.append(time.perf_counter() - t)
            answer = traces[0] if traces else None
        assert answer is not None and answer.attributed.user == "jim", "the big store lost the story"
        results[scope] = (percentile(times, 50), percentile(times, 95), answer.graph.number_of_nodes())
    floor = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        store.db.execute("SELECT count(*) FROM execs WHERE ts >= ?", [since]).fetchone()
        floor.append(time.perf_counter() - t)
    size = os.path.getsize(path)
    print(f"conditions: {events:,} events, {args.hosts} hosts, {args.days} days (bench/bigfleet.py), store "
          f"{size / 1e6:,.0f} MB ({size / events:.0f} bytes/event); window 7 days; {args.repeat} runs each; "
          f"{os.cpu_count()} cores")
    print()
    print("| query | p50 | p95 | nodes | target | p95 / bare window scan |")
    print("|---|---:|---:|---:|---|---:|")
    fp50 = statistics.median(floor)
    for scope, target in ((0, 0.1), (2, 1.0)):
        p50, p95, nodes = results[scope]
        verdict = "met" if p95 <= target else f"missed by {(p95 - target) * 1000:.0f} ms"
        print(f"| trace delete-cluster, scope {scope} | {p50 * 1000:.1f} ms | {p95 * 1000:.1f} ms | {nodes} | "
              f"< {target * 1000:.0f} ms: {verdict} | {p95 / fp50:.1f} |")
        result(f"trace p95, scope {scope}, {events / 1e6:.1f}M events", p95, target, "lower", "s")
    print(f"| bare SELECT count(*) over the window's execs (reference) | {fp50 * 1000:.1f} ms | "
          f"{percentile(floor, 95) * 1000:.1f} ms | | | 1.0 |")


if __name__ == "__main__":
    main()
