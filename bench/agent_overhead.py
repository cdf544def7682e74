"""What recording costs the host: an exec storm, with no recorder, with whodid's agent, and with
auditd recording the same facts - in one run, alternating, so the machine's noise hits all three.

The workload: two spawners, each starting short processes (/bin/true) as fast as a shell can, so the
recorder competes with them for the CPU, plus a loopback connect/accept loop. For each recorder:

- throughput: the workload's exec rate, as a ratio to the no-recorder rate;
- CPU per exec: the recorder's own CPU time (the agent process; auditd plus the kernel's kauditd
  thread) divided by the execs - the kernel-side cost inside the workload shows in the throughput;
- bytes per exec: what the recorder wrote (the agent's JSON lines; auditd's log) per exec;
- lost: execs of the workload missing from the record, plus what the recorder itself reported lost.

Then a connect storm (issue 21): one process making short-lived loopback TCP connections as fast
as it can - socket, connect, accept(fd, NULL, NULL), close, N times, a small C loop (compiled here
with cc: a Python loop would hide the syscalls' cost under its own) - with no recorder, the agent
(its default connection budget, and none), and auditd recording connect and accept (whodid's
rules). For each: the connection rate as a ratio to none, the recorder's CPU per connection, and
what it recorded of the 2N facts made (N connects, N accepts), what it said it did not record (the
agent's budget: counted, in loss events), and what it lost.

Needs root, BCC and auditd. `.venv/bin/python bench/agent_overhead.py [--execs 20000] [--rounds 3]
[--connects 20000]` (`--connects 0`: no connect storm).
`--unbudgeted` adds the agent without its connection budget (agent.connection_budget.per_second 0)
to every round of the exec storm: what the budget costs the normal path, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from auditd import Auditd, missing  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
MARK = "/bin/true"

sys.path.insert(0, str(Path(__file__).parent))
from result import result  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def kauditd() -> int | None:
    out = subprocess.run(["pgrep", "-x", "kauditd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def workload(execs: int) -> float:
    """Two spawners of execs/2 short processes each, and a connect/accept loop; returns seconds."""
    half = execs // 2
    script = f"i=0; while [ $i -lt {half} ]; do {MARK}; i=$((i+1)); done"
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
    return elapsed


STORM = r"""
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


def connect_storm(storm: Path, n: int) -> dict:
    """One process making n loopback connections (connect and accept): seconds, its pid and port."""
    p = subprocess.run([str(storm), str(n)], capture_output=True, text=True, check=True)
    port, ns = p.stdout.split()
    return {"seconds": float(ns) * n / 1e9, "port": int(port)}


def start_agent(work: Path, config: Path | None = None) -> tuple[subprocess.Popen, Path]:
    out = work / "agent.jsonl"
    out.unlink(missing_ok=True)
    ready = work / "agent.ready"
    ready.unlink(missing_ok=True)
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--out", str(out), "--auth-log", "none",
                              "--ready-file", str(ready)] + (["--config", str(config)] if config else []),
                             stderr=subprocess.PIPE, text=True)
    while not ready.exists():
        if agent.poll() is not None:
            raise RuntimeError(agent.stderr.read())
        time.sleep(0.1)
    time.sleep(1.0)
    return agent, out


def storm_with_agent(work: Path, storm: Path, n: int, config: Path | None = None) -> dict:
    agent, out = start_agent(work, config)
    cpu0 = cpu_seconds(agent.pid)
    run = connect_storm(storm, n)
    time.sleep(2.5)                                        # the agent catches up, and reads its counters
    cpu1 = cpu_seconds(agent.pid)
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    recorded = over = 0
    for line in out.open():
        ev = json.loads(line)
        if ev["kind"] == "connect" and ev["rport"] == run["port"] or ev["kind"] == "accept" and ev["lport"] == run["port"]:
            recorded += ev.get("count", 1)
        elif ev["kind"] == "loss" and "per-user budget" in ev.get("what", ""):
            over += ev["count"]
    lost = int(err.rsplit(" records lost", 1)[0].rsplit(" ", 1)[-1]) if " records lost" in err else 0
    return {**run, "cpu": cpu1 - cpu0, "recorded": recorded, "over": over, "lost": lost}


