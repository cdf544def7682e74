"""auditd logs: how fast whodid imports them, and how much faster `whodid trace` answers than
walking the parents by hand with ausearch, on the same log.

A real auditd (agent/audit.rules) records a workload: N short processes, and a chain -
three nested shells whose innermost runs a marked command. Then, in one run:

- import: `whodid import-audit` of the log, records/s;
- by hand: the scripted ausearch walk an SRE would do - find the marked command's exec, read
  its ppid, find that process's exec, and so on up to pid 1 (`ausearch -i -p PID -sc execve`);
- whodid: `whodid trace MARKER` on the imported store (a full process start, like the walk's
  ausearch calls).

Needs root and auditd. `.venv/bin/python bench/audit.py [--execs 5000]`
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from auditd import Auditd, missing  # noqa: E402

MARK = "whodid-bench-marker"

sys.path.insert(0, str(Path(__file__).parent))
from result import result  # noqa: E402


def workload(n: int) -> None:
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"], check=True)
    subprocess.run(["sh", "-c", f"sh -c 'sh -c \"/bin/echo {MARK}\"'"], check=True, stdout=subprocess.DEVNULL)


def ausearch_walk(log: Path) -> tuple[float, int]:
    """The manual way: find the command, then each parent, with ausearch. (seconds, hops)"""
    t = time.perf_counter()
    out = subprocess.run(["ausearch", "-if", str(log), "-i", "-sc", "execve", "-x", "/usr/bin/echo"],
                         capture_output=True, text=True).stdout
    blocks = [b for b in out.split("----") if MARK in b]
    ppid = int(re.search(r" ppid=(\d+)", blocks[-1]).group(1))
    hops = 0
    while ppid > 1 and hops < 32:
        res = subprocess.run(["ausearch", "-if", str(log), "-i", "-p", str(ppid), "-sc", "execve"],
                             capture_output=True, text=True).stdout
        m = re.findall(r" ppid=(\d+)", res)
        hops += 1
        if not m:
            break
        ppid = int(m[-1])
    return time.perf_counter() - t, hops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--execs", type=int, default=5000, help="short processes in the workload (default 5000)")
    args = p.parse_args()
    why = missing()
    if why or os.geteuid() != 0:
        sys.exit(f"bench/audit.py needs root and auditd: {why or 'not root'}")
    with tempfile.TemporaryDirectory(prefix="whodid-bench-audit-") as tmp:
        work = Path(tmp)
        with Auditd(work / "auditd") as auditd:
            workload(args.execs)
            time.sleep(1.0)
        log = auditd.log
        records = sum(1 for _ in open(log, errors="replace"))
        size = log.stat().st_size
        db = work / "audit.db"
        whodid = [sys.executable, "-m", "whodid.bot.cli"]
        t = time.perf_counter()
        subprocess.run([*whodid, "import-audit", str(log), "--host", "bench", "--db", str(db)], check=True,
                       capture_output=True)
        t_import = time.perf_counter() - t
        t_walk, hops = ausearch_walk(log)
        t = time.perf_counter()
        res = subprocess.run([*whodid, "trace", MARK, "--db", str(db), "--limit", "1"], capture_output=True, text=True)
        t_trace = time.perf_counter() - t
        assert res.returncode == 0 and MARK in res.stdout, res.stdout + res.stderr
    print(f"conditions: {args.execs:,} short processes plus a 3-shell chain recorded by auditd with "
          f"agent/audit.rules: {records:,} records, {size:,} bytes ({size / (args.execs + 4):,.0f} per process); "
          f"{os.cpu_count()} cores")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| import-audit | {records / t_import:,.0f} records/s ({t_import:.2f} s) |")
    print(f"| ausearch walk to pid 1 ({hops} parents) | {t_walk:.2f} s |")
    print(f"| whodid trace (process start included) | {t_trace:.2f} s |")
    print(f"| whodid trace / ausearch walk | {t_trace / t_walk:.2f} |")
    result("whodid trace / ausearch walk (audit log)", t_trace / t_walk, 1.0, "lower", "x")


if __name__ == "__main__":
    main()
