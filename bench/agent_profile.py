"""Where the agent's CPU goes per exec, in a deployed mode (docs/agent.md, "Where the agent's time goes").

Runs `whodid-agent run` (BPF) in one mode - `store` (local mode, --db), `fleet` (--spool and
--collector: a collector on 127.0.0.1 in this process, its own store), or `out` (JSON lines) -
on an exec storm: two `sh -c 'while ...; do /bin/true; done'` spawners of N/2 execs each. Prints
the agent's CPU per exec (its process, every thread: /proc/PID/stat), the execs recorded of N,
and with --profiler py-spy a top-15 table of where the agent's samples fell (own = in that
function itself or the C it calls, total = with what it calls; all threads, idle excluded).
py-spy comes from PyPI (`.venv/bin/pip install py-spy`); --profiler none measures CPU only
(py-spy's sampling costs the agent a little CPU of its own, through ptrace stops).

    .venv/bin/python bench/agent_profile.py --mode store --execs 20000 --profiler py-spy

Root and BPF needed, as for the agent. Not part of CI: timings are the machine's, noisy on a
shared one; the comparison that counts is one mode against another in the same run.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

TICK = os.sysconf("SC_CLK_TCK")
MARK = "/bin/true"


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process, every thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def storm(execs: int) -> float:
    """Two spawners of execs/2 runs of /bin/true each; returns seconds."""
    script = f"i=0; while [ $i -lt {execs // 2} ]; do {MARK}; i=$((i+1)); done"
    t0 = time.perf_counter()
    spawners = [subprocess.Popen(["sh", "-c", script]) for _ in range(2)]
    for p in spawners:
        p.wait()
    return time.perf_counter() - t0


def marks_in_store(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM execs WHERE cmd = ?", [MARK]).fetchone()[0]
    finally:
        db.close()


def marks_in_lines(path: Path) -> int:
    import orjson
    n = 0
    for line in path.open("rb"):
        ev = orjson.loads(line)
        if ev["kind"] == "exec" and ev.get("argv", [])[:1] == [MARK]:
            n += 1
    return n


def agent_args(mode: str, work: Path, url: str | None) -> list[str]:
    if mode == "store":
        return ["--db", str(work / "agent.db")]
    if mode == "out":
        return ["--out", str(work / "agent.jsonl")]
    return ["--spool", str(work / "spool.db"), "--collector", url]


def top_table(raw: Path, execs: int, cpu: float, limit: int = 15) -> str:
    """py-spy's raw (collapsed) stacks -> the functions with the most samples, as us per exec
    (the agent's CPU split in proportion to the samples)."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return "(no samples)"
    per = cpu / execs * 1e6 / samples
    rows = ["| function | own us/exec | own % | total us/exec | total % |", "|---|---:|---:|---:|---:|"]
    for f, n in own.most_common(limit):
        rows.append(f"| `{f}` | {n * per:.1f} | {100 * n / samples:.0f} % | {total[f] * per:.1f} | "
                    f"{100 * total[f] / samples:.0f} % |")
    return "\n".join(rows) + f"\n({samples} samples)"


# The agent under cProfile, timed by each thread's own CPU clock (time.thread_time), so waiting -
# epoll, sleep, a collector's answer - counts for nothing: the main thread (capture, assembly,
# the sink) and the shipper's thread each have their own profile, dumped when it ends. The
# numbers are inflated by cProfile's own cost per call; the shares are what to read.
PROFILED = r"""
import cProfile, sys, time
out = sys.argv[1]
from whodid.agent import ship
_run = ship.Shipper.run
def run(self, stop):
    p = cProfile.Profile(time.thread_time)
    p.enable()
    try:
        _run(self, stop)
    finally:
        p.disable()
        p.dump_stats(out + ".ship")
ship.Shipper.run = run
from whodid import sdnotify
from whodid.agent import cli
p = cProfile.Profile(time.thread_time)
_ready, _stopping = sdnotify.ready, sdnotify.stopping
def ready(*a, **k):                 # capturing: BPF compiled and loaded, the snapshot taken
    _ready(*a, **k)
    p.enable()
def stopping(*a, **k):
    p.disable()
    _stopping(*a, **k)
cli.sdnotify = type("notify", (), {"ready": staticmethod(ready), "stopping": staticmethod(stopping)})
rc = cli.main(sys.argv[2:])
p.dump_stats(out + ".main")
sys.exit(rc)
"""


def cprofile_table(prefix: Path, execs: int, limit: int = 15) -> str:
    """The functions with the most CPU of their own (tottime), per exec, over the agent's threads:
    from capture's start (sdnotify.ready) to the stop (sdnotify.stopping) on the main thread, the
    shipper's whole life on its own."""
    import pstats
    parts = [str(p) for p in (prefix.with_suffix(".main"), prefix.with_suffix(".ship")) if p.exists()]
    if not parts:
        return "(no profile)"
    stats = pstats.Stats(*parts)
    total = sum(v[2] for v in stats.stats.values())
    rows = ["| function | calls per exec | own us/exec | own % | with callees us/exec |", "|---|---:|---:|---:|---:|"]
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:limit]
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in top:
        where = f"{Path(file).name}:{name}" if file != "~" else name
        rows.append(f"| `{where}` | {calls / execs:.2f} | {tottime / execs * 1e6:.1f} | {100 * tottime / total:.0f} % | "
                    f"{cumtime / execs * 1e6:.1f} |")
    return "\n".join(rows) + f"\n(profiled CPU {total / execs * 1e6:.1f} us/exec, cProfile's own cost included)"


