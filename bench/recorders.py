"""The recorders bench/agent_overhead.py compares, each behind one small interface: start it,
read its own CPU and what it has written while it runs, wait until it has caught up, stop it,
then count what it recorded of one workload and what it said it lost.

- `none`: no recorder (the reference);
- `store`: whodid's agent in local mode (`whodid-agent run --db`), as deployed on one host;
- `fleet`: whodid's agent in fleet mode (`--spool --collector`) shipping, while it runs, to a
  real collector (`whodid serve`, its own store) started here; the collector's CPU is its own
  column, never added to the agent's;
- `unbudgeted`: `store` with no connection budget (agent.connection_budget.per_second 0);
- `auditd`: auditd with whodid's rules (agent/audit.rules); CPU = auditd + the kernel's kauditd;
- `laurel`: the same auditd with Laurel (Debian's `laurel`) as its plugin; CPU = auditd + kauditd
  + laurel; Laurel's JSON lines are what is counted;
- `bpftrace`: a one-line bpftrace exec printer writing to a file: the floor (it records execs
  only; BCC's execsnoop needs kprobes, which this kernel lacks).

Counting reads the record itself (the store's tables, the collector's store, the logs), so a
recorder that says it wrote something it did not shows as missing. Each workload leaves its own
marks (the exec storm's /bin/true under a path of the run's own, the fork storm's binary, the
connect storm's port), so one recorder's run can carry all three workloads and each is counted
apart, and another user's /bin/true on a shared machine is not counted as the storm's.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from auditd import Auditd, missing as auditd_missing  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, all its threads (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def kauditd() -> int | None:
    out = subprocess.run(["pgrep", "-x", "kauditd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def audit_lost() -> int:
    for line in subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("lost "):
            return int(line.split()[1])
    return 0


def files_size(*globs: tuple[Path, str]) -> int:
    return sum(p.stat().st_size for d, pattern in globs for p in d.glob(pattern) if p.is_file())


class Recorder:
    """The no-recorder reference; the base of the others."""
    key = "none"
    name = "none"

    def missing(self) -> str | None:
        """Why this recorder cannot run here (and what to install), or None."""
        return None

    def start(self, work: Path, round_: int) -> None:
        pass

    def cpu(self) -> float:
        return 0.0

    def side_cpu(self) -> float | None:
        """CPU of what serves the recorder but is not it (the collector), or None."""
        return None

    def written(self) -> int | None:
        return None

    def lost_so_far(self) -> int:
        """Records the recorder said it lost since it started (cumulative)."""
        return 0

    def over_so_far(self) -> int:
        """Connection records it said it did not record, by its budget (cumulative)."""
        return 0

    def caught_up(self) -> bool:
        return True

    def stop(self) -> None:
        pass

    def recorded(self, run: dict) -> int | None:
        """How many of run's facts the record holds (None: this recorder does not record them)."""
        return None

    def remember(self, runs: list[dict]) -> None:
        """Called just before stop(), once every run has caught up (fleet mode: what the
        collector holds then)."""

    def shipped_late(self, run: dict) -> int:
        """Of run's facts, how many reached the record only when the recorder was stopped."""
        return 0


# ---- whodid's agent ----------------------------------------------------------------------------

def agent_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        from whodid.agent.bccload import load_bcc
        load_bcc()
    except Exception as exc:
        return f"BCC is not usable: {exc}"
    return None


def start_agent(args: list[str], work: Path, env: dict | None = None) -> subprocess.Popen:
    ready = work / "agent.ready"
    ready.unlink(missing_ok=True)
    err = open(work / "agent.err", "w+")
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--auth-log", "none",
                              "--ready-file", str(ready), *args], stderr=err, env=env)
    agent.err = err
    deadline = time.time() + 120
    while not ready.exists():
        if agent.poll() is not None or time.time() > deadline:
            err.seek(0)
            raise RuntimeError(f"the agent did not start: {err.read()[-2000:]}")
        time.sleep(0.1)
    time.sleep(1.0)                     # the start-up snapshot is written; the storm starts after it
    return agent


