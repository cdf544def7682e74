"""auditd's logs as a source of whodid events: for hosts that cannot run the BPF agent, and for
incidents that happened before whodid was installed.

Three pure stages, each testable with fixtures:

    parse_record(line)  -> Record           one line: node, type, time, serial, fields
    Grouper             -> [Record, ...]    the records of one event, by serial, as ausearch groups
    AuditAssembler      -> schema-v1 events a process table turns SYSCALL/EXECVE/... into exec,
                                             fork, exit, cred, connect and login events

Audit identifies a process by pid alone; `start` is the time (ms) of the clone that created
it, or 0 for a process already running when the log begins, or its first record's time for a
pid reused without its clone recorded. A pid's process ends at its exit record, or - the exit
lost or never asked for - where a clone or a contradicting parent shows a new one; a child
logged before its parent's vfork, or a process reparented to init, stays one process
(docs/audit.md, "Processes"). A process whose exec is not in the log gets an image from its
record's comm and exe, marked `snapshot`. Audit has no boot id, and the kernel numbers serials, pids and audit
sessions anew at each boot: a reboot in the log (serials beginning again at a later time)
begins a new boot, named `audit:<host>@<its first record's time>`, with a new process table,
so a pid or session id of one boot never names another's process or login. The boot a log
begins in is `audit:<host>`; the live tail, which reads only what is written while it runs,
names it by the kernel's boot id, `audit:<host>:<boot id>`. Audit does not record a connection's local port, so ssh hops from
audit logs are joined by address and time (marked inferred); sshd's login is tied to the
connection its listener accepted, as the BPF agent does.
"""

from __future__ import annotations

import re
import socket
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from whodid.tracer.events import AUDIT_BOOT_PREFIX, fit_argv

AUID_UNSET = 4294967295
LINE = re.compile(r"^(?:node=(?P<node>\S+) )?type=(?P<type>\S+) msg=audit\((?P<ts>\d+(?:\.\d+)?):(?P<serial>\d+)\):?\s?(?P<body>.*)$")
# a key begins where a word does: tried inside a long run of letters (a hostile or corrupt line
# with no `=`), the key pattern would scan to the run's end from every letter - quadratic
FIELD = re.compile(r"""(?<![\w\-\[\]])([A-Za-z_][\w\-\[\]]*)=("[^"]*"|'[^']*'|\S*)""")
# checked as a run of hex digits of even length: a repeated pair group, `(?:[0-9A-F]{2})+`, keeps
# ~70 bytes of regex state per character - 700 MB for one 10 MB argument
HEX = re.compile(r"[0-9A-F]+")
# string fields audit writes as hex when they hold spaces, quotes or control characters
ARG = re.compile(r"a\d+")                 # an EXECVE argument: a0, a1, ...
CHUNK = re.compile(r"a\d+\[\d+\]")       # a part of a long argument: a1[0], a1[1], ...
STRINGS = {"comm", "exe", "cwd", "name", "cmd", "proctitle", "acct", "terminal", "hostname", "key", "op"}

# syscall numbers by audit arch, for logs not written in auditd's ENRICHED format
SYSCALLS = {
    "c000003e": {59: "execve", 322: "execveat", 56: "clone", 57: "fork", 58: "vfork", 435: "clone3",
                 105: "setuid", 106: "setgid", 113: "setreuid", 114: "setregid", 117: "setresuid",
                 119: "setresgid", 42: "connect", 43: "accept", 288: "accept4", 231: "exit_group", 60: "exit"},
    "c00000b7": {221: "execve", 281: "execveat", 220: "clone", 435: "clone3", 146: "setuid", 144: "setgid",
                 145: "setreuid", 143: "setregid", 147: "setresuid", 149: "setresgid", 203: "connect",
                 202: "accept", 242: "accept4", 94: "exit_group", 93: "exit"},
}
CLONE_THREAD = 0x10000
SERIAL_WRAP = 2 ** 32      # the kernel's event serial is an unsigned 32-bit counter
TS_MAX = 2 ** 34           # seconds: past the year 2500, not a time a real clock writes
EINPROGRESS = -115
GROUP_LAG = 200            # a group is complete once serials this far past it are seen
UNFORKED_KEPT = 4096       # exited processes whose clone record may still come (vfork), kept at most
BRIEF_BOOT = 10.0           # seconds: a "boot" shorter than this is another host's serials, not a reboot
GROUP_QUIET = 2.0          # live mode: ... or once it has had no new record for this many seconds
# records that may make an event on their own, with no EOE: user-space messages (with an EOE
# and a SYSCALL only when the sending syscall was audited too), and LOGIN on older kernels
MAYBE_ALONE = {"LOGIN", "USER_LOGIN", "USER_START", "USER_END", "CRED_ACQ", "CRED_DISP", "CRED_REFR", "USER_AUTH", "USER_ACCT",
              "USER_CMD", "USER_LOGOUT", "USER_ERR", "USER_CHAUTHTOK", "USER_MGMT", "ADD_USER", "DEL_USER",
              "CRYPTO_KEY_USER", "CRYPTO_SESSION", "SERVICE_START", "SERVICE_STOP", "USER_AVC", "USER_ROLE_CHANGE",
              "USER_SELINUX_ERR", "USER_MAC_POLICY_LOAD", "SYSTEM_BOOT", "SYSTEM_SHUTDOWN", "SYSTEM_RUNLEVEL",
               "DAEMON_START", "DAEMON_END", "DAEMON_CONFIG", "DAEMON_ROTATE", "DAEMON_ABORT", "CONFIG_CHANGE"}
USER_TYPES = {"USER_LOGIN", "USER_START", "USER_END", "CRED_ACQ", "CRED_DISP", "CRED_REFR", "USER_AUTH",
              "USER_ACCT", "USER_CMD", "LOGIN", "USER_LOGOUT", "USER_ERR"}


class AuditLineError(ValueError):
    pass


@dataclass
class Record:
    node: str | None
    type: str
    ts: float
    serial: int
    fields: dict[str, Any]
    enriched: dict[str, str]


