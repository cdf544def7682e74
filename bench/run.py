"""Run every benchmark and write the report: bench/REPORT.md (each benchmark's table, with its
conditions) and bench/report.png (every figure against its target).

Each benchmark is its own script, run here as a subprocess one after another, so one does not
warm or load the next. Those that need root, BPF or auditd say so and are marked skipped. The
exec storm's side-by-side columns also need Laurel and bpftrace, which ./bootstrap does not
install (the tests need neither): `apt-get install laurel bpftrace` first.

    .venv/bin/python bench/run.py                 # the full sizes (the 10M-event store is built once, ~3 min)
    .venv/bin/python bench/run.py --quick         # small sizes, to check everything runs
    .venv/bin/python bench/run.py --big           # and the 100M-event store (bench/bigstore.py: built
                                                  # once, ~25 min and ~8.5 GB; --big-store PATH to keep it elsewhere)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from result import met  # noqa: E402

BENCHES = [
    # (script, title, full args, quick args)
    ("agent_overhead.py", "Agent overhead on an exec storm", [],
     ["--execs", "2000", "--forks", "4000", "--connects", "2000", "--rounds", "1"]),
    ("unix_connect.py", "Agent overhead on a unix connect storm", [], ["--connects", "5000", "--rounds", "1"]),
    ("ingest_http.py", "Ingest", [], ["--agents", "4", "--rounds", "1"]),
    ("storage.py", "Storage", [], []),
    ("trace_latency.py", "Trace latency on a large store", [], ["--hosts", "30", "--days", "5", "--repeat", "5"]),
    ("render.py", "Render", [], ["--repeat", "1"]),
    ("e2e_slack.py", "Slack end to end", [], ["--repeat", "5"]),
    ("incident.py", "Under an incident's load", [], ["--askers", "3", "--waves", "1", "--idle", "4"]),
    ("audit.py", "auditd logs: import, and trace vs ausearch", [], ["--execs", "500"]),
    # 20 minutes: the collector's id caches roll over every two to four minutes at this rate
    # (tracer/idcache.py), a sawtooth of a few MB; a trend over a 5-minute half is mostly its phase
    ("soak.py", "A steady rate for minutes, fleet mode, auditd beside it",
     ["--minutes", "20", "--png", str(HERE / "soak.png")], ["--minutes", "1"]),
]

# on demand only (--big): building its store takes most of an hour
BIG = ("bigstore.py", "A big store, realistic questions", [], ["--events", "20000", "--days", "2", "--repeat", "2"])


def run(script: str, args: list[str]) -> tuple[str, list[dict], str | None]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    took = time.perf_counter() - t
    results = [json.loads(line[7:]) for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    text = "\n".join(line for line in res.stdout.splitlines() if not line.startswith("RESULT "))
    if res.returncode:
        why = (res.stderr.strip().splitlines() or ["failed"])[-1]
        return text, results, f"did not run: {why}"
    return text + f"\n\n_({took:.0f} s)_", results, None


def chart(results: list[dict], path: Path) -> None:
    """Each figure as how far it is from its target: >= 1 met (value/target, or target/value for
    figures where lower is better), on a log scale."""
    from matplotlib.figure import Figure
    rows = [r for r in results if r["target"]]
    if not rows:
        return
    score = [(r["value"] / r["target"]) if r["better"] == "higher" else (r["target"] / max(r["value"], 1e-9))
             for r in rows]
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.2), dpi=100)
    ax = fig.add_subplot()
    colors = ["#2e7d32" if met(r) else "#c62828" for r in rows]
    ax.barh(range(len(rows)), score, color=colors)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("headroom against the target (>= 1: met; log scale)")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: check that every benchmark runs")
    p.add_argument("--big", action="store_true", help="also build (once) and ask a 100M-event store")
    p.add_argument("--big-store", help="where --big keeps its store (default bench/.cache/bigstore.db)")
    p.add_argument("--out", default=str(HERE / "REPORT.md"))
    args = p.parse_args()
    sections, results = [], []
    benches = list(BENCHES)
    if args.big:
        script, title, full, quick = BIG
        where = ["--store", args.big_store] if args.big_store else []
        benches.append((script, title, full + where, quick + where))
    # the exec storm's side-by-side columns; without them the report still runs, with a gap
    missing = [tool for tool in ("auditd", "laurel", "bpftrace") if shutil.which(tool) is None]
    if missing and not args.quick:
        print(f"bench: {', '.join(missing)} not installed: their columns will read 'skipped' and the report "
              f"will not be side by side (apt-get install {' '.join(missing)})", file=sys.stderr, flush=True)
    for script, title, full, quick in benches:
        print(f"bench: {title} ({script})...", file=sys.stderr, flush=True)
        text, rs, problem = run(script, quick if args.quick else full)
        results += rs
        sections.append(f"## {title}\n\n`bench/{script}`\n\n" + (f"**{problem}**\n\n" if problem else "") + text)
    out = Path(args.out)
    png = out.with_name("report.png")
    chart(results, png)
    summary = ["| figure | value | target | |", "|---|---:|---:|---|"]
    for r in results:
        cmp = ">=" if r["better"] == "higher" else "<="
        if r["target"] is None:             # a figure reported without a target (bytes per event)
            summary.append(f"| {r['name']} | {r['value']:,.3g} {r['unit']} | | reported |")
            continue
        summary.append(f"| {r['name']} | {r['value']:,.3g} {r['unit']} | {cmp} {r['target']:,} {r['unit']} | "
                       f"{'met' if met(r) else '**missed**'} |")
    head = (f"# whodid benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}"
            f"{' (quick sizes)' if args.quick else ''}. Every figure is measured against a reference in the same "
            "run; see each section's conditions.\n\n" + "\n".join(summary) + f"\n\n![targets]({png.name})\n")
    out.write_text(head + "\n" + "\n\n".join(sections) + "\n")
    print(f"bench: wrote {out} and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
