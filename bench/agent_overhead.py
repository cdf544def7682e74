"""What recording costs the host, as deployed: three storms with no recorder, with whodid's agent
in local mode (into its store) and in fleet mode (its spool, shipped while it runs to a local
collector), with auditd, auditd + Laurel, and a bpftrace exec printer (the floor) - in one run,
in alternating rounds, so the machine's noise hits them all.

The workloads, each run under every recorder in every round:

- exec storm: two spawners, each starting short processes (/bin/true, under a name of the run's
  own) as fast as a shell can,
  plus a loopback connect/accept loop; an op is an exec;
- fork storm: two processes forking children that exit at once (no exec) and waiting for each,
  a small C loop; an op is a fork;
- connect storm (issue 21): one process making short-lived loopback TCP connections (socket,
  connect, accept(fd, NULL, NULL), close), a small C loop; an op is a connection, two facts
  (a connect and an accept).

The C loops are compiled here with cc: a Python loop would hide the syscalls' cost under its own.

For each recorder and workload: the rate as a ratio to no recorder's (medians of the rounds);
the recorder's own CPU per op (the agent process, shipping included; auditd + kauditd, + laurel),
measured from the storm's start until the recorder has caught up - its CPU is quiet again and,
in fleet mode, its spool is empty - while the kernel-side cost inside the workload shows in
the rate; the collector's CPU per op, in its own column (never added to the agent's); bytes per
op written (the store's used pages; in fleet mode the collector's store; the logs; bpftrace's file);
missing: the workload's facts not in the record, counted in it (the store's tables, the collector's store
after the agent has stopped, the logs), the worst round; lost: what the recorder said it lost.
Both agent modes also count what reached the record only when the agent was stopped: in fleet
mode shipping must happen during the run, its CPU is the agent's (connections over the budget
are the exception by design: counted in the kernel, sent when their minute is over or at stop).

Needs root; BCC for the agent, auditd (and laurel) for theirs, bpftrace for the floor; a recorder
that cannot run here is a row saying what to install.

    .venv/bin/python bench/agent_overhead.py [--execs 12000] [--forks 40000] [--connects 20000] [--rounds 3]
        [--recorders store,fleet,auditd,laurel,bpftrace] [--unbudgeted] [--json FILE]

`--unbudgeted` adds the agent in store mode without its connection budget: what the budget
saves in the connect storm, in the same run. `--connects 0` / `--forks 0`: no such storm.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from recorders import DEFAULT, RECORDERS, Recorder  # noqa: E402
from result import result  # noqa: E402

# ---- the workloads ------------------------------------------------------------------------------


def exec_storm(mark: Path, execs: int) -> dict:
    """Two spawners of execs/2 short processes each (mark: /bin/true under the run's own path),
    and a connect/accept loop."""
    half = execs // 2
    script = f"i=0; while [ $i -lt {half} ]; do {mark}; i=$((i+1)); done"
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def accept_loop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                pass

    def connect_loop():
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                pass
            time.sleep(0.005)

    threads = [threading.Thread(target=accept_loop), threading.Thread(target=connect_loop)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    spawners = [subprocess.Popen(["sh", "-c", script]) for _ in range(2)]
    for p in spawners:
        p.wait()
    elapsed = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    srv.close()
    return {"workload": "exec", "ops": half * 2, "facts": half * 2, "seconds": elapsed, "program": str(mark)}


FORKS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {          /* forks N: N children that exit at once, one at a time */
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); return 1; }
        if (p == 0) _exit(0);
        if (waitpid(p, NULL, 0) != p) { perror("waitpid"); return 1; }
    }
    return 0;
}
"""


def fork_storm(program: Path, forks: int) -> dict:
    """Two processes of forks/2 children each (fork, _exit, waitpid)."""
    half = forks // 2
    t0 = time.perf_counter()
    ps = [subprocess.Popen([str(program), str(half)]) for _ in range(2)]
    for p in ps:
        if p.wait():
            raise RuntimeError(f"the fork storm failed ({p.returncode})")
    return {"workload": "fork", "ops": half * 2, "facts": half * 2, "seconds": time.perf_counter() - t0,
            "program": str(program)}


CONNECTS = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {          /* storm N: prints the port, then ns per connection */
    int n = atoi(argv[1]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(l, (void *)&sa, sizeof sa) || listen(l, 128) || getsockname(l, (void *)&sa, &len)) {
        perror("listen");
        return 1;
    }
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (void *)&sa, sizeof sa)) { perror("connect"); return 1; }
        int c = accept(l, NULL, NULL);      /* the server that does not ask who it is */
        close(c);                           /* the server closes first: TIME_WAIT is on its side, */
        close(s);                           /* so the client's ephemeral ports are not used up */
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def connect_storm(program: Path, n: int) -> dict:
    """One process making n loopback connections (connect and accept)."""
    p = subprocess.run([str(program), str(n)], capture_output=True, text=True, check=True)
    port, ns = p.stdout.split()
    return {"workload": "connect", "ops": n, "facts": 2 * n, "seconds": float(ns) * n / 1e9, "port": int(port),
            "program": str(program)}