def parse_record(line: str) -> Record:
    """One audit log line. Raises AuditLineError for anything that is not one."""
    raw, _, enriched = line.rstrip("\n").partition("\x1d")
    m = LINE.match(raw)
    if not m:
        raise AuditLineError("not an audit record")
    body = m.group("body")
    try:
        ts, serial = float(m.group("ts")), int(m.group("serial"))
    except ValueError:                  # a serial of thousands of digits: Python refuses to convert it
        raise AuditLineError("not an audit record: serial out of range") from None
    if not (0 <= ts < TS_MAX and serial < SERIAL_WRAP):
        # the kernel's serial is 32 bits and its time a real clock's; an infinite time would
        # break every computation downstream (a start of int(inf))
        raise AuditLineError("not an audit record: time or serial out of range")
    return Record(node=m.group("node"), type=m.group("type"), ts=ts, serial=serial,
                  fields=parse_fields(body), enriched={k: _unquote(v) for k, v in FIELD.findall(enriched)})


def parse_fields(body: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in FIELD.findall(body):
        if key == "msg" and value.startswith("'"):
            out.update(parse_fields(value[1:-1]))          # user-space records nest their fields
            continue
        out[key] = decode_value(key, value)
    return out


def decode_value(key: str, value: str) -> Any:
    """A field's value as text, or None for audit's "no value" words. The parts of a long
    argument (`a1[0]`, `a1[1]`) stay bytes: the kernel cuts them at byte counts, so a character
    may span two parts, and only the joined whole decodes (AuditAssembler._execve_args)."""
    if key[-1] == "]" and CHUNK.fullmatch(key):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1].encode("utf-8", "surrogateescape")
        return bytes.fromhex(value) if _is_hex(value) else value.encode("utf-8", "surrogateescape")
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        inner = value[1:-1]
        # some writers quote the no-value words (tty="(none)"); an argument may really be "(none)"
        if inner in ("(null)", "(none)") and not ARG.fullmatch(key):
            return None
        return inner
    if value in ("(null)", "(none)", "?"):
        return None
    if (key in STRINGS or ARG.fullmatch(key)) and _is_hex(value):
        return bytes.fromhex(value).decode("utf-8", "replace")
    return value


def _is_hex(value: str) -> bool:
    return len(value) % 2 == 0 and HEX.fullmatch(value) is not None


def _unquote(v: str) -> str:
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'" else v


def sockaddr(hexstr: str) -> tuple[str, int] | None:
    """(address, port) from a SOCKADDR record's raw struct, for AF_INET and AF_INET6; else None."""
    try:
        raw = bytes.fromhex(hexstr)
    except (TypeError, ValueError):
        return None
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        from whodid.tracer.events import plain_ip
        return plain_ip(raw[8:24]), port
    return None


# --- grouping ------------------------------------------------------------------------------------

class Grouper:
    """Collects records into events by (node, serial): records of different events may be
    interleaved. An event is complete at its EOE record, or when records far past its serial
    arrive (live: when it has been quiet a while); complete events leave in serial order, so an
    event whose EOE comes early waits for the events before it (auditd may write EOEs out of
    order, and the assembler must see a clone before its child's exec). Only user-space
    records, which often have no EOE, wait apart without holding the others back."""

    def __init__(self):
        self.pending: dict[tuple[str | None, int], list[Record]] = {}
        # node -> serials pending: a log of many hosts' records (node=) is searched one host at a
        # time; scanning every host's pending groups at each record made such a log quadratic
        self.nodes: dict[str | None, set[tuple[int, float]]] = {}
        # an event is one serial at one time: records of one serial at two times are two events -
        # two hosts' in a log written without node= names (auditd's default name_format = none).
        # Joined, one host's EXECVE gave another host's syscall its arguments.
        self.open: Counter = Counter()          # (node, serial) -> groups pending
        self.mixed = 0                          # groups that shared a pending group's serial
        self.complete: set[tuple[str | None, int]] = set()
        self.latest: dict[str | None, int] = {}
        self.arrived: dict[tuple[str | None, int], float] = {}     # live mode: when a group last grew

    def feed(self, rec: Record, now: float | None = None) -> list[list[Record]]:
        key = (rec.node, rec.serial, rec.ts)
        if rec.type == "EOE":
            if key in self.pending:
                self.complete.add(key)
            return self._ready(rec.node)
        done = []
        latest = self.latest.get(rec.node)
        if latest is not None and rec.serial + 1000 < latest:     # serials restarted (a reboot): close all
            done += [self._take((rec.node, *st)) for st in sorted(self.nodes.get(rec.node, ()))]
            latest = None
        self.latest[rec.node] = rec.serial if latest is None else max(latest, rec.serial)
        if key not in self.pending:
            if self.open[key[:2]]:
                self.mixed += 1
            self.open[key[:2]] += 1
        self.pending.setdefault(key, []).append(rec)
        serials = self.nodes.setdefault(rec.node, set())
        serials.add((rec.serial, rec.ts))
        if now is not None:
            self.arrived[key] = now
        # a record only completes groups by pushing the horizon past one: look only then
        horizon = self.latest[rec.node] - GROUP_LAG
        if any(st[0] < horizon for st in serials):
            done += self._ready(rec.node)
        return done

    def _ready(self, node) -> list[list[Record]]:
        """The complete groups of node that no incomplete, recent group precedes, in serial order.
        A group of user-space records alone does not hold the others back: it has an EOE only
        when the syscall that sent it was audited too, so it may wait for its horizon."""
        horizon = self.latest.get(node, 0) - GROUP_LAG
        keys = [(node, *st) for st in self.nodes.get(node, ())]
        if not keys or not self._passable(min(keys), horizon):      # the usual case, without sorting
            return []
        done = []
        for key in sorted(keys):
            if key in self.complete or key[1] < horizon:
                done.append(self._take(key))
            elif not self._passable(key, horizon):
                break
        return done

    def _passable(self, key, horizon: int) -> bool:
        return key in self.complete or key[1] < horizon or all(r.type in MAYBE_ALONE for r in self.pending[key])

    def flush_quiet(self, now: float, quiet: float) -> list[list[Record]]:
        """Groups that have not grown for `quiet` seconds of our own clock: complete, on a quiet
        host's live log. Judged by when the records *arrived*, not by their timestamps: a group
        read late (auditd's buffered writes, a busy agent) is old by its timestamps while its
        EXECVE line may still be on its way, and closing it then loses the command's arguments."""
        self.complete.update(k for k in self.pending if self.arrived.get(k, float("-inf")) < now - quiet)
        return [g for node in {k[0] for k in self.pending} for g in self._ready(node)]

    def flush(self) -> list[list[Record]]:
        groups = [self.pending[k] for k in sorted(self.pending, key=lambda k: (str(k[0]), k[1], k[2]))]
        self.pending.clear()
        self.nodes.clear()
        self.open.clear()
        self.arrived.clear()
        self.complete.clear()
        return groups

    def _take(self, key) -> list[Record] | None:
        self.arrived.pop(key, None)
        self.complete.discard(key)
        self.nodes.get(key[0], set()).discard(key[1:])
        if key in self.pending:
            self.open[key[:2]] -= 1
            if not self.open[key[:2]]:
                del self.open[key[:2]]
        return self.pending.pop(key, None)