def _short(frame: str) -> str:
    """`write (whodid/tracer/store.py:383)` -> `store.py:write`; a thread's name frame stays."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{Path(file).name}:{name}"


def run(mode: str, execs: int, profiler: str, flush: str | None, keep: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"agent-profile-{mode}-"))
    collector = None
    env = dict(os.environ)
    url = None
    if mode == "fleet":
        from kit import collector_on
        collector, tokens = collector_on(str(work / "collector.db"), hosts=("bench",))
        url = collector.url
        env["WHODID_AGENT_TOKEN"] = tokens["bench"]
    ready = work / "ready"
    argv = ["run", "--host", "bench", "--auth-log", "none", "--ready-file", str(ready), *agent_args(mode, work, url)]
    if flush:
        argv += ["--flush-interval", flush]
    if profiler == "cprofile":
        args = [sys.executable, "-c", PROFILED, str(work / "prof"), *argv]
    else:
        args = [sys.executable, "-m", "whodid.agent.cli", *argv]
    agent = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            if agent.poll() is not None:
                raise RuntimeError(agent.stderr.read())
            time.sleep(0.1)
        time.sleep(1.0)
        spy = None
        if profiler == "py-spy":
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                    "--pid", str(agent.pid), "--format", "raw", "--rate", "250",
                                    "--output", str(work / "spy.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        user0, sys0 = cpu_split(agent.pid)
        seconds = storm(execs)
        time.sleep(2.0)                  # the agent catches up, flushes, ships
        user1, sys1 = cpu_split(agent.pid)
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
        if collector:
            collector.stop()
    if mode == "store":
        recorded = marks_in_store(work / "agent.db")
    elif mode == "out":
        recorded = marks_in_lines(work / "agent.jsonl")
    else:
        recorded = marks_in_store(work / "collector.db")
    cpu = cpu1 - cpu0
    out = {"mode": mode, "execs": execs, "seconds": seconds, "cpu": cpu, "us_per_exec": cpu / execs * 1e6,
           "sys_per_exec": (sys1 - sys0) / execs * 1e6,
           "recorded": recorded, "err": err.strip().splitlines()[-1:] if err.strip() else []}
    if profiler == "py-spy" and (work / "spy.txt").exists():
        out["table"] = top_table(work / "spy.txt", execs, cpu)
    if profiler == "cprofile":
        out["table"] = cprofile_table(work / "prof", execs)
    if keep:
        out["err"].append(f"(kept {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["store", "fleet", "out"], action="append",
                   help="repeatable; rounds alternate between modes (default: store and fleet)")
    p.add_argument("--execs", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--profiler", choices=["none", "cprofile", "py-spy"], default="none",
                   help="cprofile: each thread's own CPU (idle excluded); py-spy: samples, whose idle detection "
                        "counted this agent's epoll and sleep as busy")
    p.add_argument("--flush-interval", help="the agent's --flush-interval (default: its own, 1s)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (store, spool, profiles: pstats reads them)")
    args = p.parse_args()
    modes = args.mode or ["store", "fleet"]
    print(f"exec storm: 2 spawners x {args.execs // 2} x {MARK}; {os.cpu_count()} cores; "
          f"profiler {args.profiler}; {args.rounds} round(s)")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            r = run(m, args.execs, args.profiler, args.flush_interval, args.keep)
            results[m].append(r)
            print(f"{m}: {r['execs'] / r['seconds']:,.0f} execs/s, agent CPU {r['us_per_exec']:.1f} us/exec "
                  f"({r['sys_per_exec']:.1f} in the kernel), "
                  f"{r['recorded']} of {r['execs']} recorded; {' '.join(r['err'])}", flush=True)
            if "table" in r:
                print(r["table"], flush=True)
    if args.rounds > 1:
        import statistics
        for m, rs in results.items():
            print(f"{m}: median {statistics.median(r['us_per_exec'] for r in rs):.1f} us/exec")


if __name__ == "__main__":
    main()