def storm_with_auditd(work: Path, storm: Path, n: int) -> dict:
    with Auditd(work / "auditd") as auditd:
        time.sleep(0.5)
        k = kauditd()
        pids = [auditd.proc.pid] + ([k] if k else [])
        cpu0 = sum(cpu_seconds(p) for p in pids)
        lost0 = _audit_lost()
        run = connect_storm(storm, n)
        time.sleep(1.5)
        cpu1 = sum(cpu_seconds(p) for p in pids)
        lost1 = _audit_lost()
    recorded = 0
    exe = f'exe="{storm}"'
    for p in auditd.log.parent.glob("audit.log*"):
        for line in p.open(errors="replace"):
            if "type=SYSCALL" in line and exe in line and "success=yes" in line and (
                    " syscall=42 " in line or " syscall=43 " in line or " syscall=288 " in line):
                recorded += 1
    return {**run, "cpu": cpu1 - cpu0, "recorded": recorded, "over": 0, "lost": lost1 - lost0}


def with_agent(work: Path, execs: int, config: Path | None = None) -> dict:
    agent, out = start_agent(work, config)
    cpu0 = cpu_seconds(agent.pid)
    size0 = out.stat().st_size
    seconds = workload(execs)
    time.sleep(1.5)                                        # the agent catches up with what is queued
    cpu1 = cpu_seconds(agent.pid)
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    recorded = 0
    size1 = out.stat().st_size
    for line in out.open():
        ev = json.loads(line)
        if ev["kind"] == "exec" and ev["argv"][:1] == [MARK] or ev.get("exe") == MARK and ev["kind"] == "exec":
            recorded += 1
    lost = int(err.rsplit(" records lost", 1)[0].rsplit(" ", 1)[-1]) if " records lost" in err else 0
    return {"seconds": seconds, "cpu": cpu1 - cpu0, "bytes": size1 - size0, "recorded": recorded, "lost": lost}


def with_auditd(work: Path, execs: int) -> dict:
    with Auditd(work / "auditd") as auditd:
        time.sleep(0.5)
        k = kauditd()
        pids = [auditd.proc.pid] + ([k] if k else [])
        cpu0 = sum(cpu_seconds(p) for p in pids)
        size0 = auditd.log.stat().st_size
        lost0 = _audit_lost()
        seconds = workload(execs)
        time.sleep(1.5)
        cpu1 = sum(cpu_seconds(p) for p in pids)
        lost1 = _audit_lost()
        size1 = sum(p.stat().st_size for p in auditd.log.parent.glob("audit.log*"))
    recorded = 0
    for p in auditd.log.parent.glob("audit.log*"):
        recorded += sum(1 for line in p.open(errors="replace") if "type=EXECVE" in line and 'a0="/bin/true"' in line)
    return {"seconds": seconds, "cpu": cpu1 - cpu0, "bytes": size1 - size0, "recorded": recorded,
            "lost": lost1 - lost0}


