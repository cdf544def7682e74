"""Under an incident's load: ten people ask `/whodid` at once while the collector ingests at
its full rate.

Deployed as documented: one `whodid serve` process - the collector, and the Slack bot in HTTP
mode - freshly started, so the bot's first answers are cold (no question answered yet, nothing
cached; its drawing process warms up when it starts, as it does in deployment).
Slack is the local emulator (tests/slackemu.py), in this process: it sends signed slash
commands to the bot and records the Web API calls the bot makes, all real HTTP on loopback.
Agents are a separate feeder process (this script with --feed): the demo fleet's 22 hosts,
each a real spool and shipper (agent/spool.py, agent/ship.py) sending gzip batches to the
collector. It keeps every spool full for the whole run with fresh rounds of the demo fleet
(a new seed each: new boots, new processes - nothing is a replay), so the collector always
has work: its rate is its full rate.

The run: idle windows (no askers) interleaved with waves of askers - all at once, each a
different pattern that hits the store - so a noisy neighbour slows idle and busy windows
alike. For each asker, the time from the slash command to its picture and its chain in the
answer's thread (as bench/e2e_slack.py detects them); the first wave is the bot's first,
cold, answers. The ingest rate is the collector's own count of accepted events (its
/metrics), read every half second, over the idle windows and over the waves (from the first
slash command to the last answer). At the end the feeder drains its spools, and every event
it put is checked against what the store holds, per host and kind: nothing lost.

    .venv/bin/python bench/incident.py [--askers 10] [--waves 5] [--idle 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from result import result  # noqa: E402
from slackemu import BOT_TOKEN, SIGNING_SECRET, SlackEmulator  # noqa: E402

from whodid.bot.demo import story as demo  # noqa: E402
from whodid.tracer import Store  # noqa: E402

# What people ask during the demo's incident: each hits the store's last 24 hours (the
# incident, the day's sudo and aws and kubectl, the tmux session, carol's and dave's work).
PATTERNS = ["delete-cluster", "sudo", "aws*", "kubectl", "dropdb", "tmux", "pg_dump", "systemctl", "psql",
            "crictl"]
TARGET_P95 = 3.0
TARGET_RATIO = 0.8
POLL = 0.5                 # seconds between reads of the collector's counters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class TimedEmulator(SlackEmulator):
    """The emulator, noting when each message reached it (perf_counter), for the latencies."""

    def __init__(self):
        super().__init__()
        self.arrived: dict[int, float] = {}

    def m_chat_postMessage(self, p):
        out = super().m_chat_postMessage(p)
        if out.get("ok"):
            self.arrived[id(self.messages[-1])] = time.perf_counter()
        return out

    def m_files_completeUploadExternal(self, p):
        out = super().m_files_completeUploadExternal(p)
        if out.get("ok") and p.get("channel_id"):
            self.arrived[id(self.messages[-1])] = time.perf_counter()
        return out

    def answered(self, channel: str) -> tuple[float, float, float] | None:
        """(when the summary came, when the picture came in its thread, when both the picture and
        the chain had), or None while either is missing. Called with the emulator's lock held."""
        tops = self.top_level(channel)
        if not tops:
            return None
        thread = self.thread(channel, tops[0].ts)
        pics = [self.arrived[id(m)] for m in thread if m.files]
        chains = [self.arrived[id(m)] for m in thread if m.blocks and "```" in str(m.blocks)]
        if not pics or not chains:
            return None
        return self.arrived[id(tops[0])], min(pics), max(min(pics), min(chains))


class Counters:
    """The collector's accepted events, read from /metrics every POLL seconds: (time, total)."""

    def __init__(self, url: str):
        self.url = url + "/metrics"
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        with urllib.request.urlopen(self.url, timeout=30) as resp:
            text = resp.read().decode()
        return sum(int(float(m)) for m in re.findall(r'^whodid_events_accepted_total\{[^}]*\} (\S+)$', text, re.M))

    def _run(self):
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                n = self.read()
            except OSError:
                n = None
            if n is not None:
                self.samples.append((t, n))
            self.stop.wait(max(0.0, POLL - (time.perf_counter() - t)))

    def at(self, t: float) -> float:
        """Accepted events by time t, interpolated between samples."""
        s = self.samples
        before = max((x for x in s if x[0] <= t), default=s[0])
        after = min((x for x in s if x[0] >= t), default=s[-1])
        if after[0] == before[0]:
            return before[1]
        return before[1] + (after[1] - before[1]) * (t - before[0]) / (after[0] - before[0])

    def events(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start)