# --- assembling ------------------------------------------------------------------------------------

@dataclass
class Proc:
    """One incarnation of a pid: `start` names it (docs/audit.md's process rules); `ppid` and
    `pstart` are its parent as first seen (kept across reparenting); `seen` the time of its
    first record; `forked` whether the clone that made it was seen."""
    start: int
    uid: int | None = None
    euid: int | None = None
    gid: int | None = None
    egid: int | None = None
    auid: int | None = None
    ses: int | None = None
    ppid: int | None = None
    pstart: int = 0
    seen: float = 0.0
    forked: bool = False


@dataclass
class ImportReport:
    lines: int = 0
    records: Counter = field(default_factory=Counter)      # by type: read
    used: Counter = field(default_factory=Counter)         # by type: turned into events
    skipped: Counter = field(default_factory=Counter)      # why
    samples: list[str] = field(default_factory=list)       # a few garbage lines
    events: Counter = field(default_factory=Counter)       # events made, by kind
    gaps: list[tuple[str, int, int, float, float]] = field(default_factory=list)   # host, after, missing, t0, t1
    seen_running: int = 0          # images made from comm/exe for processes whose exec is not in the log
    mixed: int = 0                 # events that shared a serial with another at another time (hosts mixed)
    reboots: Counter = field(default_factory=Counter)      # host -> serials beginning again (a new boot)
    brief_boots: int = 0           # "reboots" seconds after the last: no machine boots that fast (hosts mixed)

    def garbage(self, line: str, why: str) -> None:
        self.skipped[why] += 1
        if len(self.samples) < 5:          # shown to people: a shell history given by mistake keeps its secrets
            from .redact import redact_text
            self.samples.append(f"{why}: {redact_text(line)[:120]!r}")

    def summary(self) -> str:
        out = [f"read {self.lines:,} lines, {sum(self.records.values()):,} records; made "
               + (", ".join(f"{n:,} {k}" for k, n in sorted(self.events.items())) or "no events")]
        for t, n in sorted(self.records.items(), key=lambda kv: -kv[1]):
            out.append(f"  {t:<14} {n:>9,} read  {self.used.get(t, 0):>9,} used")
        if self.skipped:
            out.append("skipped: " + ", ".join(f"{n:,} {why}" for why, n in self.skipped.most_common()))
            out += [f"  e.g. {s}" for s in self.samples]
        if self.seen_running:
            n = self.seen_running
            out.append(f"{n:,} process{'es were' if n != 1 else ' was'} already running (no exec in the log): "
                       "on chains as the program's name and path (comm, exe), without arguments")
        for host, n in sorted(self.reboots.items()):
            out.append(f"{host}: {n:,} reboot{'s' if n != 1 else ''} (serials beginning again): each boot has its own processes")
        if self.mixed or self.brief_boots:
            why = ", ".join(w for w in (f"{self.mixed:,} events shared a serial with another at another time"
                                        if self.mixed else "",
                                        f"serials began again {self.brief_boots:,} times within {BRIEF_BOOT:.0f} s"
                                        if self.brief_boots else "") if w)
            out.append(f"this log seems to mix hosts without node= names ({why}), so their pids may be confused: "
                       "import each host's log apart with --host, or set name_format in auditd.conf")
        if self.gaps:
            missing = sum(g[2] for g in self.gaps)
            out.append(f"{missing:,} records lost by the kernel or auditd (gaps in serial numbers, "
                       f"{len(self.gaps)} places; traces crossing them say so)")
        return "\n".join(out)