def stop_agent(agent: subprocess.Popen) -> tuple[str, int]:
    """SIGTERM, wait; (its stderr, the records it said were lost)."""
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=120)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
    agent.err.seek(0)
    err = agent.err.read()
    agent.err.close()
    if agent.returncode:
        raise RuntimeError(f"the agent exited with {agent.returncode}: {err[-2000:]}")
    lost = int(err.rsplit(" records lost", 1)[0].rsplit(" ", 1)[-1]) if " records lost" in err else 0
    return err, lost


def count_in_store(db: Path, run: dict) -> int:
    """The run's facts in a whodid store (read-only; the agent or collector may still write)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        if run["workload"] == "exec":
            return con.execute("SELECT count(*) FROM execs WHERE cmd = ?", (run["program"],)).fetchone()[0]
        if run["workload"] == "fork":
            # the children of the fork storm's processes: forked, never exec'd
            return con.execute("SELECT count(*) FROM procs WHERE parent IN "
                               "(SELECT proc FROM execs WHERE exe = ? OR cmd LIKE ?)",
                               (run["program"], run["program"] + " %")).fetchone()[0]
        return con.execute("SELECT coalesce(sum(coalesce(n, 1)), 0) FROM conns WHERE "
                           "(dir = 'connect' AND rport = ?) OR (dir = 'accept' AND lport = ?)",
                           (run["port"], run["port"])).fetchone()[0]
    finally:
        con.close()


def store_bytes(db: Path) -> int:
    """The bytes a whodid store holds (its used pages, what is still in its WAL included): the
    files' sizes say little - the WAL is reused after each checkpoint, the file grows in steps."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        pages, free, size = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                                  "page_size"))
        return (pages - free) * size
    finally:
        con.close()


def losses_in_store(db: Path, budget: bool) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        op = "LIKE" if budget else "NOT LIKE"
        return con.execute(f"SELECT coalesce(sum(count), 0) FROM losses WHERE coalesce(what, '') {op} "
                           "'%budget%'").fetchone()[0]
    except sqlite3.OperationalError:          # not created yet
        return 0
    finally:
        con.close()


class Agent(Recorder):
    """What both modes share: the record is a store (self.db), counted before the agent is
    stopped too - what reaches it only at stop was held back (fleet: not shipped while it ran)."""

    def cpu(self):
        return cpu_seconds(self.agent.pid)

    def lost_so_far(self):
        return losses_in_store(self.db, budget=False)

    def over_so_far(self):
        return losses_in_store(self.db, budget=True)

    def recorded(self, run):
        return count_in_store(self.db, run)

    def remember(self, runs):
        self.before_stop = {id(run): count_in_store(self.db, run) for run in runs}

    def shipped_late(self, run):
        return self.recorded(run) - self.before_stop[id(run)]


class AgentStore(Agent):
    key = "store"
    name = "whodid agent, store mode"

    def __init__(self, config: dict | None = None):
        self.config = config
        self.agent = None

    def missing(self):
        return agent_missing()

    def start(self, work, round_):
        self.work = work
        self.db = work / f"{self.key}-{round_}.db"
        args = ["--db", str(self.db)]
        if self.config:
            cfg = work / f"{self.key}.yaml"
            cfg.write_text(json.dumps(self.config))
            args += ["--config", str(cfg)]
        self.agent = start_agent(args, work)
        self.said_lost = 0

    def written(self):
        return store_bytes(self.db)

    def stop(self):
        _, self.said_lost = stop_agent(self.agent)


class AgentUnbudgeted(AgentStore):
    key = "unbudgeted"
    name = "whodid agent, store mode, no connection budget"

    def __init__(self):
        super().__init__({"agent": {"connection_budget": {"per_second": 0}}})