class Me:
    """This process (the emulated Slack and the askers), beside the Popen objects."""
    pid = os.getpid()


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of a process so far, its threads and its live children (the bot's
    drawing process) included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()} if children else set()
    except OSError:             # gone meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(map(cpu_seconds, kids))


# --- the feeder: the fleet's agents ---------------------------------------------------------

def feed(work: Path, url: str, ahead: int) -> None:
    """Run the fleet's shippers until SIGTERM, keeping `ahead` rounds of events waiting in the
    spools; then stop adding, drain the spools, and write what was put (per host and kind)."""
    from whodid.agent.ship import Shipper
    from whodid.agent.spool import Spool
    tokens = json.loads((work / "tokens.json").read_text())
    spools = {h: Spool(work / f"spool-{h}.db", host=h, boot="bench") for h in tokens}
    put: dict[str, Counter] = defaultdict(Counter)
    errors: list[str] = []
    stop_adding, stop_shipping = threading.Event(), threading.Event()
    shippers = {h: Shipper(spools[h], url, tokens[h], log=lambda m, *a, **k: errors.append(str(m)))
                for h in tokens}
    threads = [threading.Thread(target=shippers[h].run, args=(stop_shipping,), daemon=True) for h in tokens]
    signal.signal(signal.SIGTERM, lambda *_: stop_adding.set())
    rounds = 0
    one_round = None

    def pending() -> int:
        return sum(s.pending() for s in spools.values())

    started = False
    while not stop_adding.is_set():
        if one_round is None or pending() < ahead * one_round:
            fleet, _ = demo.build(time.time(), seed=1000 + rounds)   # a new seed: new boots, new processes
            by_host: dict[str, list] = defaultdict(list)
            for ev in fleet.events():
                by_host[ev["host"]].append(ev)
            for h, evs in by_host.items():
                spools[h].put(evs)
                put[h].update(ev["kind"] for ev in evs)
            one_round = sum(len(v) for v in by_host.values())
            rounds += 1
            continue
        if not started:
            for th in threads:
                th.start()
            started = True
            (work / "feeding").write_text(str(rounds))
        stop_adding.wait(0.1)
    if not started:
        for th in threads:
            th.start()
    # drain: everything put reaches the collector before the totals are written
    deadline = time.monotonic() + 600
    while pending() and time.monotonic() < deadline:
        time.sleep(0.2)
    for h in tokens:
        shippers[h].wake(stop_shipping)
    for th in threads:
        th.join(60)
    (work / "fed.json").write_text(json.dumps({"rounds": rounds, "put": put, "left": pending(),
                                               "errors": errors[:5]}))


# --- the run ------------------------------------------------------------------------------------

def write_config(path: Path, emu: SlackEmulator, slack_port: int, channels: list[str]) -> None:
    cfg = {"identity": {"people": demo.story_people()},
           "web": {"listen": f"127.0.0.1:{free_port()}"},
           "slack": {"mode": "http", "listen": f"127.0.0.1:{slack_port}", "api_base_url": emu.api_base_url,
                     # one channel per question, so each answer is found in its own; allowed by ID
                     "allowed_channels": channels}}
    path.write_text(json.dumps(cfg))            # JSON is YAML