class AuditAssembler:
    def __init__(self, host: str, report: ImportReport | None = None, boot: str | None = None,
                 passwd: dict[int, str] | None = None):
        self.default_host = host
        self.passwd = passwd or {}          # uid -> name on the logged host (--passwd), where the log names none
        self.boot_id = boot                 # the kernel's, when the log is read live on its host
        self.boots: dict[str, str] = {}     # host -> the boot its records now belong to
        # host -> when its boot began, for boots the log shows beginning (the first one's start is unknown)
        self.boot_began: dict[str, float] = {}
        self.latest_ts: dict[str, float] = {}                                # host -> latest record time
        self.report = report or ImportReport()
        self.procs: dict[tuple[str, int], Proc] = {}
        self.children: dict[tuple[str, int], list] = {}      # child pid -> [parent, pstart, ts, conn, child]
        self.clones: dict[tuple[str, int], deque] = {}       # parent pid -> its clones not yet seen running
        self.accepts: dict[tuple[str, int], deque] = {}                      # listener -> peers accepted
        self.conn_of: dict[tuple[str, int], tuple[str, int]] = {}            # sshd child -> its peer
        self.parents: dict[tuple[str, int], int] = {}
        self.incarnations: dict[tuple[str, int], int] = {}                   # pid -> the start of its latest process
        self.unforked: dict[tuple[str, int], Proc] = {}      # exited before their clone was logged (oldest first)
        self.auth: dict[tuple[str, int], str] = {}                           # pid -> login method seen
        self.authed: dict[tuple[str, int], dict] = {}        # pid -> sshd's USER_AUTH: acct, addr, rport
        self.logged_in: set[tuple[str, int]] = set()
        self.stamps: dict[str, tuple[float, int]] = {}
        self.serials: dict[str, tuple[int, float]] = {}                      # host -> last (serial, time)

    def host(self, rec: Record) -> str:
        return rec.node or self.default_host

    def feed(self, group: list[Record]) -> list[dict[str, Any]]:
        first = group[0]
        host = self.host(first)
        if not first.type.startswith("DAEMON_"):          # auditd numbers its own records apart
            if self._rebooted(host, first):
                self._new_boot(host, first.ts)
            self._serial(host, first)
            self.latest_ts[host] = max(first.ts, self.latest_ts.get(host, first.ts))
        # audit stamps to the millisecond; a shell's exec of sudo often shares its millisecond with
        # the shell's own exec, and the store keys an exec by (process, time). Events within one
        # millisecond get microsecond steps, in serial order, the same on every import.
        ms = round(first.ts, 3)
        last = self.stamps.get(host)
        n = last[1] + 1 if last and last[0] == ms else 0
        self.stamps[host] = (ms, n)
        for r in group:
            r.ts = ms + min(n, 999) * 1e-6
        by_type: dict[str, list[Record]] = {}
        for r in group:
            by_type.setdefault(r.type, []).append(r)
        if "SYSCALL" in by_type:
            # the kernel logs a login uid's setting (LOGIN) in the event of the write to
            # /proc/self/loginuid that set it: the login is the process's before the syscall
            logins = [ev for r in by_type.get("LOGIN", []) for ev in self._user(host, r)]
            return logins + self._syscall(host, by_type)
        if first.type in USER_TYPES:
            return self._user(host, first)
        return []

    def boot(self, host: str) -> str:
        name = self.boots.get(host)
        if name is None:
            name = self.boots[host] = (f"{AUDIT_BOOT_PREFIX}{host}:{self.boot_id}" if self.boot_id
                                       else f"{AUDIT_BOOT_PREFIX}{host}")
        return name

    def _rebooted(self, host: str, rec: Record) -> bool:
        """Whether rec is of a later boot than the records before it: its serial is far lower
        than the highest seen (as Grouper judges), or lower and one of a boot's first (a new
        boot's serials begin at 1; the boot before may have logged few) and later than every
        record seen. Within one boot a serial comes out of order only by a few - two CPUs
        logging at once - and a record's time is when its syscall began, which may be long
        before it is logged (an accept that waited), so time alone proves nothing."""
        last = self.serials.get(host)
        if last is None or rec.serial >= last[0] or _wrapped(last[0], rec.serial):
            return False
        return rec.serial + 1000 < last[0] or (rec.serial < 1000 and rec.ts > self.latest_ts.get(host, rec.ts))

    def _new_boot(self, host: str, ts: float) -> None:
        """A new boot begins at ts: the kernel numbers pids and audit sessions anew, so the
        process table and what hangs on it are the old boot's and are forgotten."""
        self.boots[host] = f"{AUDIT_BOOT_PREFIX}{host}@{ts:.3f}"
        self.report.reboots[host] += 1
        if ts - self.boot_began.get(host, float("-inf")) < BRIEF_BOOT:
            self.report.brief_boots += 1
        self.boot_began[host] = ts
        for table in (self.procs, self.children, self.clones, self.accepts, self.conn_of, self.parents, self.auth,
                      self.incarnations, self.unforked, self.authed):
            for key in [k for k in table if k[0] == host]:
                del table[key]
        self.logged_in = {k for k in self.logged_in if k[0] != host}
        self.serials.pop(host, None)          # serials beginning again are not lost records

    def _serial(self, host: str, rec: Record) -> None:
        last = self.serials.get(host)
        if last is not None and rec.serial > last[0] + 1 and rec.serial - last[0] < 1_000_000:
            self.report.gaps.append((host, last[0], rec.serial - last[0] - 1, last[1], rec.ts))
        if last is not None and _wrapped(last[0], rec.serial) and rec.serial > 0:
            missing = (SERIAL_WRAP - last[0] - 1) + rec.serial       # the kernel's serial counter wrapped
            if missing:
                self.report.gaps.append((host, last[0], missing, last[1], rec.ts))
        if last is None or rec.serial > last[0] or rec.serial + 1000 < last[0]:
            self.serials[host] = (rec.serial, rec.ts)

    # --- syscalls ---------------------------------------------------------------------------------

    def _syscall(self, host: str, by_type: dict[str, list[Record]]) -> list[dict[str, Any]]:
        sc = by_type["SYSCALL"][0]
        f = sc.fields
        name = sc.enriched.get("SYSCALL") or SYSCALLS.get(str(f.get("arch")), {}).get(_int(f.get("syscall")))
        if name is None:
            self.report.skipped[f"syscall {f.get('syscall')} (arch {f.get('arch')}) not used"] += 1
            return []
        pid = _int(f.get("pid"))
        if pid is None:
            return []
        ok = f.get("success") == "yes"
        out = self._touch(host, pid, sc, name)
        proc = self.procs[(host, pid)]
        base = {"v": 1, "host": host, "boot": self.boot(host), "ts": round(sc.ts, 6), "pid": pid, "start": proc.start}
        used = lambda: self.report.used.update(r.type for rs in by_type.values() for r in rs)
        if name in ("execve", "execveat"):
            if not ok:
                self.report.skipped["failed execs"] += 1
                return out
            argv, cut = self._argv(by_type)
            # auditd logs every argument whole; the schema has limits, and a command cut to them
            # is stored where a whole one would be refused (padding could hide a command)
            argv, over = fit_argv(argv or [f.get("comm") or "?"])
            ev = {**base, "kind": "exec", "argv": argv, **self._ids(sc)}
            if cut or over:
                ev["truncated"] = True
            if f.get("exe"):
                ev["exe"] = f["exe"]
            if by_type.get("CWD") and by_type["CWD"][0].fields.get("cwd"):
                ev["cwd"] = by_type["CWD"][0].fields["cwd"]
            if f.get("comm"):
                ev["comm"] = f["comm"]
            if f.get("tty"):
                ev["tty"] = f["tty"]
            # the parent the table knows: after reparenting the record says 1 (or a subreaper)
            if proc.ppid is not None and proc.ppid != pid:
                ev["ppid"], ev["pstart"] = proc.ppid, proc.pstart
            old_euid = proc.euid
            self._update(proc, sc)
            out.append(ev)
            if old_euid is not None and proc.euid is not None and old_euid != proc.euid:
                out.append({**base, "kind": "cred", "via": "exec", "old_uid": proc.uid, "old_euid": old_euid,
                            "uid": proc.uid, "euid": proc.euid, **_names(sc, "cred", self.passwd)})
            used()
        elif name in ("clone", "fork", "vfork", "clone3"):
            child = _int(f.get("exit"))
            if ok and child and child > 0:
                flags = _int(f.get("a0"), 16) if name == "clone" else 0
                late = None if (flags or 0) & CLONE_THREAD else self._late_clone(host, child, pid, proc.start, sc.ts)
                if late:
                    out.append(late)
                    used()
                elif not (flags or 0) & CLONE_THREAD:
                    # a listener's child serves what it accepted: sshd forks it right after its
                    # accept, so the newest; an older one left means the clone that served it
                    # was lost, and taking it would give this child another's client
                    peers = self.accepts.get((host, pid))
                    conn = peers.pop() if peers else None
                    if peers:
                        peers.clear()
                    # the child's pid as the parent saw it; inside a pid namespace that is not the pid
                    # audit will log for the child, so it is also found by its parent and order
                    entry = [pid, proc.start, sc.ts, conn, child]
                    self.children[(host, child)] = entry
                    self.clones.setdefault((host, pid), deque(maxlen=256)).append(entry)
                    used()
        elif name.startswith(("setuid", "setreuid", "setresuid", "setgid", "setregid", "setresgid")):
            if ok:
                old = (proc.uid, proc.euid, proc.gid, proc.egid)
                self._update(proc, sc)
                if old[0] is not None and (old[0], old[1], old[2], old[3]) != (proc.uid, proc.euid, proc.gid, proc.egid):
                    ev = {**base, "kind": "cred", "via": name, "old_uid": old[0], "old_euid": old[1],
                          "uid": proc.uid, "euid": proc.euid, **_names(sc, "cred", self.passwd)}
                    if old[2] is not None:
                        ev.update(old_gid=old[2], old_egid=old[3], gid=proc.gid, egid=proc.egid)
                    out.append(ev)
                    used()
        elif name == "connect":
            peer = self._peer(by_type)
            if peer and (ok or _int(f.get("exit")) == EINPROGRESS):
                # the local end is not in the audit record: 0.0.0.0:0 says "unknown" to the trace
                out.append({**base, "kind": "connect", "laddr": "0.0.0.0", "lport": 0, "raddr": peer[0],
                            "rport": peer[1]})
                used()
        elif name in ("accept", "accept4"):
            peer = self._peer(by_type)
            if ok and peer:
                self.accepts.setdefault((host, pid), deque(maxlen=64)).append(peer)
                used()
        elif name in ("exit_group", "exit"):
            out.append({**base, "kind": "exit", "code": _int(f.get("a0"), 16) or 0})
            gone = self.procs.pop((host, pid), None)
            self._forget_session(host, pid)
            if gone is not None and not gone.forked:
                # a vfork child may exec and exit before its parent's clone is logged
                self.unforked[(host, pid)] = gone
                if len(self.unforked) > UNFORKED_KEPT:
                    del self.unforked[next(iter(self.unforked))]
            used()
        return out

    def _touch(self, host: str, pid: int, sc: Record, name: str) -> list[dict[str, Any]]:
        """Make sure pid's current process is in the table: the one known, unless this record
        shows a new one (see _ended); then its fork event when a clone was seen for it, or, for
        a process already running whose first record is not its exec, an image from the
        record's comm and exe (_seen_running)."""
        key = (host, pid)
        ppid_seen = _int(sc.fields.get("ppid"))
        born = self.children.get(key)
        known = self.procs.get(key)
        if born is not None and born[0] != ppid_seen and not (
                ppid_seen == 1 and (host, born[0]) not in self.procs and not (known is not None and known.ppid == 1)):
            # another parent's clone: in a pid namespace its return value is not the pid audit logs.
            # Unless this record says init and that parent has exited: then it is ours, reparented -
            # but not when the pid's known process is init's child itself (a daemon): a container's
            # short-lived process cloning its own pid 700 must not end the host's sshd 700
            born = None
        if known is not None:
            if born is not None and born[2] <= known.seen and not known.forked and known.ppid in (None, born[0]):
                # its own clone, older than its first record (a login record named it first)
                self._forget_clone(host, born)
                known.forked = True
                return [{"v": 1, "kind": "fork", "host": host, "boot": self.boot(host), "ts": round(born[2], 6),
                         "pid": pid, "start": known.start, "ppid": born[0], "pstart": born[1]}]
            if not self._ended(host, known, born, ppid_seen):
                if known.ppid is None and ppid_seen is not None:        # known until now by a login record
                    known.ppid, known.pstart = ppid_seen, self._start_of(host, ppid_seen)
                    self.parents[key] = ppid_seen
                return []
            del self.procs[key]
            self._forget_session(host, pid)
        out = []
        if born is None:
            queue = self.clones.get((host, ppid_seen))
            born = queue[0] if queue else None
        if born:
            self._forget_clone(host, born)
            ppid, pstart, ts, conn, _ = born
            if conn:
                self.conn_of[key] = conn
            start = int(ts * 1000)
            self.parents[key] = ppid
            out.append({"v": 1, "kind": "fork", "host": host, "boot": self.boot(host), "ts": round(ts, 6),
                        "pid": pid, "start": start, "ppid": ppid, "pstart": pstart})
            parent = self.procs.get((host, ppid))
            # the child starts with its parent's credentials; this record may already show them
            # changed (an exec of sudo), which the caller compares against
            proc = Proc(start, *(astuple_ids(parent) if parent else (None,) * 6), ppid=ppid, pstart=pstart,
                        seen=sc.ts, forked=True)
            if parent is None:
                self._update(proc, sc)
        else:
            # no clone seen: running when the log began (start 0) - or, for a pid this log has
            # seen before, a new process whose clone was not recorded, named by this first record
            before = self.incarnations.get(key)
            start = 0 if before is None else max(int(sc.ts * 1000), before + 1)
            proc = Proc(start, ppid=ppid_seen, pstart=self._start_of(host, ppid_seen), seen=sc.ts)
            if ppid_seen is not None:
                self.parents[key] = ppid_seen
            self._update(proc, sc)
            if name not in ("execve", "execveat", "exit", "exit_group"):
                out.append(self._seen_running(host, pid, proc, sc))
        self.procs[key] = proc
        self.incarnations[key] = proc.start
        return out

    def _ended(self, host: str, known: Proc, born: list | None, ppid_seen: int | None) -> bool:
        """Whether a record of pid shows a process other than `known`, whose exit was not
        recorded. The kernel reuses a pid once its process is gone; audit says so only by an
        exit record, which may be lost or not asked for. Another process it is when
        - a clone by the record's parent (or, the record saying init, by anyone: its child may
          have been reparented before its first record) made this pid after `known` was first
          seen, or
        - the record's parent contradicts the known one, and is not where an orphan goes: init
          (pid 1), or - once the known parent's exit was recorded - an ancestor of it (a
          subreaper such as systemd --user). A process keeps its parent for life otherwise."""
        if born is not None and born[2] > known.seen:
            return True
        if ppid_seen is None or known.ppid is None or ppid_seen == known.ppid or ppid_seen == 1:
            return False
        if (host, known.ppid) in self.procs:
            return True
        return not self._is_ancestor(host, ppid_seen, known.ppid)

    def _is_ancestor(self, host: str, ancestor: int, pid: int) -> bool:
        seen = 0
        cur = self.parents.get((host, pid))
        while cur is not None and seen < 32:
            if cur == ancestor:
                return True
            cur = self.parents.get((host, cur))
            seen += 1
        return False

    def _forget_session(self, host: str, pid: int) -> None:
        """A pid's process is gone: what its sshd said (authentication, login, connection) is
        not the next process's on that pid - a later login there is another person's."""
        key = (host, pid)
        self.logged_in.discard(key)
        for table in (self.auth, self.authed, self.conn_of):
            table.pop(key, None)

    def _current(self, host: str, pid: int, ts: float) -> Proc:
        """pid's process for a user-space record (which names no parent): the one known, unless
        a clone made this pid after that one was first seen - then a new process, named by that
        clone (or, its clone not seen, by its place after the pid's last process)."""
        key = (host, pid)
        known, born = self.procs.get(key), self.children.get(key)
        if known is not None and (born is None or born[2] <= known.seen):
            return known
        if known is not None:
            del self.procs[key]
            self._forget_session(host, pid)
        before = self.incarnations.get(key)
        start = (int(born[2] * 1000) if born is not None
                 else 0 if before is None else max(int(ts * 1000), before + 1))
        proc = self.procs[key] = Proc(start, seen=ts)
        self.incarnations[key] = start
        return proc

    def _start_of(self, host: str, pid: int | None) -> int:
        """The start of pid's process as the table knows it now; 0 (already running) else."""
        proc = self.procs.get((host, pid)) if pid is not None else None
        return proc.start if proc else 0

    def _seen_running(self, host: str, pid: int, proc: Proc, sc: Record) -> dict[str, Any]:
        """A process already running when the log began, whose exec is not in it (a shell that
        forks, an sshd that accepts): an image from what its record says - the program's name
        (comm) and path (exe), no arguments - so it stands on a chain with its user and login
        uid. Marked `snapshot`, the schema's mark for an image not seen at its exec (as the
        agent's /proc snapshot); `ts` is this first record's time, not the exec's."""
        f = sc.fields
        comm = f.get("comm")
        ev = {"v": 1, "kind": "exec", "host": host, "boot": self.boot(host), "ts": round(sc.ts, 6), "pid": pid,
              "start": proc.start, "argv": [str(comm or f.get("exe") or "?")], "snapshot": True, **self._ids(sc)}
        if f.get("exe"):
            ev["exe"] = f["exe"]
        if comm:
            ev["comm"] = comm
        if f.get("tty"):
            ev["tty"] = f["tty"]
        if proc.ppid is not None and proc.ppid != pid:
            ev["ppid"], ev["pstart"] = proc.ppid, proc.pstart
        self.report.seen_running += 1
        return ev

    def _late_clone(self, host: str, child: int, parent: int, pstart: int, ts: float) -> dict[str, Any] | None:
        """The fork of a child already seen, when the clone's record comes after the child's own
        (vfork and posix_spawn: the parent resumes, and is logged, after the child's exec - or
        after its exit): the child's process, not a new one. Its clone is older than anything
        known of it."""
        known = self.procs.get((host, child)) or self.unforked.get((host, child))
        if known is None or known.forked or known.ppid != parent or _ms(known.seen) < _ms(ts):
            return None
        known.forked = True
        self.unforked.pop((host, child), None)
        return {"v": 1, "kind": "fork", "host": host, "boot": self.boot(host), "ts": round(min(ts, known.seen), 6),
                "pid": child, "start": known.start, "ppid": parent, "pstart": pstart}

    def _forget_clone(self, host: str, entry: list) -> None:
        ppid, child = entry[0], entry[4]
        if self.children.get((host, child)) is entry:
            del self.children[(host, child)]
        queue = self.clones.get((host, ppid))
        if queue and entry in queue:
            queue.remove(entry)

    def _update(self, proc: Proc, sc: Record) -> None:
        f = sc.fields
        for attr in ("uid", "euid", "gid", "egid", "auid", "ses"):
            v = _int(f.get(attr))
            if v is not None:
                setattr(proc, attr, v)

    def _ids(self, sc: Record) -> dict[str, Any]:
        f = sc.fields
        out: dict[str, Any] = {}
        for attr in ("uid", "euid", "gid", "egid", "auid", "ses"):
            v = _int(f.get(attr))
            if v is not None and not (attr in ("auid", "ses") and v == AUID_UNSET):
                out[attr] = v
        out.setdefault("uid", 0)
        out.setdefault("euid", out["uid"])
        out.update(_names(sc, "exec", self.passwd))
        return out

    def _argv(self, by_type) -> tuple[list[str], bool]:
        """The arguments from EXECVE records (several records, and parts a1[0] a1[1]... for long
        ones); PROCTITLE's (cut at 128 bytes by the kernel) when there is no EXECVE."""
        fields: dict[str, Any] = {}
        for r in by_type.get("EXECVE", []):
            fields.update(r.fields)
        if fields:
            argv, cut = self._execve_args(fields)
            # a script: the kernel logs the interpreter's argv (/bin/sh /path/script args); what was
            # run is the script, as the BPF agent and `ps` show it
            path = next((r.fields.get("name") for r in by_type.get("PATH", []) if r.fields.get("item") == "0"), None)
            if path and path in argv[1:3] and argv[0] != path:
                argv = argv[argv.index(path, 1):]
            if not argv or not argv[0]:
                # execve(path, NULL, ...) or an empty argv[0]: the command would be unsearchable
                # (and argv[0] is the caller's choice anyway); the program run names it
                sc = by_type.get("SYSCALL", [None])[0]
                name = path or (sc.fields.get("exe") if sc else None)
                if name:
                    argv = [str(name), *argv[1:]]
            return argv, cut
        for r in by_type.get("PROCTITLE", []):
            title = r.fields.get("proctitle")
            if title:
                return [a for a in str(title).split("\x00") if a] or [str(title)], len(str(title)) >= 128
        return [], False

    @staticmethod
    def _execve_args(fields: dict[str, Any]) -> tuple[list[str], bool]:
        argc = _int(fields.get("argc")) or 0
        argv = []
        for i in range(argc):
            if f"a{i}" in fields:
                argv.append(str(fields[f"a{i}"]))
            elif f"a{i}[0]" in fields:
                parts, j = [], 0
                while f"a{i}[{j}]" in fields:
                    part = fields[f"a{i}[{j}]"]
                    parts.append(part if isinstance(part, bytes) else str(part).encode())
                    j += 1
                # joined before decoding: a multi-byte character may straddle two parts
                argv.append(b"".join(parts).decode("utf-8", "replace"))
            else:
                return argv, True                   # the kernel cut the argument list short
        return argv, False

    def _peer(self, by_type) -> tuple[str, int] | None:
        for r in by_type.get("SOCKADDR", []):
            peer = sockaddr(str(r.fields.get("saddr", "")))
            if peer:
                return peer
        return None

    # --- user-space records -------------------------------------------------------------------------

    def _user(self, host: str, rec: Record) -> list[dict[str, Any]]:
        f = rec.fields
        pid = _int(f.get("pid"))
        if pid is None:
            return []
        key = (host, pid)
        if rec.type == "LOGIN":
            proc = self.procs.get(key)
            if proc is not None:
                proc.auid = _int(f.get("auid"), default=proc.auid)
                proc.ses = _int(f.get("ses"), default=proc.ses)
            self.report.used["LOGIN"] += 1
            return []
        if rec.type == "USER_AUTH" and f.get("res") in ("success", "yes", "1"):
            self._current(host, pid, rec.ts)            # a new process on a reused pid forgets the old one's
            op = str(f.get("op") or "")
            self.auth[key] = "publickey" if "pubkey" in op else "password" if "authentication" in op else "other"
            # sshd built with audit support names the connection here (addr, rport), and the
            # account; its USER_LOGIN and PAM's USER_START may carry neither port nor name
            self.authed[key] = {k: f.get(k) for k in ("acct", "addr", "rport") if f.get(k) is not None}
            self.report.used["USER_AUTH"] += 1
            return []
        # sshd with audit support says USER_LOGIN; without it (Debian's), PAM's session_open
        # (USER_START) from sshd is the login. One login per process, whichever comes first.
        is_login = rec.type == "USER_LOGIN" or (rec.type == "USER_START" and "session_open" in str(f.get("op"))
                                                 and "sshd" in str(f.get("exe") or ""))
        if not is_login or f.get("res") not in ("success", "yes", "1"):
            return []
        proc = self._current(host, pid, rec.ts)
        if key in self.logged_in:
            return []
        self.logged_in.add(key)
        peer = self._peer_of(host, pid)
        addr = f.get("addr") if _is_ip(f.get("addr")) else (peer[0] if peer else None)
        if addr is None:
            self.report.skipped["logins without a remote address (console)"] += 1
            return []
        authed = self.authed.get(key, {})
        port = (peer[1] if peer and peer[0] == addr
                else _int(authed.get("rport"), default=0) if authed.get("addr") == addr else 0)
        user = rec.enriched.get("ID") or f.get("acct") or authed.get("acct")
        uid = _int(f.get("id"))
        if uid == 0:
            user = "root"           # `ssh toor@host` is root's login, whatever the account is called
        if not user:
            user = str(uid) if uid is not None else None
        if not user:
            return []
        ev = {"v": 1, "kind": "login", "host": host, "boot": self.boot(host), "ts": round(rec.ts, 6), "pid": pid,
              "start": proc.start, "user": user, "method": self.auth.get(key, "other"), "raddr": addr, "rport": port,
              "service": "sshd" if "sshd" in str(f.get("exe") or "") else str(f.get("exe") or "login")}
        if uid is not None:
            ev["uid"] = uid
        ses = _int(f.get("ses"))
        if ses is not None and ses != AUID_UNSET:
            ev["ses"] = ses
        if f.get("terminal") and str(f["terminal"]).startswith("/dev/"):
            ev["tty"] = str(f["terminal"])[5:]
        self.report.used[rec.type] += 1
        return [ev]

    def _peer_of(self, host: str, pid: int) -> tuple[str, int] | None:
        """The connection a login's sshd serves: its own, or an ancestor's (privilege separation)."""
        seen = 0
        while pid is not None and seen < 8:
            if (host, pid) in self.conn_of:
                return self.conn_of[(host, pid)]
            pid = self.parents.get((host, pid))
            seen += 1
        return None

    def loss_events(self) -> list[dict[str, Any]]:
        """The serial gaps as loss events, so traces crossing them say links may be missing."""
        out = []
        for host, after, missing, t0, t1 in self.report.gaps:
            out.append({"v": 1, "kind": "loss", "host": host, "boot": self.boot(host), "ts": round(t1, 6),
                        "since": round(t0, 6), "count": missing, "what": f"audit records missing after serial {after}"})
        return out


