"""A steady, realistic rate for minutes, as deployed (issue 23, target 2): fleet mode - the agent
capturing with BPF into its spool and shipping to a real local collector (`whodid serve`, its own
store) - while auditd, with whodid's rules, records the same load beside it.

The load, paced (not a storm): a few processes starting short commands with arguments (`echo -n`,
`basename`, `grep -q`, `sed -n` ...; one of them as the non-root user nobody), `--rate` execs a
second in all; one process making `--connects` loopback TCP connections a second; one writing
`--writes` files a second under a watched temporary directory. Every exec carries a unique marker
argument, so the store can be checked for each one: nothing lost, nothing twice.

Every `--sample-every` seconds: the agent's and the collector's resident memory, and the CPU time
so far of the agent, the collector, and auditd + the kernel's kauditd thread, each apart. Reported:

- the agent's CPU per exec, all-in (its connects, file changes, spool and shipping included);
- the agent's and the collector's resident memory, and its trend: the least-squares slope, MB a
  minute, over the second half of the run (the first half holds start-up and caches filling);
- auditd's CPU per exec (auditd + kauditd), on the same load;
- what the store holds of the load: execs missing, execs stored twice, connects and files.

Needs root, BCC and auditd. `.venv/bin/python bench/soak.py [--minutes 10] [--quick] [--seconds N]
[--rate 300] [--connects 50] [--writes 20] [--png FILE]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from agent_profile import PROFILED, cprofile_table, cpu_seconds, cpu_split  # noqa: E402
from auditd import Auditd, missing  # noqa: E402
from result import result  # noqa: E402

HOST = "soak-host"
USER = "nobody"                         # the non-root user one exec worker runs as
# short commands with arguments, as a host runs them; {m} is the exec's unique marker
COMMANDS = [
    ["true", "--soak", "{m}"],
    ["echo", "-n", "{m}"],
    ["printf", "%s\\n", "{m}"],
    ["basename", "/var/log/app/{m}.log"],
    ["dirname", "/srv/app/{m}/config.yaml"],
    ["expr", "length", "{m}"],
    ["grep", "-q", "{m}", "/etc/hostname"],
    ["sed", "-n", "/{m}/p", "/etc/hostname"],
    ["test", "-n", "{m}"],
]


# --- measuring ---------------------------------------------------------------------------

def run_seconds(pid: int) -> float:
    """CPU seconds of the live threads of a process as the scheduler counts them, in nanoseconds
    (/proc/PID/task/TID/schedstat), not by sampling at clock ticks as /proc/PID/stat does."""
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return ns / 1e9


def wakeups(pid: int) -> int:
    """Context switches of every thread of a process so far (voluntary: it waited and woke)."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    n += int(line.split()[1])
        except OSError:
            continue                                    # a thread that ended meanwhile
    return n


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, of it anonymous) in MB: the rest is mapped files (libraries: BCC's LLVM)."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            got[key] = int(value.split()[0]) / 1024
    return got["VmRSS"], got["RssAnon"]


def kauditd() -> int | None:
    out = subprocess.run(["pgrep", "-x", "kauditd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def audit_lost() -> int:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    m = re.search(r"^lost (\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MB) points, MB a minute (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def second_half(samples: list[dict], key: str) -> list[tuple[float, float]]:
    end = samples[-1]["t"]
    return [(s["t"] / 60, s[key]) for s in samples if s["t"] >= end / 2]


# --- the load ----------------------------------------------------------------------------

def marker(run: int, worker: int, i: int) -> str:
    return f"soak-{run}-w{worker}-n{i}"


MARK = re.compile(r"soak-(\d+)-w(\d+)-n(\d+)")


def paced(rate: float, start: float, until: float):
    """0, 1, 2, ... each at its time (start + i / rate), until `until`: a steady rate that does
    not drift when one step is slow (the next is due sooner, not later)."""
    i = 0
    while (due := start + i / rate) < until:
        if due > (now := time.time()):
            time.sleep(due - now)
        yield i
        i += 1


def exec_worker(run: int, worker: int, rate: float, start: float, until: float, as_user: str | None, made) -> None:
    """Start short commands at a steady `rate` a second from `start` to `until` (wall clock), each
    with its marker; `made` receives how many."""
    if as_user:
        pw = pwd.getpwnam(as_user)
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        os.chdir("/")
    paths = {c[0]: shutil.which(c[0]) for c in COMMANDS}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
             (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    for i in paced(rate, start, until):
        cmd = COMMANDS[(i + worker) % len(COMMANDS)]
        m = marker(run, worker, i)
        argv = [a.format(m=m) for a in cmd]
        pid = os.posix_spawn(paths[cmd[0]], argv, env, file_actions=quiet)
        os.waitpid(pid, 0)
        made.value = i + 1


def connect_worker(rate: float, start: float, until: float, port_out, made) -> None:
    """Loopback TCP connections at a steady `rate` a second to a listener of its own."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    port_out.value = srv.getsockname()[1]

    def accept_loop():
        while True:
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                return

    threading.Thread(target=accept_loop, daemon=True).start()
    for i in paced(rate, start, until):
        s = socket.create_connection(("127.0.0.1", port_out.value), timeout=5)
        s.close()
        made.value = i + 1
    time.sleep(0.5)                     # the last accepts
    srv.close()


def write_worker(watched: str, rate: float, start: float, until: float, made) -> None:
    """Files written at a steady `rate` a second under the watched directory: a config rewritten
    in place, as deploys and people do."""
    for i in paced(rate, start, until):
        with open(os.path.join(watched, f"app-{i}.conf"), "w") as fh:
            fh.write(f"setting = {i}\n")
        made.value = i + 1


# --- the deployment ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_file(path: Path, proc: subprocess.Popen, err: Path, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"soak: {what} did not start: {err.read_text()[-2000:]}")
        time.sleep(0.1)


def start_collector(work: Path) -> tuple[subprocess.Popen, str, str]:
    from whodid.tracer import Store
    db = work / "collector.db"
    token = Store.open(db, create=True).add_agent(HOST)
    port = free_port()
    ready, err = work / "collector.ready", work / "collector.err"
    proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "serve", "--db", str(db),
                             "--listen", f"127.0.0.1:{port}", "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_file(ready, proc, err, 60, "the collector")
    return proc, f"http://127.0.0.1:{port}", token


def start_agent(work: Path, url: str, token: str, watched: Path, profile: bool = False) -> subprocess.Popen:
    ready, err = work / "agent.ready", work / "agent.err"
    # under cProfile (each thread's own CPU clock: waiting counts for nothing), as agent_profile.py runs it
    head = [sys.executable, "-c", PROFILED, str(work / "prof")] if profile else [sys.executable, "-m", "whodid.agent.cli"]
    proc = subprocess.Popen([*head, "run", "--collector", url,
                             "--spool", str(work / "spool.db"), "--host", HOST, "--auth-log", "none",
                             "--watch", str(watched), "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                            env=dict(os.environ, WHODID_AGENT_TOKEN=token))
    wait_file(ready, proc, err, 180, "the agent")
    return proc


def stored_marks(db: Path, run: int) -> Counter:
    """How many times the store holds each exec of this run's load, by (worker, i)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        marks: Counter = Counter()
        for (cmd,) in conn.execute("SELECT cmd FROM execs WHERE cmd LIKE ?", [f"%soak-{run}-w%"]):
            for m in MARK.finditer(cmd):
                if int(m.group(1)) == run:
                    marks[(int(m.group(2)), int(m.group(3)))] += 1
        return marks
    finally:
        conn.close()


def stored_others(db: Path, port: int, watched: Path, since: float, until: float) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        one = lambda sql, args=(): conn.execute(sql, args).fetchone()[0] or 0  # noqa: E731
        return {
            # the agent records every process on the host: on a shared machine, others' too
            "all_execs": one("SELECT count(*) FROM execs WHERE ts >= ? AND ts <= ?", [since, until]),
            "loss_kinds": conn.execute("SELECT substr(what, 1, 60), sum(count) FROM losses GROUP BY 1 "
                                       "ORDER BY 2 DESC LIMIT 3").fetchall(),
            "connects": one("SELECT sum(coalesce(n, 1)) FROM conns WHERE dir = 'connect' AND rport = ?", [port]),
            "accepts": one("SELECT sum(coalesce(n, 1)) FROM conns WHERE dir = 'accept' AND lport = ?", [port]),
            "files": one("SELECT count(DISTINCT path) FROM files WHERE path LIKE ?", [f"{watched}/app-%.conf"]),
            "losses": one("SELECT sum(count) FROM losses"),
        }
    finally:
        conn.close()


def sample(t: float, agent: int, collector: int, audit_pids: list[int]) -> dict:
    a_rss, a_anon = memory_mb(agent)
    c_rss, c_anon = memory_mb(collector)
    a_user, a_sys = cpu_split(agent)
    return {"t": t, "agent_rss": a_rss, "agent_anon": a_anon, "collector_rss": c_rss, "collector_anon": c_anon,
            "agent_cpu": a_user + a_sys, "agent_sys": a_sys, "agent_wakeups": wakeups(agent),
            "agent_run": run_seconds(agent),
            "collector_cpu": cpu_seconds(collector),
            "audit_cpu": sum(cpu_seconds(p) for p in audit_pids)}


def chart(samples: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    mins = [s["t"] / 60 for s in samples]
    for key, label in (("agent_rss", "agent resident"), ("agent_anon", "agent anonymous"),
                       ("collector_rss", "collector resident"), ("collector_anon", "collector anonymous")):
        ax.plot(mins, [s[key] for s in samples], label=label)
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


# --- the run -----------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10, help="how long the load runs (default 10)")
    p.add_argument("--quick", action="store_true", help="one minute")
    p.add_argument("--seconds", type=float, help="how long the load runs, in seconds (tests)")
    p.add_argument("--rate", type=float, default=300, help="execs a second, in all (default 300)")
    p.add_argument("--workers", type=int, default=3, help="processes starting them (default 3; one as nobody)")
    p.add_argument("--connects", type=float, default=50, help="loopback TCP connections a second (default 50)")
    p.add_argument("--writes", type=float, default=20, help="files written a second under the watch (default 20)")
    p.add_argument("--sample-every", type=float, help="seconds between samples (default 10; 2 with --seconds)")
    p.add_argument("--no-auditd", action="store_true", help="without auditd beside the agent")
    p.add_argument("--png", help="draw memory over time into this PNG")
    p.add_argument("--keep", action="store_true", help="keep the work directory (stores, spool, logs)")
    p.add_argument("--profile", action="store_true",
                   help="run the agent under cProfile and print where its CPU went (slows it: read the shares)")
    args = p.parse_args()
    seconds = args.seconds or (60 if args.quick else args.minutes * 60)
    every = args.sample_every or (10 if seconds >= 120 else 2)
    if os.geteuid() != 0:
        raise SystemExit("soak: needs root (BPF, auditd)")
    why = None if args.no_auditd else missing()
    if why:
        raise SystemExit(f"soak: {why}")
    run = os.getpid()
    work = Path(tempfile.mkdtemp(prefix="whodid-soak-"))
    watched = work / "watched"
    watched.mkdir()
    collector, url, token = start_collector(work)
    agent = start_agent(work, url, token, watched, args.profile)
    auditd = None if args.no_auditd else Auditd(work / "auditd").__enter__()
    procs: list = []
    try:
        audit_pids = [] if auditd is None else [auditd.proc.pid] + ([k] if (k := kauditd()) else [])
        lost0 = audit_lost() if auditd else 0
        time.sleep(2)                                       # settle: the agent's start-up work is over
        ctx = mp.get_context("fork")
        start = time.time() + 1.0
        until = start + seconds
        made = [ctx.Value("l", 0) for _ in range(args.workers)]
        port, conns, writes = ctx.Value("i", 0), ctx.Value("l", 0), ctx.Value("l", 0)
        for w in range(args.workers):
            procs.append(ctx.Process(target=exec_worker, args=(run, w, args.rate / args.workers, start, until,
                                                               USER if w == 0 else None, made[w])))
        if args.connects:
            procs.append(ctx.Process(target=connect_worker, args=(args.connects, start, until, port, conns)))
        if args.writes:
            procs.append(ctx.Process(target=write_worker, args=(str(watched), args.writes, start, until, writes)))
        for pr in procs:
            pr.start()
        time.sleep(max(0.0, start - time.time()))
        samples = [sample(0.0, agent.pid, collector.pid, audit_pids)]
        due = every
        while any(pr.is_alive() for pr in procs):
            if agent.poll() is not None or collector.poll() is not None:
                raise SystemExit(f"soak: the {'agent' if agent.poll() is not None else 'collector'} stopped "
                                 f"under load; its log is in {work}")
            wait = start + due - time.time()
            if wait > 0:
                time.sleep(min(wait, 0.5))
                continue
            samples.append(sample(time.time() - start, agent.pid, collector.pid, audit_pids))
            due += every
        for pr in procs:
            pr.join()
        load_took = time.time() - start
        execs = sum(m.value for m in made)
        # the agent ships what it has; wait for the store to hold the load's execs (or stop growing)
        db = work / "collector.db"
        have, still = 0, time.time()
        while time.time() - still < 30:
            now_have = sum(stored_marks(db, run).values())
            if now_have >= execs:
                break
            if now_have != have:
                have, still = now_have, time.time()
            time.sleep(1)
        drained = time.time() - start
        end = sample(drained, agent.pid, collector.pid, audit_pids)
        samples.append(end)
        lost_audit = (audit_lost() - lost0) if auditd else 0
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        if auditd is not None:
            auditd.stop()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=120)
        except subprocess.TimeoutExpired:
            agent.kill()
    # what the agent left in its spool at stop (the last minute's connection counts come at
    # stop) goes now, as the next start would send it
    subprocess.run([sys.executable, "-m", "whodid.agent.cli", "forward", "--collector", url,
                    "--spool", str(work / "spool.db")], env=dict(os.environ, WHODID_AGENT_TOKEN=token),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    collector.send_signal(signal.SIGTERM)
    collector.wait(timeout=60)

    marks = stored_marks(work / "collector.db", run)
    expected = {(w, i) for w in range(args.workers) for i in range(made[w].value)}
    missing_execs = len(expected - set(marks))
    doubled = sum(1 for k, n in marks.items() if n > 1)
    strays = len(set(marks) - expected)
    others = stored_others(work / "collector.db", port.value, watched, start, start + drained)
    first = samples[0]
    a_cpu = end["agent_cpu"] - first["agent_cpu"]
    c_cpu = end["collector_cpu"] - first["collector_cpu"]
    au_cpu = end["audit_cpu"] - first["audit_cpu"]
    us = lambda cpu: cpu / max(execs, 1) * 1e6  # noqa: E731
    # the figure against the target: on a quiet host the two are the same; on a shared one the
    # agent also records (and pays for) the other processes' execs, which the load's count misses
    per_recorded = a_cpu / max(others["all_execs"], execs, 1) * 1e6
    a_slope = slope(second_half(samples, "agent_rss"))
    c_slope = slope(second_half(samples, "collector_rss"))
    a_anon_slope = slope(second_half(samples, "agent_anon"))
    c_anon_slope = slope(second_half(samples, "collector_anon"))

    print(f"Fleet mode as deployed: `whodid-agent run --collector` (BPF, spool) shipping to `whodid serve` on "
          f"loopback, {'without auditd' if args.no_auditd else 'auditd (whodid rules) recording beside it'}. "
          f"Load for {seconds / 60:.1f} min: {args.rate:g} execs/s from {args.workers} processes (one as "
          f"{USER}), {args.connects:g} loopback connects/s, {args.writes:g} file writes/s under a watched "
          f"directory; sampled every {every:g} s. {platform.platform()}, {os.cpu_count()} cores; a shared "
          f"machine, so CPU figures carry its noise.\n")
    print("| | value |")
    print("|---|---:|")
    rows = [
        ("execs made (rate achieved)", f"{execs:,} ({execs / load_took:.0f}/s)"),
        ("execs missing from the collector's store", f"{missing_execs:,}"),
        ("execs stored more than once", f"{doubled:,}"),
        ("connects made / stored (accepts stored)", f"{conns.value:,} / {others['connects']:,} ({others['accepts']:,})"),
        ("files written / stored", f"{writes.value:,} / {others['files']:,}"),
        ("loss events' count (agent said it dropped)", f"{others['losses']:,}"),
        ("execs the agent recorded meanwhile (the host's, others' too)", f"{others['all_execs']:,}"),
        ("agent CPU per exec, all-in: per exec of the load", f"{us(a_cpu):.1f} us ({a_cpu / drained * 100:.1f} % of a core)"),
        ("agent CPU per exec, all-in: per exec recorded", f"{per_recorded:.1f} us"),
        ("agent CPU per exec as the scheduler ran it (schedstat, live threads)",
         f"{us(end['agent_run'] - first['agent_run']):.1f} us"),
        ("of it in the kernel (system time), per exec of the load", f"{us(end['agent_sys'] - first['agent_sys']):.1f} us"),
        ("agent wake-ups a second (voluntary context switches, all threads)",
         f"{(end['agent_wakeups'] - first['agent_wakeups']) / drained:.0f}"),
        ("collector CPU per exec", f"{us(c_cpu):.1f} us ({c_cpu / drained * 100:.1f} % of a core)"),
        ("auditd + kauditd CPU per exec", "-" if args.no_auditd else
         f"{us(au_cpu):.1f} us ({au_cpu / drained * 100:.1f} % of a core; {lost_audit} records lost)"),
        ("agent resident memory: start / end (anonymous)",
         f"{first['agent_rss']:.0f} / {end['agent_rss']:.0f} MB ({first['agent_anon']:.0f} / {end['agent_anon']:.0f})"),
        ("agent memory trend, second half: resident (anonymous)", f"{a_slope:+.2f} ({a_anon_slope:+.2f}) MB/min"),
        ("collector resident memory: start / end (anonymous)",
         f"{first['collector_rss']:.0f} / {end['collector_rss']:.0f} MB "
         f"({first['collector_anon']:.0f} / {end['collector_anon']:.0f})"),
        ("collector memory trend, second half: resident (anonymous)", f"{c_slope:+.2f} ({c_anon_slope:+.2f}) MB/min"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nMemory over time (minutes: agent MB, collector MB): " +
          ", ".join(f"{s['t'] / 60:.1f}: {s['agent_rss']:.0f}, {s['collector_rss']:.0f}" for s in samples))
    if others["loss_kinds"]:
        print("\nWhat the agent said it did not record: " +
              "; ".join(f"{what}... ({n:,})" for what, n in others["loss_kinds"]))
    if strays:
        print(f"\n{strays} markers in the store that the load did not make: a bug in this benchmark")
    if args.png:
        chart(samples, Path(args.png), f"whodid soak: {args.rate:g} execs/s, {seconds / 60:.1f} min")
        print(f"\n![memory over time]({Path(args.png).name})")
    result("soak: agent CPU per exec, all-in", round(per_recorded, 1), 60, "lower", "us")
    result("soak: agent memory trend", round(a_slope, 3), 0.5, "lower", "MB/min")
    result("soak: collector memory trend", round(c_slope, 3), 0.5, "lower", "MB/min")
    result("soak: execs lost or doubled", missing_execs + doubled, 0, "lower", "execs")
    if args.profile:
        print("\nWhere the agent's CPU went (cProfile, each thread's own CPU; per exec of the load):\n")
        print(cprofile_table(work / "prof", max(execs, 1), limit=25))
    if args.keep:
        print(f"\n(work directory kept: {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