def ask_wave(emu: TimedEmulator, slack_url: str, wave: int, askers: int, timeout: float) -> list[dict]:
    """`askers` people ask at once, each a different pattern in their own channel; returns each
    one's times (None where no picture came)."""
    out: list[dict] = [{} for _ in range(askers)]
    go = threading.Barrier(askers)

    def one(i: int) -> None:
        channel = f"C{wave}X{i}"
        pattern = PATTERNS[(i + wave) % len(PATTERNS)]
        rec = out[i]
        rec.update(wave=wave, pattern=pattern, summary=None, picture=None, answer=None)
        go.wait()
        t = time.perf_counter()
        rec["start"] = t
        status, body, _ = emu.slash(slack_url, pattern, channel_id=channel, user_id=f"U{i}", user_name=f"sre{i}")
        rec["ack"] = time.perf_counter() - t
        rec["acked"] = status == 200 and "Tracing" in body
        if not rec["acked"]:
            rec["error"] = f"{status} {body[:200]}"
            return
        try:
            summary, pic, done = emu.wait(lambda: emu.answered(channel), timeout=timeout, what=f"the answer in {channel}")
        except AssertionError:
            rec["error"] = "no picture within the timeout"
            return
        rec["summary"], rec["picture"], rec["answer"] = summary - t, pic - t, done - t

    threads = [threading.Thread(target=one, args=(i,)) for i in range(askers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def stored_by_kind(db: Path) -> dict[str, Counter]:
    """host -> event kind -> how many the store holds. A `host` event is its boot's first: each
    round starts a new boot on every host, so a host's boots count its `host` events."""
    store = Store.open(db)
    try:
        out = {h: Counter(k) for h, k in store.counts_by_host().items()}
        for host, boots in store.db.execute("SELECT h.name, count(*) FROM boots b JOIN hosts h ON h.id = b.host "
                                            "GROUP BY 1"):
            out.setdefault(host, Counter())["host"] = boots
        return out
    finally:
        store.close()


def run(askers: int, waves: int, idle: float, timeout: float, work: Path, log=print, ingest: bool = True) -> dict:
    db = work / "store.db"
    store = Store.open(db, create=True)
    tokens = {h: store.add_agent(h) for h, _ in demo.HOSTS}
    store.close()
    (work / "tokens.json").write_text(json.dumps(tokens))
    col_port, slack_port = free_port(), free_port()
    col_url = f"http://127.0.0.1:{col_port}"
    slack_url = f"http://127.0.0.1:{slack_port}/slack/events"
    channels = [f"C{w}X{i}" for w in range(waves) for i in range(askers)]
    procs: list[subprocess.Popen] = []
    with TimedEmulator() as emu:
        write_config(work / "whodid.yaml", emu, slack_port, channels)
        # the secrets in the environment, as deployed (a config file holding them must be private)
        env = dict(os.environ, WHODID_CONFIG=str(work / "whodid.yaml"), SLACK_BOT_TOKEN=BOT_TOKEN,
                   SLACK_SIGNING_SECRET=SIGNING_SECRET)
        try:
            serve = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "serve", "--db", str(db), "--listen",
                                      f"127.0.0.1:{col_port}", "--ready-file", str(work / "ready")],
                                     stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb"), env=env)
            procs.append(serve)
            _wait_for(lambda: (work / "ready").exists(), serve, work / "serve.log", "whodid serve to be ready")
            feeder = subprocess.Popen([sys.executable, __file__, "--feed", str(work), col_url],
                                      stdout=subprocess.DEVNULL, stderr=open(work / "feeder.log", "wb"))
            procs.append(feeder)
            counters = Counters(col_url)
            counters.thread.start()
            # warm up: the feeder's spools are full and the collector has taken its first batches
            _wait_for(lambda: (work / "feeding").exists() and counters.samples and counters.samples[-1][1] > 0,
                      feeder, work / "feeder.log", "the first batches")
            if not ingest:                  # the same questions on a store nothing writes to
                feeder.send_signal(signal.SIGTERM)
                feeder.wait(900)
            time.sleep(2)

            def cpu() -> dict[int, float]:
                return {Me.pid: cpu_seconds(Me.pid, children=False), **{p.pid: cpu_seconds(p.pid) for p in procs}}

            # idle, a wave, idle, a wave... idle: a noisy neighbour slows idle and busy windows alike
            idles, busies, answers = [], [], []
            for w in range(waves + 1):
                log(f"incident: idle ingest for {idle:g} s...")
                c0, t0 = cpu(), time.perf_counter()
                time.sleep(idle)
                idles.append((t0, time.perf_counter(), c0, cpu()))
                if w == waves:
                    break
                log(f"incident: wave {w + 1} of {waves}: {askers} askers at once...")
                c0 = cpu()
                recs = ask_wave(emu, slack_url, w, askers, timeout)
                start = min(r["start"] for r in recs)
                end = max(start + 0.5, *(r["start"] + (r["answer"] or 0) for r in recs))
                busies.append((start, end, c0, cpu()))
                answers += recs
            counters.stop.set()
            counters.thread.join()
            if feeder.poll() is None:
                feeder.send_signal(signal.SIGTERM)
                feeder.wait(900)
            serve.send_signal(signal.SIGTERM)
            serve.wait(120)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    fed = json.loads((work / "fed.json").read_text())
    stored = stored_by_kind(db)
    lost = {h: {k: n - stored.get(h, {}).get(k, 0) for k, n in kinds.items() if n != stored.get(h, {}).get(k, 0)}
            for h, kinds in fed["put"].items()}
    lost = {h: v for h, v in lost.items() if v}

    def rate(windows) -> float:
        return sum(counters.events(a, b) for a, b, _, _ in windows) / sum(b - a for a, b, _, _ in windows)

    def load(windows, pid: int) -> float:
        return sum(c1[pid] - c0[pid] for _, _, c0, c1 in windows) / sum(b - a for a, b, _, _ in windows)

    return {"ingest": ingest, "answers": answers, "idle_rate": rate(idles), "busy_rate": rate(busies),
            "idle_rates": [rate([x]) for x in idles], "busy_rates": [rate([x]) for x in busies],
            "busy_seconds": sum(b - a for a, b, _, _ in busies),
            "put": sum(sum(k.values()) for k in fed["put"].values()), "rounds": fed["rounds"],
            "left_in_spools": fed["left"], "feeder_errors": fed["errors"], "lost": lost,
            "cpu": {"serve": (load(idles, serve.pid), load(busies, serve.pid)),
                    "bench": (load(idles, Me.pid), load(busies, Me.pid)),
                    "feeder": (load(idles, feeder.pid), load(busies, feeder.pid))},
            "store_bytes": sum(f.stat().st_size for f in work.glob("store.db*"))}


def _wait_for(ready, proc: subprocess.Popen, logfile: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise SystemExit(f"incident: gave up waiting for {what}: the process exited "
                             f"({proc.returncode}): {logfile.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"incident: gave up waiting for {what} after {timeout:g} s: {logfile.read_text()[-2000:]}")
        time.sleep(0.05)


def report(r: dict, askers: int, waves: int, idle: float) -> None:
    got = [a for a in r["answers"] if a.get("answer") is not None]
    times = [a["answer"] for a in got]
    pics = [a["picture"] for a in got]
    acks = [a["ack"] for a in r["answers"] if "ack" in a]
    ratio = r["busy_rate"] / r["idle_rate"] if r["idle_rate"] else float("nan")
    print(f"conditions: one fresh `whodid serve` (collector + Slack bot in HTTP mode, emulated Slack) on a store "
          f"the demo fleet's 22 agents ship to at full rate from a separate process (fresh rounds of the demo "
          f"fleet, new seed each: {r['rounds']} rounds, {r['put']:,} events); {askers} askers at once, {waves} "
          f"waves, patterns {', '.join(PATTERNS)} (asker i asks pattern i + wave); idle windows of {idle:g} s "
          f"before, between and after the waves; {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")
    if not r["ingest"]:
        print("\n**--no-ingest: the agents stopped before the first question; nothing was written while people "
              "asked** (the bot's own latency, for comparison)")
    print()
    print("| measure | p50 | p95 | max | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| ack (HTTP answer to the slash command) | {statistics.median(acks):.2f} s | "
          f"{percentile(acks, 0.95):.2f} s | {max(acks):.2f} s | < 3 s (Slack's limit) |")
    if got:
        p95 = percentile(times, 0.95)
        sums = [a["summary"] for a in got]
        print(f"| slash command to the summary in the channel | {statistics.median(sums):.2f} s | "
              f"{percentile(sums, 0.95):.2f} s | {max(sums):.2f} s | |")
        print(f"| slash command to picture in the thread | {statistics.median(pics):.2f} s | "
              f"{percentile(pics, 0.95):.2f} s | {max(pics):.2f} s | |")
        print(f"| slash command to picture and chain in the thread | {statistics.median(times):.2f} s | "
              f"{p95:.2f} s | {max(times):.2f} s | p95 <= {TARGET_P95:g} s: {'met' if p95 <= TARGET_P95 else 'missed'} |")
    print()
    for w in range(waves):
        wave = r["answers"][w * askers:(w + 1) * askers]
        print(f"wave {w + 1}{' (cold bot)' if w == 0 else ''}: " + ", ".join(
            f"{a['pattern']} {a['answer']:.2f} s" if a.get("answer") is not None else f"{a['pattern']} none"
            for a in wave))
    print()
    cpu = r["cpu"]
    print("| ingest | seconds | events/s | `whodid serve` CPU | feeder (agents) CPU | emulated Slack CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| idle ({waves + 1} windows) | {(waves + 1) * idle:.0f} | {r['idle_rate']:,.0f} | {cpu['serve'][0]:.0%} | "
          f"{cpu['feeder'][0]:.0%} | {cpu['bench'][0]:.0%} |")
    print(f"| {askers} askers asking ({waves} waves) | {r['busy_seconds']:.1f} | {r['busy_rate']:,.0f} | "
          f"{cpu['serve'][1]:.0%} | {cpu['feeder'][1]:.0%} | {cpu['bench'][1]:.0%} |")
    print(f"| **under askers / idle** | | **{ratio:.2f}** (target >= {TARGET_RATIO}) | | | |")
    print()
    print("idle windows, events/s: " + ", ".join(f"{x:,.0f}" for x in r["idle_rates"])
          + "; waves: " + ", ".join(f"{x:,.0f}" for x in r["busy_rates"]))
    print()
    missing = len(r["answers"]) - len(got)
    print(f"answers with their picture: {len(got)} of {len(r['answers'])}"
          + (f" ({'; '.join(sorted({a.get('error', '?') for a in r['answers'] if a.get('answer') is None}))})"
             if missing else ""))
    print(f"events lost: {sum(sum(v.values()) for v in r['lost'].values())} of {r['put']:,} put "
          f"({r['left_in_spools']} left in spools); store {r['store_bytes'] / 1e6:,.0f} MB")
    if got:
        result("incident: picture in thread p95", percentile(times, 0.95), TARGET_P95, "lower", "s")
    if r["idle_rate"]:
        result("incident: ingest under askers / idle", ratio, TARGET_RATIO, "higher", "x")


def main() -> None:
    if sys.argv[1:2] == ["--feed"]:
        return feed(Path(sys.argv[2]), sys.argv[3], ahead=2)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--askers", type=int, default=10, help="people asking at once (default 10)")
    p.add_argument("--waves", type=int, default=5, help="times they all ask (default 5)")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of each idle ingest window, before, between "
                   "and after the waves (default 10)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds an asker waits for the picture")
    p.add_argument("--no-ingest", action="store_true", help="stop the agents once the store has its first "
                   "rounds: the same questions with nothing being written (to tell the bot's own latency apart)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--keep", help="work in this directory and keep it (the store, the logs)")
    args = p.parse_args()
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        r = run(args.askers, args.waves, args.idle, args.timeout, work,
                log=lambda m: print(m, file=sys.stderr, flush=True), ingest=not args.no_ingest)
    else:
        with tempfile.TemporaryDirectory(prefix="whodid-bench-incident-") as tmp:
            r = run(args.askers, args.waves, args.idle, args.timeout, Path(tmp),
                    log=lambda m: print(m, file=sys.stderr, flush=True), ingest=not args.no_ingest)
    if args.json:
        Path(args.json).write_text(json.dumps(r, default=str))
    report(r, args.askers, args.waves, args.idle)


if __name__ == "__main__":
    main()