def _audit_lost() -> int:
    for line in subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("lost "):
            return int(line.split()[1])
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--execs", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--unbudgeted", action="store_true", help="also the agent with no connection budget")
    p.add_argument("--connects", type=int, default=20000, help="connections in the connect storm (0: none)")
    args = p.parse_args()
    why = missing()
    if why or os.geteuid() != 0:
        sys.exit(f"bench/agent_overhead.py needs root, BCC and auditd: {why or 'not root'}")
    runs: dict[str, list[dict]] = {"none": [], "whodid agent": [], "auditd": []}
    if args.unbudgeted:
        runs["whodid agent, no budget"] = []
    storms: dict[str, list[dict]] = {"none": [], "whodid agent": [], "whodid agent, no budget": [], "auditd": []}
    with tempfile.TemporaryDirectory(prefix="whodid-bench-agent-") as tmp:
        work = Path(tmp)
        unlimited = work / "unbudgeted.yaml"
        unlimited.write_text(json.dumps({"agent": {"connection_budget": {"per_second": 0}}}))
        storm = work / "storm"
        if args.connects:
            (work / "storm.c").write_text(STORM)
            subprocess.run(["cc", "-O2", "-o", str(storm), str(work / "storm.c")], check=True)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}...", file=sys.stderr, flush=True)
            runs["none"].append({"seconds": workload(args.execs), "cpu": 0.0, "bytes": 0, "recorded": 0, "lost": 0})
            runs["whodid agent"].append(with_agent(work, args.execs))
            runs["auditd"].append(with_auditd(work, args.execs))
            if args.unbudgeted:
                runs["whodid agent, no budget"].append(with_agent(work, args.execs, unlimited))
            if args.connects:
                storms["none"].append({**connect_storm(storm, args.connects), "cpu": 0.0, "recorded": 0, "over": 0,
                                       "lost": 0})
                storms["whodid agent"].append(storm_with_agent(work, storm, args.connects))
                storms["whodid agent, no budget"].append(storm_with_agent(work, storm, args.connects, unlimited))
                storms["auditd"].append(storm_with_auditd(work, storm, args.connects))
    execs = args.execs // 2 * 2
    base = statistics.median(execs / r["seconds"] for r in runs["none"])
    print(f"conditions: {execs:,} execs of {MARK} from 2 parallel spawners plus a loopback connect/accept loop, "
          f"{args.rounds} alternating rounds (medians); {os.cpu_count()} cores; auditd with agent/audit.rules")
    print()
    print("| recorder | execs/s | ratio to none | CPU per exec | bytes per exec | execs missing | lost (reported) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for name, rs in runs.items():
        rate = statistics.median(execs / r["seconds"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs) / execs * 1e6
        size = statistics.median(r["bytes"] for r in rs) / execs
        missing_ = max(execs - min(r["recorded"] for r in rs), 0) if name != "none" else 0
        lost = max(r["lost"] for r in rs)
        rows[name] = (rate / base, cpu, size, missing_, lost)
        if name == "none":
            print(f"| {name} | {rate:,.0f} | 1.00 | - | - | - | - |")
        else:
            print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {cpu:.0f} us | {size:,.0f} B | {missing_:,} | {lost:,} |")
    if args.connects:
        connect_table(storms, args.connects, args.rounds)
    a = rows["whodid agent"]
    result("agent: exec rate vs no recorder", a[0], 0.90, "higher", "x")
    result("agent: CPU per exec", a[1], 40.0, "lower", "us")
    result("agent: execs missing + lost", a[3] + a[4], 0, "lower", "")
    print()
    print(f"targets: ratio >= 0.90 ({'met' if a[0] >= 0.90 else f'missed by {0.90 - a[0]:.2f}'}), "
          f"CPU <= 40 us/exec ({'met' if a[1] <= 40 else f'missed by {a[1] - 40:.0f} us'}), "
          f"nothing lost ({'met' if not a[3] and not a[4] else 'missed'})")


def connect_table(storms: dict[str, list[dict]], n: int, rounds: int) -> None:
    base = statistics.median(n / r["seconds"] for r in storms["none"])
    print()
    print(f"connect storm: {n:,} loopback TCP connections from one process (socket, connect, accept(fd, NULL, "
          f"NULL), close), {rounds} alternating rounds (medians); each makes {2 * n:,} facts: a connect and an accept")
    print()
    print("| recorder | connections/s | ratio to none | CPU per connection | recorded of 2N | not recorded, "
          "said (budget) | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in storms.items():
        rate = statistics.median(n / r["seconds"] for r in rs)
        if name == "none":
            print(f"| {name} | {rate:,.0f} | 1.00 | - | - | - | - |")
            continue
        cpu = statistics.median(r["cpu"] for r in rs) / n * 1e6
        recorded = min(r["recorded"] for r in rs)
        over = max(r["over"] for r in rs)
        lost = max(r["lost"] for r in rs)
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {cpu:.1f} us | {recorded:,} | {over:,} | {lost:,} |")
        if name == "whodid agent":
            agent = (rate / base, 2 * n - recorded)
    result("agent: connect-storm rate vs no recorder", agent[0], 0.90, "higher", "x")
    result("agent: connect-storm facts not recorded", agent[1], 0, "lower", "")


if __name__ == "__main__":
    main()