class AgentFleet(Agent):
    key = "fleet"
    name = "whodid agent, fleet mode"
    HOST = "bench-fleet"

    def missing(self):
        return agent_missing()

    def start(self, work, round_):
        from whodid.tracer import Store
        self.work = work
        self.db = work / f"collector-{round_}.db"
        self.spool = work / f"spool-{round_}.db"
        store = Store.open(str(self.db), create=True)
        token = store.add_agent(self.HOST)
        store.close()
        ready = work / "collector.ready"
        ready.unlink(missing_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.collector_err = open(work / "collector.err", "w+")
        self.collector = subprocess.Popen(
            [sys.executable, "-m", "whodid.bot.cli", "serve", "--db", str(self.db), "--listen", f"127.0.0.1:{port}",
             "--ready-file", str(ready)], stderr=self.collector_err)
        deadline = time.time() + 60
        while not ready.exists():
            if self.collector.poll() is not None or time.time() > deadline:
                self.collector_err.seek(0)
                raise RuntimeError(f"the collector did not start: {self.collector_err.read()[-2000:]}")
            time.sleep(0.05)
        self.agent = start_agent(["--collector", f"http://127.0.0.1:{port}", "--spool", str(self.spool),
                                  "--host", self.HOST], work, env={**os.environ, "WHODID_AGENT_TOKEN": token})
        self.said_lost = 0

    def side_cpu(self):
        return cpu_seconds(self.collector.pid)

    def written(self):
        # what reaches the collector's store: the agent's spool is a queue, emptied as it ships
        return store_bytes(self.db)

    def pending(self) -> int:
        con = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            con.close()

    def caught_up(self):
        return self.pending() == 0

    def stop(self):
        try:
            _, self.said_lost = stop_agent(self.agent)
            self.left_in_spool = self.pending()
        finally:
            self.collector.send_signal(signal.SIGTERM)    # writes what it answered 200 for, then exits
            try:
                self.collector.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.collector.kill()
            self.collector_err.close()


# ---- auditd, and auditd + Laurel -------------------------------------------------------------

def count_in_audit_log(paths: list[Path], run: dict) -> int:
    n = 0
    if run["workload"] == "exec":
        needle = f'a0="{run["program"]}"'
        for p in paths:
            n += sum(1 for line in p.open(errors="replace") if "type=EXECVE" in line and needle in line)
        return n
    exe = f'exe="{run["program"]}"'
    calls = (" syscall=56 ", " syscall=57 ", " syscall=58 ", " syscall=435 ") if run["workload"] == "fork" else \
        (" syscall=42 ", " syscall=43 ", " syscall=288 ")
    for p in paths:
        for line in p.open(errors="replace"):
            if "type=SYSCALL" in line and exe in line and "success=yes" in line and any(c in line for c in calls):
                n += 1
    return n


class AuditdRecorder(Recorder):
    key = "auditd"
    name = "auditd (whodid's rules)"

    def missing(self):
        return auditd_missing()

    def plugins(self, work: Path, round_: int) -> dict[str, str]:
        return {}

    def start(self, work, round_):
        self.auditd = Auditd(work / f"{self.key}-{round_}", self.plugins(work, round_)).__enter__()
        time.sleep(0.5)
        k = kauditd()
        self.pids = [self.auditd.proc.pid] + ([k] if k else [])
        self.lost0 = audit_lost()

    def own_pids(self) -> list[int]:
        return self.pids

    def cpu(self):
        return sum(cpu_seconds(p) for p in self.own_pids())

    def written(self):
        return files_size((self.auditd.dir, "audit.log*"))

    def lost_so_far(self):
        return audit_lost() - self.lost0

    def stop(self):
        self.auditd.stop()

    def recorded(self, run):
        return count_in_audit_log(sorted(self.auditd.dir.glob("audit.log*")), run)


LAUREL_PLUGIN = """active = yes
direction = out
type = always
format = string
path = {laurel}
args = --config {config}
"""

# Debian's /etc/laurel/config.toml as shipped, its directory and log size changed (the bench's
# run must not rotate away what it counts)
LAUREL_CONFIG = """directory = "{directory}"
{user}statusreport-period = 0

[auditlog]
file = "audit.log"
size = 1000000000
generations = 2

[transform]
execve-argv = [ "array" ]

[translate]
universal = false
user-db = false

[enrich]
pid = true
execve-env = [ "LD_PRELOAD", "LD_LIBRARY_PATH" ]
container = true
script = true

[label-process]
label-keys = [ "software_mgmt" ]
propagate-labels = [ "software_mgmt" ]
"""


class LaurelRecorder(AuditdRecorder):
    key = "laurel"
    name = "auditd + Laurel"

    def missing(self):
        if not shutil.which("laurel"):
            return "install laurel (apt-get install laurel)"
        return auditd_missing()

    def plugins(self, work, round_):
        self.dir = work / f"laurel-{round_}"
        self.dir.mkdir(exist_ok=True)
        try:
            user = pwd.getpwnam("_laurel")
        except KeyError:
            user = None                     # no dedicated user: it stays root
        if user:
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            work.chmod(0o711)               # it drops to _laurel, which must reach its directory
        config = work / f"laurel-{round_}.toml"
        config.write_text(LAUREL_CONFIG.format(directory=self.dir, user='user = "_laurel"\n' if user else ""))
        return {"laurel.conf": LAUREL_PLUGIN.format(laurel=shutil.which("laurel"), config=config)}

    def start(self, work, round_):
        super().start(work, round_)
        deadline = time.time() + 30
        while not (self.dir / "audit.log").exists():
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"Laurel did not start under auditd (no {self.dir / 'audit.log'})")
            time.sleep(0.05)
        self.laurel = children(self.auditd.proc.pid)

    def own_pids(self):
        return self.pids + self.laurel

    def written(self):
        return files_size((self.auditd.dir, "audit.log*"), (self.dir, "audit.log*"))

    def recorded(self, run):
        n = 0
        for p in sorted(self.dir.glob("audit.log*")):
            for line in p.open(errors="replace"):
                if run["program"] not in line:
                    continue
                if run["workload"] == "exec":
                    if (json.loads(line).get("EXECVE", {}).get("ARGV") or [None])[0] == run["program"]:
                        n += 1
                    continue
                call = json.loads(line).get("SYSCALL", {})
                if call.get("exe") != run["program"] or call.get("success") != "yes":
                    continue
                sys_ = str(call.get("syscall"))
                if run["workload"] == "fork" and sys_ in ("56", "57", "58", "435", "clone", "fork", "vfork", "clone3"):
                    n += 1
                elif run["workload"] == "connect" and sys_ in ("42", "43", "288", "connect", "accept", "accept4"):
                    n += 1
        return n