def _wrapped(last: int, serial: int) -> bool:
    """Whether serial follows last across the wrap of the kernel's 32-bit serial counter
    (... 4294967295, 0, 1 ...): the same boot, not a reboot."""
    return last > SERIAL_WRAP - 1000 and serial < 1000


def astuple_ids(p: Proc) -> tuple:
    return (p.uid, p.euid, p.gid, p.egid, p.auid, p.ses)


def _names(sc: Record, kind: str, passwd: dict[int, str] | None = None) -> dict[str, str]:
    """The user names of a record's uids as the logged host gave them: auditd's ENRICHED fields
    (UID=, EUID=, AUID=), else the host's passwd file given to the import (--passwd). Never this
    machine's: an imported host's uid 1001 is not the importer's."""
    e, f = sc.enriched, sc.fields
    out = {}
    pairs = (("UID", "uid", "user"), ("EUID", "euid", "euser"), ("AUID", "auid", "auser")) if kind == "exec" \
        else (("UID", "uid", "user"), ("EUID", "euid", "euser"))
    for src, num, dst in pairs:
        v = e.get(src)
        uid = _int(f.get(num))
        if uid == 0 and (v or passwd):
            # uid 0 is root by the kernel's rules, whatever the host calls it: a passwd that names
            # it `toor` first (getpwuid's answer, so auditd's too) must not make root a person
            out[dst] = "root"
        elif v and v != "unset" and not v.startswith("unknown"):
            out[dst] = v
        elif passwd and uid is not None and uid in passwd:
            out[dst] = passwd[uid]
    return out