def compile_c(work: Path, name: str, source: str) -> Path:
    (work / f"{name}.c").write_text(source)
    subprocess.run(["cc", "-O2", "-o", str(work / name), str(work / f"{name}.c")], check=True)
    return work / name


# ---- measuring ----------------------------------------------------------------------------------

QUIET = 0.02          # CPU seconds per half second (4 % of a core): the recorder has caught up


def catch_up(rec: Recorder, timeout: float = 120.0) -> None:
    """Wait until the recorder has handled the storm: at least 1.5 s (the agent flushes every
    second), then until its CPU and the collector's are quiet and its spool (fleet) is empty."""
    if rec.key == "none":
        return
    time.sleep(1.5)
    deadline = time.time() + timeout
    before = rec.cpu() + (rec.side_cpu() or 0.0)
    while time.time() < deadline:
        time.sleep(0.5)
        now = rec.cpu() + (rec.side_cpu() or 0.0)
        if now - before <= QUIET and rec.caught_up():
            return
        before = now
    print(f"warning: {rec.name} had not caught up after {timeout:.0f} s", file=sys.stderr)


def busy_fraction(seconds: float) -> float:
    """How busy the machine's CPUs were over the next `seconds` (all of them, from /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]            # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def settle(limit: float = 30.0) -> None:
    """Wait (up to `limit` s) until the machine is quiet before a storm: what the last recorder
    left behind - Laurel's backlog, a collector's last batch, a stopping agent's detach - would
    otherwise slow the next storm, whoever records it (ratios above 1 were seen for the agent,
    its storm run after one with nothing recording had been slowed by that)."""
    end = time.monotonic() + limit
    while busy_fraction(0.5) > 0.10 and time.monotonic() < end:
        pass


def measure(rec: Recorder, storm) -> dict:
    """One storm under rec: what it did and what rec spent on it (its record is counted later)."""
    settle()
    cpu0, side0, size0 = rec.cpu(), rec.side_cpu(), rec.written()
    lost0, over0 = rec.lost_so_far(), rec.over_so_far()
    run = storm()
    catch_up(rec)
    side1, size1 = rec.side_cpu(), rec.written()
    run.update(cpu=rec.cpu() - cpu0, side=None if side0 is None else side1 - side0,
               bytes=None if size0 is None else size1 - size0,
               lost=rec.lost_so_far() - lost0, over=rec.over_so_far() - over0)
    return run


def one_round(rec: Recorder, work: Path, round_: int, storms: list) -> list[dict]:
    """Start rec, run every storm under it, stop it, count what it recorded of each."""
    rec.start(work, round_)
    try:
        runs = [measure(rec, storm) for storm in storms]
        rec.remember(runs)
    finally:
        rec.stop()
    said = getattr(rec, "said_lost", 0)          # the agent's own count at stop (stderr)
    counted = sum(r["lost"] for r in runs)
    if said > counted and runs:                  # dropped after the last loss event was stored
        runs[-1]["lost"] += said - counted
    for run in runs:
        run["recorded"] = rec.recorded(run)
        run["late"] = rec.shipped_late(run)
    return runs


# ---- the tables ---------------------------------------------------------------------------------

TITLES = {
    "exec": ("exec storm", "execs", "exec"),
    "fork": ("fork storm", "forks", "fork"),
    "connect": ("connect storm", "connections", "connection"),
}


def summarize(runs: list[dict], base: float | None) -> dict:
    ops = runs[0]["ops"]
    rate = statistics.median(ops / r["seconds"] for r in runs)
    recorded = [r["recorded"] for r in runs]
    sides = [r["side"] for r in runs if r["side"] is not None]
    sizes = [r["bytes"] for r in runs if r["bytes"] is not None]
    return {
        "ops": ops, "rate": rate, "ratio": rate / base if base else 1.0,
        "cpu_us": statistics.median(r["cpu"] for r in runs) / ops * 1e6,
        "collector_us": statistics.median(sides) / ops * 1e6 if sides else None,
        "bytes": statistics.median(sizes) / ops if sizes else None,
        "missing": None if None in recorded else max(max(r["facts"] - r["recorded"], 0) for r in runs),
        "extra": None if None in recorded else max(max(r["recorded"] - r["facts"], 0) for r in runs),
        "lost": max(r["lost"] for r in runs), "over": max(r["over"] for r in runs),
        "late": max(r["late"] for r in runs), "rounds": len(runs),
    }


def table(workload: str, rows: dict[str, dict], skipped: dict[str, str]) -> None:
    title, plural, op = TITLES[workload]
    facts = " (facts: 2 per connection, a connect and an accept)" if workload == "connect" else ""
    print()
    print(f"**{title}**{facts}")
    print()
    print(f"| recorder | {plural}/s | ratio to none | recorder CPU per {op} | collector CPU per {op} | "
          f"bytes per {op} | facts missing | lost (said) |" + (" not recorded, said (budget) |"
                                                               if workload == "connect" else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if workload == "connect" else ""))
    for name, s in rows.items():
        if name == "none":
            print(f"| none | {s['rate']:,.0f} | 1.00 | - | - | - | - | - |" + (" - |" if workload == "connect" else ""))
            continue
        cells = [name, f"{s['rate']:,.0f}", f"{s['ratio']:.2f}", f"{s['cpu_us']:.1f} us",
                 "-" if s["collector_us"] is None else f"{s['collector_us']:.1f} us",
                 "-" if s["bytes"] is None else f"{s['bytes']:,.0f} B",
                 "not recorded" if s["missing"] is None else f"{s['missing']:,}", f"{s['lost']:,}"]
        if workload == "connect":
            cells.append(f"{s['over']:,}")
        print("| " + " | ".join(cells) + " |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--execs", type=int, default=12000, help="execs in the exec storm, each round")
    p.add_argument("--forks", type=int, default=40000, help="forks in the fork storm, each round (0: none); "
                   "a fork is ~7 times quicker than an exec: fewer make a storm too short to measure")
    p.add_argument("--connects", type=int, default=20000, help="connections in the connect storm (0: none)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--recorders", default=",".join(DEFAULT),
                   help=f"which recorders, besides none (default {','.join(DEFAULT)}; also: unbudgeted)")
    p.add_argument("--unbudgeted", action="store_true", help="also the agent (store mode) with no connection budget")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = p.parse_args()
    forks = args.forks
    keys = [k.strip() for k in args.recorders.split(",") if k.strip() and k.strip() != "none"]
    if args.unbudgeted and "unbudgeted" not in keys:
        keys.append("unbudgeted")
    unknown = [k for k in keys if k not in RECORDERS]
    if unknown:
        sys.exit(f"bench/agent_overhead.py: unknown recorder {', '.join(unknown)}; "
                 f"choose from {', '.join(k for k in RECORDERS if k != 'none')}")
    if os.geteuid() != 0:
        sys.exit("bench/agent_overhead.py needs root (BPF, auditd)")
    recs, skipped = [Recorder()], {}
    for k in keys:
        rec = RECORDERS[k]()
        why = rec.missing()
        if why:
            skipped[rec.name] = why
            print(f"skipping {rec.name}: {why}", file=sys.stderr)
        else:
            recs.append(rec)
    for k in ("store", "fleet", "unbudgeted"):
        if RECORDERS[k].name in skipped:               # the agent is what this bench is for
            sys.exit(f"bench/agent_overhead.py: the agent cannot run here: {skipped[RECORDERS[k].name]}")

    results: dict[str, dict[str, list[dict]]] = {r.name: {} for r in recs}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whodid-bench-agent-") as tmp:
        work = Path(tmp)
        mark = work / "true"
        mark.symlink_to("/bin/true")                  # its own name: another user's /bin/true is not the storm's
        storms = [lambda: exec_storm(mark, args.execs)]
        if forks:
            fork_prog = compile_c(work, "forks", FORKS)
            storms.append(lambda: fork_storm(fork_prog, forks))
        if args.connects:
            connect_prog = compile_c(work, "connects", CONNECTS)
            storms.append(lambda: connect_storm(connect_prog, args.connects))
        for r in range(args.rounds):
            order = recs[r % len(recs):] + recs[:r % len(recs)]     # each round starts with another one
            for rec in order:
                t = time.perf_counter()
                for run in one_round(rec, work, r, storms):
                    results[rec.name].setdefault(run["workload"], []).append(run)
                print(f"round {r + 1}/{args.rounds}: {rec.name} ({time.perf_counter() - t:.0f} s)", file=sys.stderr,
                      flush=True)
    took = time.perf_counter() - t_start

    workloads = [w for w in TITLES if w in results["none"]]
    summary: dict[str, dict[str, dict]] = {}
    for w in workloads:
        base = statistics.median(r["ops"] / r["seconds"] for r in results["none"][w])
        summary[w] = {name: summarize(by[w], base) for name, by in results.items()}
    print(f"conditions: {os.cpu_count()} cores; {args.rounds} alternating rounds (medians; missing and lost: the "
          f"worst round), each recorder started once a round and running the storms in turn; exec storm "
          f"{args.execs // 2 * 2:,} execs of /bin/true from 2 spawners plus a loopback connect/accept loop"
          + (f"; fork storm {forks // 2 * 2:,} forks (no exec) from 2 processes" if forks else "")
          + (f"; connect storm {args.connects:,} loopback connections from 1 process" if args.connects else "")
          + ". CPU: from each storm's start until the recorder has caught up (CPU quiet, spool empty). "
          "The agent as deployed (its default config, flush every second); fleet mode ships over HTTP to a "
          "local collector (`whodid serve`, its own store, its CPU apart); auditd and Laurel with whodid's "
          f"audit.rules; bytes: the store (fleet: the collector's), the logs, bpftrace's file. Took {took:.0f} s.")
    for w in workloads:
        table(w, summary[w], skipped)
    for name in summary.get("exec", {}):
        if name.startswith("whodid agent"):
            late = {w: summary[w][name]["late"] for w in workloads}
            print()
            print(f"{name}: facts that reached the record only when the agent stopped: "
                  + ", ".join(f"{w} {n:,}" for w, n in late.items())
                  + " (execs and forks: 0 when everything was written - in fleet mode shipped - while the agent "
                  "ran; connections over the budget are counted in the kernel and sent when their minute is "
                  "over, or at stop)")
    for w in workloads:
        for name, row in summary[w].items():
            if row["extra"]:
                print(f"\nwarning: {name} recorded {row['extra']:,} more {TITLES[w][1]} than the {w} storm made "
                      "(counted twice, or another process's)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "skipped": skipped, "seconds": took}, indent=1))

    print()
    for mode in ("store", "fleet"):
        name = RECORDERS[mode].name
        if name not in summary.get("exec", {}):
            continue
        s = summary["exec"][name]
        result(f"agent ({mode}): exec rate vs no recorder", s["ratio"], 0.90, "higher", "x")
        result(f"agent ({mode}): CPU per exec", s["cpu_us"], 40.0, "lower", "us")
        result(f"agent ({mode}): execs missing + lost", s["missing"] + s["lost"], 0, "lower", "")
        if "fork" in summary:
            f = summary["fork"][name]
            result(f"agent ({mode}): forks missing + lost", f["missing"] + f["lost"], 0, "lower", "")
        if "connect" in summary:
            c = summary["connect"][name]
            if mode == "store":
                result("agent (store): connect-storm rate vs no recorder", c["ratio"], 0.90, "higher", "x")
            result(f"agent ({mode}): connect-storm facts not recorded", c["missing"] + c["lost"], 0, "lower", "")
        if mode == "fleet":
            result("agent (fleet): execs and forks shipped only at stop",
                   sum(summary[w][name]["late"] for w in ("exec", "fork") if w in summary), 0, "lower", "")


if __name__ == "__main__":
    main()
