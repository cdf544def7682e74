"""What recording costs the host: an exec storm, with no recorder, with whodid's agent, and with
auditd recording the same facts - in one run, alternating, so the machine's noise hits all three.

The workload: two spawners, each starting short processes (/bin/true) as fast as a shell can, so the
recorder competes with them for the CPU, plus a loopback connect/accept loop. For each recorder:

- throughput: the workload's exec rate, as a ratio to the no-recorder rate;
- CPU per exec: the recorder's own CPU time (the agent process; auditd plus the kernel's kauditd
  thread) divided by the execs - the kernel-side cost inside the workload shows in the throughput;
- bytes per exec: what the recorder wrote (the agent's JSON lines; auditd's log) per exec;
- lost: execs of the workload missing from the record, plus what the recorder itself reported lost.

Needs root, BCC and auditd. `.venv/bin/python bench/agent_overhead.py [--execs 20000] [--rounds 3]`
`--unbudgeted` adds the agent without its connection budget (agent.connection_budget.per_second 0)
to every round: what the budget costs the normal path, in the same run.
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


def with_agent(work: Path, execs: int, config: Path | None = None) -> dict:
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
    args = p.parse_args()
    why = missing()
    if why or os.geteuid() != 0:
        sys.exit(f"bench/agent_overhead.py needs root, BCC and auditd: {why or 'not root'}")
    runs: dict[str, list[dict]] = {"none": [], "whodid agent": [], "auditd": []}
    if args.unbudgeted:
        runs["whodid agent, no budget"] = []
    with tempfile.TemporaryDirectory(prefix="whodid-bench-agent-") as tmp:
        work = Path(tmp)
        unlimited = work / "unbudgeted.yaml"
        unlimited.write_text(json.dumps({"agent": {"connection_budget": {"per_second": 0}}}))
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}...", file=sys.stderr, flush=True)
            runs["none"].append({"seconds": workload(args.execs), "cpu": 0.0, "bytes": 0, "recorded": 0, "lost": 0})
            runs["whodid agent"].append(with_agent(work, args.execs))
            runs["auditd"].append(with_auditd(work, args.execs))
            if args.unbudgeted:
                runs["whodid agent, no budget"].append(with_agent(work, args.execs, unlimited))
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
    a = rows["whodid agent"]
    result("agent: exec rate vs no recorder", a[0], 0.90, "higher", "x")
    result("agent: CPU per exec", a[1], 40.0, "lower", "us")
    result("agent: execs missing + lost", a[3] + a[4], 0, "lower", "")
    print()
    print(f"targets: ratio >= 0.90 ({'met' if a[0] >= 0.90 else f'missed by {0.90 - a[0]:.2f}'}), "
          f"CPU <= 40 us/exec ({'met' if a[1] <= 40 else f'missed by {a[1] - 40:.0f} us'}), "
          f"nothing lost ({'met' if not a[3] and not a[4] else 'missed'})")


if __name__ == "__main__":
    main()