def passwd_names(text: str, source: str = "passwd") -> dict[int, str]:
    """uid -> name from a passwd-format file (name:password:uid:gid:gecos:home:shell), the
    logged host's own. Blank and comment lines are skipped; a file with no entry at all is not
    a passwd file, and says so (ValueError), rather than naming no one without a word."""
    names: dict[int, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        # ASCII digits only: str.isdigit() also takes "١٠٠١" (int() reads it as 1001, the host's
        # getpwuid does not) and "²" (int() refuses it)
        if len(parts) >= 4 and parts[0] and parts[2].isascii() and parts[2].isdigit() and len(parts[2]) < 12:
            names.setdefault(int(parts[2]), parts[0])     # the first name of a uid, as getpwuid gives
    if not names:
        raise ValueError(f"{source} has no passwd entries (name:x:uid:gid:...): give the logged host's "
                         "/etc/passwd, or leave --passwd out")
    return names


def _ms(ts: float) -> int:
    """The millisecond audit stamped: feed() spreads events within one a microsecond apart."""
    return int(ts * 1000 + 5e-4)


def _int(v, base: int = 10, default=None):
    if v is None:
        return default
    try:
        return int(str(v), base)
    except ValueError:
        return default


def _is_ip(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in v else socket.AF_INET, v)
        return True
    except (OSError, ValueError):      # ValueError: a NUL in the text (a log zeroed by a crash)
        return False


def import_lines(lines: Iterable[str], host: str, report: ImportReport | None = None, rules=None,
                 passwd: dict[int, str] | None = None):
    """Audit log lines -> schema-v1 events (a generator), their command lines redacted with
    `rules` (default: the default rules). The report counts what was read, used and skipped.
    `passwd` (passwd_names) names the logged host's uids the log itself does not name."""
    from .redact import DEFAULT_RULES, redact_event
    rules = DEFAULT_RULES if rules is None else rules
    report = report or ImportReport()
    grouper, asm = Grouper(), AuditAssembler(host, report, passwd=passwd)

    def events(groups):
        for group in groups:
            for ev in asm.feed(sorted(group, key=lambda r: r.type != "SYSCALL")):
                report.events[ev["kind"]] += 1
                redact_event(ev, rules)     # secrets never leave the importer, whatever reads its events
                yield ev

    for line in lines:
        report.lines += 1
        if not line.strip():
            continue
        try:
            rec = parse_record(line)
        except AuditLineError:
            report.garbage(line, "lines that are not audit records")
            continue
        report.records[rec.type] += 1
        yield from events(grouper.feed(rec))
        report.mixed = grouper.mixed
    yield from events(grouper.flush())
    for ev in asm.loss_events():
        report.events["loss"] += 1
        yield ev


class AuditTail:
    """Live mode (`whodid-agent run --audit-log PATH`): follow the audit log across rotations
    and turn what is appended into events, with the same interface as the BPF capture."""

    perf = False

    def __init__(self, path: str, host: str, rules=None, boot: str | None = None):
        from .redact import DEFAULT_RULES
        from .sshd_log import LogFollower
        self.rules = rules if rules is not None else DEFAULT_RULES
        self.report = ImportReport()
        # what it reads is written while it runs, so of this boot: named by its id (`boot`)
        self.grouper, self.asm = Grouper(), AuditAssembler(host, self.report, boot=boot)
        self.follower = LogFollower(path, parse=lambda line: line if line.strip() else None).start()
        self._losses = 0

    def _events(self, groups) -> list[dict[str, Any]]:
        from .redact import redact_event
        out = []
        for group in groups:
            for ev in self.asm.feed(sorted(group, key=lambda r: r.type != "SYSCALL")):
                redact_event(ev, self.rules)        # secrets never leave the host, whatever the source
                out.append(ev)
        return out

    def poll(self, timeout_ms: int = 200, now: bool = False) -> list[dict[str, Any]]:
        """The events of the lines that came within timeout_ms (`now` changes nothing here)."""
        import queue as queue_mod
        import time
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                _, line = self.follower.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue_mod.Empty:
                break
            self.report.lines += 1
            try:
                rec = parse_record(line)
            except AuditLineError:
                self.report.garbage(line, "lines that are not audit records")
                continue
            self.report.records[rec.type] += 1
            out += self._events(self.grouper.feed(rec, time.monotonic()))
            self.report.mixed = self.grouper.mixed
            if time.monotonic() >= deadline:
                break
        # a quiet host: events that have had nothing new for a few seconds are complete
        out += self._events(self.grouper.flush_quiet(time.monotonic(), GROUP_QUIET))
        return out + self._new_losses()

    def _new_losses(self) -> list[dict[str, Any]]:
        losses = self.asm.loss_events()[self._losses:]
        self._losses += len(losses)
        return losses

    def drain(self) -> list[dict[str, Any]]:
        import time
        time.sleep(self.follower.poll * 2)
        out = self.poll(100) + self._events(self.grouper.flush())
        return out + self._new_losses()

    def lost(self) -> int:
        return 0                    # gaps become loss events themselves

    def close(self) -> None:
        self.follower.stop()