# ---- bpftrace -------------------------------------------------------------------------------

BPFTRACE = 'tracepoint:syscalls:sys_enter_execve { printf("%d %d %s\\n", pid, uid, str(args->filename)); }'


class Bpftrace(Recorder):
    key = "bpftrace"
    name = "bpftrace exec printer (floor)"

    def missing(self):
        return None if shutil.which("bpftrace") else "install bpftrace (apt-get install bpftrace)"

    def start(self, work, round_):
        self.out = work / f"bpftrace-{round_}.txt"
        self.err = open(work / "bpftrace.err", "w+")
        self.proc = subprocess.Popen(["bpftrace", "-o", str(self.out), "-e", BPFTRACE],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        # its output to a file is fully buffered (as a printer's would be): the line it writes
        # before attaching its one probe is the sign, then a moment for the attach itself
        deadline = time.time() + 60
        while not (self.out.exists() and "Attaching" in self.out.read_text(errors="replace")):
            if self.proc.poll() is not None or time.time() > deadline:
                self.err.seek(0)
                raise RuntimeError(f"bpftrace did not start: {self.err.read()[-2000:]}")
            time.sleep(0.1)
        time.sleep(1.5)
        self.probe = work / "bpftrace-attached"      # an exec that fails still enters execve: checked at stop
        try:
            subprocess.run([str(self.probe)])
        except OSError:
            pass

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def written(self):
        return self.out.stat().st_size

    def lost_so_far(self):
        n = 0
        for line in self.out.open(errors="replace"):
            if line.startswith("Lost ") and line.rstrip().endswith(" events"):
                n += int(line.split()[1])
        return n

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()
        if str(self.probe) not in self.out.read_text(errors="replace"):
            raise RuntimeError("bpftrace was not attached when the storms began (its probe exec is not in its output)")

    def recorded(self, run):
        if run["workload"] != "exec":
            return None
        tail = f" {run['program']}\n"
        return sum(1 for line in self.out.open(errors="replace") if line.endswith(tail))


RECORDERS = {r.key: r for r in (Recorder, AgentStore, AgentFleet, AgentUnbudgeted, AuditdRecorder, LaurelRecorder,
                                Bpftrace)}
DEFAULT = ("store", "fleet", "auditd", "laurel", "bpftrace")
