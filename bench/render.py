"""Render time of trace pictures: 20, 100 and 300-node traces.

Each figure is the median of several renders, and is also given as a ratio to the cost of
encoding an empty PNG of the same size in the same run (the part no layout can avoid),
since these machines are noisy. Target: under 1 s for 300 nodes.

    .venv/bin/python bench/render.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

from whodid.bot.demo.simfleet import SimFleet, key_fingerprint
from whodid.tracer import Query, Store, Tracer, ingest
from whodid.tracer.render.image import DPI, figure_size, paint
from whodid.tracer.render.layout import layout

NOW = 1_790_000_000.0

sys.path.insert(0, str(Path(__file__).parent))
from result import result  # noqa: E402


def trace_with(nodes: int):
    """jim's chain (8 steps) plus enough commands in his root shell for `nodes` in all."""
    fleet = SimFleet(seed=1)
    jump = fleet.add_host("jump-box", "10.0.0.10", NOW - 86400)
    config = fleet.add_host("config-server", "10.0.1.20", NOW - 86400)
    for h in (jump, config):
        h.add_user(1000, "ec2-user")
        h.add_user(1001, "jim")
    t = NOW - 7200
    shell = fleet.ssh_login(jump, t, "jim", raddr="203.0.113.7", rport=53122, key_fp=key_fingerprint("jim"))
    _, remote = fleet.ssh_hop(shell, t + 60, config, "ec2-user", key_fingerprint("jim"))
    root = fleet.sudo_shell(remote, t + 120, ["sudo", "-i"])
    for i in range(nodes - 8):
        config.spawn(root, t + 130 + i, [["ls", "cat", "grep", "kubectl"][i % 4], f"arg{i}"])
    config.spawn(root, t + 5000, ["aws", "eks", "delete-cluster", "--name", "prod"])
    store = Store.open(":memory:", create=True)
    ingest(store, fleet.events())
    (tr,) = Tracer(store).find(Query("delete-cluster", scope=1, limit=1))
    return tr


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def empty_png(width: float, height: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.savefig(io.BytesIO(), format="png", dpi=DPI)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"# Trace render benchmark\n\n{platform.platform()}, Python {platform.python_version()}, "
          f"median of {args.repeat}\n")
    print("| graph nodes | boxes drawn | render ms | empty PNG ms | ratio | target |")
    print("|---:|---:|---:|---:|---:|---|")
    paint(layout(trace_with(20), NOW))                     # warm up matplotlib's caches
    for nodes in (20, 100, 300):
        tr = trace_with(nodes)
        lay = layout(tr, NOW)
        render = timed(lambda: paint(layout(tr, NOW)), args.repeat)
        base = timed(lambda: empty_png(*figure_size(lay)), args.repeat)
        target = "< 1000 ms: " + ("met" if render < 1 else "MISSED") if nodes == 300 else ""
        print(f"| {tr.graph.number_of_nodes()} | {len(lay.boxes)} | {render * 1000:.0f} | {base * 1000:.0f} "
              f"| {render / base:.1f}x | {target} |")
    result("render, 300-node trace", render, 1.0, "lower", "s")


if __name__ == "__main__":
    main()
