"""A large simulated fleet for the benchmarks: the demo's 22 hosts and their story over N days,
plus background hosts (daemons and cron) up to the size asked for - fed through the real
ingest path into a store, which is kept (bench/.cache/) and reused while its parameters match.

    .venv/bin/python bench/bigfleet.py --hosts 250 --days 30      # about 10 million events
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from whodid.bot.demo import story as demo
from whodid.bot.demo.simfleet import SimFleet
from whodid.tracer import Store, ingest

CACHE = Path(__file__).parent / ".cache"


def background(fleet_seed: int, first: int, count: int, start: float, now: float):
    """`count` background hosts (a web-like role: a daemon, cron every 10 minutes and hourly)."""
    fleet = SimFleet(fleet_seed)
    rng = random.Random(fleet_seed)
    for i in range(first, first + count):
        h = fleet.add_host(f"app-{i:03d}", f"10.{20 + i // 250}.{i % 250}.10", start - rng.uniform(3600, 86400))
        h.add_user(998, "app")
        h.daemons = [h.daemon(start - 60, ["/usr/local/bin/app-server", "--port", "8080"], 998)]
    demo._cron_noise(fleet, start, now, rng)
    return fleet.events()


def build(path: Path, hosts: int, days: int, seed: int = 7, now: float | None = None, log=print) -> dict:
    now = now or time.time()
    store = Store.open(path, create=True)
    t0 = time.perf_counter()
    fleet, truth = demo.build(now, seed=seed, days=days)
    events = fleet.events()
    total = len(events)
    report = ingest(store, events)
    del events
    log(f"  the demo's 22 hosts over {days} days: {total:,} events")
    start = now - days * 86400
    extra = max(hosts - len(fleet.hosts), 0)
    for first in range(0, extra, 10):
        evs = background(seed + first, first, min(10, extra - first), start, now)
        total += len(evs)
        ingest(store, evs)
        log(f"  background hosts {first + 1}-{min(first + 10, extra)} of {extra}: {total:,} events so far "
            f"({time.perf_counter() - t0:.0f}s)")
    store.set_meta("bench", f"{hosts}:{days}:{seed}:{now}")
    store.close()
    assert report.rejected == 0
    return {"events": total, "hosts": len(fleet.hosts) + extra, "days": days, "now": now, "truth": truth,
            "seconds": time.perf_counter() - t0}


def cached(hosts: int, days: int, seed: int = 7, log=print) -> tuple[Path, float, int]:
    """A store of this size, built once: (path, its `now`, events)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"fleet-{hosts}h-{days}d-{seed}.db"
    if path.exists():
        store = Store.open(path)
        meta = store.get_meta("bench") or ""
        events = store.get_meta("bench_events")
        store.close()
        if meta.startswith(f"{hosts}:{days}:{seed}:") and events:
            return path, float(meta.rsplit(":", 1)[1]), int(events)
        path.unlink()
    log(f"building a {hosts}-host, {days}-day store at {path} (once; reused after)")
    info = build(path, hosts, days, seed, log=log)
    store = Store.open(path)
    store.set_meta("bench_events", str(info["events"]))
    store.close()
    return path, info["now"], info["events"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=250)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    path, _, events = cached(args.hosts, args.days, args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{path}: {events:,} events")


if __name__ == "__main__":
    main()
