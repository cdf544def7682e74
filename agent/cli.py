"""`whodid-agent`: record what this host's kernel sees, for whodid's traces.

examples:
  whodid-agent run --db /var/lib/whodid/whodid.db      local mode: straight into a store
  whodid-agent run --out events.jsonl                   schema-v1 JSON lines (- for stdout)
  whodid-agent run --collector https://whodid:8470      fleet mode: spool, then ship (token: agent.token
                                                        or $WHODID_AGENT_TOKEN)
  whodid-agent forward events.jsonl --collector URL     ship events made elsewhere through the spool
  whodid-agent run --db x.db --watch /etc --watch /srv/app/conf
  whodid-agent doctor                                   can this host run the agent? how to fix it
  whodid-agent audit-rules > /etc/audit/rules.d/whodid.rules   auditd's rules for --audit-log
"""

from __future__ import annotations

import argparse
import gc
import grp
import os
import pwd
import socket
import sys
import threading
import time
import uuid
from functools import lru_cache

from . import btf
from .assemble import Assembler
from .bccload import BccMissing, load_bcc
from .capture import BATCH_WAIT, TRACEFS, Capture, CaptureError, boot_epoch, own_pid_namespace
from .dnswatch import DnsWatch, NameBook, host_resolvers
from .netlink import NetlinkCapture, NetlinkUnavailable, monotonic_epoch
from .procfs import ProcFS, boot_id
from .redact import compile_rules, redact_event
from .spool import event_line
from .sshd_log import LogFollower, default_source
from whodid import config as config_mod
from whodid import __version__, logs, private, sdnotify, shipped
from whodid.arguments import Parser
from whodid.stopping import Stop
from whodid.tracer.events import plain_ip
from whodid.tracer.when import parse_duration

FLUSH_EVENTS = 2000

log = logs.get("agent")


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """Resolved here, through NSS (files, LDAP, sssd), never on the collector."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=1024)
def uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def host_addrs() -> list[str]:
    """This host's own IPv4 and IPv6 addresses (loopback excluded)."""
    addrs: set[str] = set()
    try:
        lines = open("/proc/net/fib_trie").read().splitlines()
        for prev, line in zip(lines, lines[1:]):
            if "/32 host LOCAL" in line:
                addr = prev.split()[-1]
                if not addr.startswith("127."):
                    addrs.add(addr)
    except OSError:
        pass
    try:
        for line in open("/proc/net/if_inet6"):
            raw, _, _, scope, _, dev = line.split()
            if dev != "lo" and scope == "00":
                addrs.add(plain_ip(bytes.fromhex(raw)))
    except OSError:
        pass
    return sorted(addrs)


class Sink:
    """Where events go: a store (local mode), JSON lines, or the spool (fleet mode)."""

    def __init__(self, db: str | None, out: str | None, spool=None):
        self.store = self.fh = None
        self.spool = spool
        if db:
            from whodid.tracer import Store
            self.store = Store.open(db, create=True)
        if out:
            self.fh = sys.stdout.buffer if out == "-" else private.open_append(out)
        self.written = 0
        self.refused = 0

    def write(self, events: list) -> None:
        if not events:
            return
        if self.store is not None:
            from whodid.tracer import ingest
            # redacted already, with the defaults and this host's agent.redact_patterns (the
            # assembler, AuditTail): not a second time
            report = ingest(self.store, events, rules=None)
            self.refused += report.rejected
            for sample in report.samples[:3]:
                log.error(f"refused an event it made: {sample}")
        if self.fh is not None:
            self.fh.write(b"\n".join(map(event_line, events)) + b"\n")
            self.fh.flush()
        if self.spool is not None:
            self.spool.put(events)
        self.written += len(events)

    def close(self) -> None:
        if self.fh not in (None, sys.stdout.buffer):
            self.fh.close()
        if self.store is not None:
            self.store.close()


def fleet(args, cfg, host: str, boot: str, source: str | None = None):
    """The spool and shipper of fleet mode, or (None, None) in local mode. Raises ValueError
    with what to fix. `source` is the config file cfg came from."""
    url = args.collector or cfg.collector
    if not url:
        return None, None
    from .ship import Shipper
    from .spool import Spool, SpoolError
    try:
        if cfg.token_file and not (os.environ.get("WHODID_AGENT_TOKEN") or cfg.token):
            private.check_secret(cfg.token_file, "agent.token_file")       # as ssh refuses an open key
        if cfg.token and source and not os.environ.get("WHODID_AGENT_TOKEN"):
            private.check_secret(source, "the config file holding agent.token")   # the same secret
        token = cfg.agent_token()
    except (config_mod.ConfigError, private.PrivateFileError) as exc:
        raise ValueError(str(exc)) from None
    if not token:
        raise ValueError("fleet mode needs this host's token: set $WHODID_AGENT_TOKEN, agent.token or "
                         "agent.token_file (make one on the collector: `whodid token add HOST`)")
    try:
        spool = Spool(args.spool or cfg.spool_path(), max_bytes=config_mod.parse_size(cfg.spool_max),
                      policy=cfg.spool_when_full, host=host, boot=boot)
    except SpoolError as exc:
        raise ValueError(str(exc)) from None
    shipper = Shipper(spool, url, token, ca_file=args.ca_file or cfg.ca_file or None,
                      batch_events=args.batch_events or cfg.batch_events)
    return spool, shipper


def start_shipping(shipper, stop: threading.Event) -> threading.Thread:
    t = threading.Thread(target=shipper.run, args=(stop,), name="whodid-ship", daemon=True)
    t.start()
    return t


def stop_shipping(shipper, spool, stop: threading.Event, thread: threading.Thread, grace: float) -> None:
    """Stop the shipper, ship what the spool holds while the collector answers, all within
    grace seconds: a collector that accepts and never answers held a stop for its request
    timeout twice over (a minute, with capture already stopped)."""
    deadline = time.monotonic() + grace
    shipper.wake(stop)                  # an idle shipper stops now, not at its next poll
    thread.join(grace)
    if thread.is_alive():
        # its request is in flight to a collector that does not answer: left behind. What it
        # carries stays in the spool and goes at the next start (a resend stores nothing twice);
        # the spool stays open under it, its commits are on disk already.
        log.warning(f"the collector at {shipper.url} did not answer within {grace:g} s; the events in "
                    f"the spool {spool.path} will be shipped on the next start")
        return
    spool.report_drops()
    shipper.drain(deadline)
    left = spool.pending()
    if left:
        log.warning(f"{left} events stay in the spool {spool.path} and will be shipped on the next start")
    if shipper.stats.set_aside:
        log.warning(f"{shipper.stats.set_aside} events the collector refused were set aside since start; "
                    f"{spool.refused_count()} in all wait in the `refused` table of {spool.path} for someone to "
                    "look")
    spool.close()


def forward(args) -> int:
    """Ship JSON-lines events (files or stdin) through the spool; return when all are delivered."""
    try:
        whole = config_mod.load(args.config)
        cfg, source = whole.agent, whole.source
    except config_mod.ConfigError as exc:
        log.error(str(exc))
        return 2
    logs.setup_for(args, whole.logging)
    if not (args.collector or cfg.collector):
        log.error("forward needs --collector URL (or agent.collector)")
        return 2
    try:
        spool, shipper = fleet(args, cfg, "", "", source)
    except ValueError as exc:
        log.error(str(exc))
        return 2
    from whodid.tracer.events import EventError, decode_line
    for name in args.files:
        if name != "-" and not os.path.isfile(name):
            log.error(f"cannot read {name}: {'no such file' if not os.path.exists(name) else 'not a file'}")
            return 2
    bad = 0
    # redacted here, as `run` redacts what it captures: the collector redacts too, but knows
    # only the default rules, not this host's agent.redact_patterns
    rules = compile_rules(cfg.redact_patterns)
    for name in args.files:
        fh = sys.stdin if name == "-" else open(name, encoding="utf-8", errors="replace")
        chunk = []
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ev = decode_line(line)
            except EventError as err:
                bad += 1
                if bad <= 5:
                    log.warning(f"{name}:{number}: {err} (not forwarded)")
                continue
            redact_event(ev, rules)
            chunk.append(ev)
            if len(chunk) >= 5000:
                spool.put(chunk)
                chunk = []
        spool.put(chunk)
    stop = Stop().install()
    while not stop.is_set():
        wait = shipper.ship_once()
        if wait is None:
            break
        if wait:
            stop.wait(wait)
    left = spool.pending()
    spool.close()
    log.info(f"forwarded {shipper.stats.sent} events"
             + (f", {shipper.stats.set_aside} refused by the collector (set aside in the spool's `refused` table)"
                if shipper.stats.set_aside else "")
             + (f", {bad} malformed lines skipped" if bad else "")
             + (f"; {left} wait in the spool for the next run" if left else ""))
    return 0 if not left else 1


def run(args) -> int:
    try:
        whole = config_mod.load(args.config)
        cfg, source = whole.agent, whole.source
    except config_mod.ConfigError as exc:
        log.error(str(exc))
        return 2
    logs.setup_for(args, whole.logging)
    if not args.db and not args.out and not (args.collector or cfg.collector):
        log.error("say where events go: --collector URL (fleet mode), --db PATH (local store) or "
                  "--out FILE")
        return 2
    watch = tuple(args.watch or cfg.watch)
    host = args.host or cfg.host_name or socket.gethostname()
    flush_interval = args.flush_interval if args.flush_interval is not None else parse_duration(cfg.flush_interval)
    heartbeat = args.heartbeat if args.heartbeat is not None else parse_duration(cfg.heartbeat)
    budget = cfg.connection_budget
    asm = Assembler(host=host, boot=boot_id(), boot_epoch=boot_epoch(), procfs=ProcFS(),
                    user_name=user_name, group_name=group_name, watch=watch,
                    rules=compile_rules([*cfg.redact_patterns, *(args.redact or ())]), own_pid=os.getpid(),
                    uid_of=uid_of, pid_namespace=args.pid_namespace == "self",
                    exclude=tuple(cfg.exclude) + tuple(args.exclude or ()))
    auth_log = args.auth_log or cfg.auth_log or default_source()
    try:
        spool, shipper = fleet(args, cfg, host, asm.boot, source)
    except ValueError as exc:
        log.error(str(exc))
        return 2
    try:
        sink = Sink(args.db, args.out, spool)
    except OSError as exc:               # an unwritable --out
        log.error(f"cannot start: {private.why_not_written(exc, args.out, 'the events file')}")
        return 2
    except Exception as exc:             # a store that cannot be opened (StoreError says why)
        log.error(f"cannot start: {exc}")
        return 2
    cap, mode = None, args.mode
    if args.audit_log:
        from .audit import AuditTail
        if not os.path.exists(args.audit_log):
            log.error(f"no audit log at {args.audit_log}; is auditd running, with whodid's rules loaded "
                      "(`whodid-agent audit-rules > /etc/audit/rules.d/whodid.rules && augenrules --load`)?")
            return 1
        cap, mode = AuditTail(args.audit_log, host, rules=asm.rules, boot=asm.boot), "audit"
        auth_log = "none"                           # logins come from the audit log itself
    if cap is None and mode in ("auto", "bpf"):
        try:
            cap = Capture(asm, watch=watch, ringbuf_pages=args.ringbuf_pages or cfg.ringbuf_pages,
                          pidns=own_pid_namespace() if args.pid_namespace == "self" else None,
                          buffer=args.buffer, unix_prefixes=tuple(cfg.unix_sockets.prefixes),
                          unix_comms=tuple(cfg.unix_sockets.comms), budget=cfg.connection_budget,
                          batch_wait=min(flush_interval, BATCH_WAIT))
            mode = "bpf"
        except (CaptureError, BccMissing) as exc:
            (log.error if mode == "bpf" else log.warning)(str(exc))    # auto: netlink next
            if mode == "bpf":
                return 1
    if cap is None:
        if args.pid_namespace:
            log.error("--pid-namespace needs BPF; the netlink fallback sees every process")
            return 1
        try:
            asm.boot_epoch = monotonic_epoch()          # the connector stamps with CLOCK_MONOTONIC
            cap, mode = NetlinkCapture(asm), "netlink"
        except NetlinkUnavailable as exc:
            log.error(str(exc))
            return 1
        log.warning("running on the netlink process connector, without BPF: it records exec, fork, exit and "
                    "uid changes, but not TCP connections (ssh hops can only be inferred), not file changes, and "
                    "not the arguments of processes that exit before /proc is read")

    # the names the host was answered for, given to its connects (docs/agent.md); only BPF sees connects
    names = dns_watch(asm, cfg.dns_resolvers) if mode == "bpf" and cfg.dns_names else None

    stop = Stop().install()

    follower = LogFollower(auth_log).start() if auth_log and auth_log != "none" else None
    ship_stop = threading.Event()
    ship_thread = start_shipping(shipper, ship_stop) if shipper else None
    # This run's marks (docs/events.md, agent runs): its start once capture is attached, a heartbeat,
    # its clean stop. A run that ends without a stop (SIGKILL, crash, power loss) shows as an
    # outage from its last mark to the next run's start, and traces crossing it say so.
    run_id = uuid.uuid4().hex

    def run_mark(state: str) -> dict:
        return {"v": 1, "kind": "host", "host": host, "boot": asm.boot, "ts": round(time.time(), 6),
                "run": run_id, "state": state}

    hello = {**run_mark("start"), "addrs": host_addrs(), "os": os.uname().sysname + " " + os.uname().release,
             "agent": "whodid-agent/bpf"}
    sink.write([hello] + (asm.snapshot() if mode != "audit" else []))
    if mode == "bpf" and cap.offsets.unix:
        sink.write(unix_snapshot(asm, cfg.unix_sockets))
    # what start-up made (BCC, the program, the snapshot) lives as long as the agent: out of the
    # collector's sight, each collection walks only what the event loop makes (a tenth of the
    # agent's CPU in an exec storm went to the collector walking start-up's objects)
    gc.freeze()
    where = args.db or args.out or f"{shipper.url} (spool {spool.path})"
    if mode == "audit":
        log.info(f"following the audit log {args.audit_log} on {host} into {where}")
    elif mode == "bpf":
        unix = (f", unix-socket connects by {', '.join(cfg.unix_sockets.comms) or 'no program'} or to "
                f"{', '.join(cfg.unix_sockets.prefixes) or 'no path'}") if cap.offsets.unix else ""
        log.info(f"capturing on {host} with BPF tracepoints (exec, fork, exit, setuid, tcp, "
                 f"file changes under {', '.join(watch)}{unix}) into {where}"
                 + (" through perf buffers" if cap.perf else ""))
        if cap.note:
            log.info(cap.note)
    else:
        log.info(f"capturing on {host} with the netlink process connector into {where}")
    if follower:
        log.info(f"ssh logins from {auth_log}")
    elif mode != "audit":
        log.warning("no sshd log found, so logins (and the ssh keys that name people) will not be "
                    "recorded; name it with --auth-log")
    if args.ready_file:
        open(args.ready_file, "w").write(str(os.getpid()))
    sdnotify.ready(f"capturing on {host} ({mode})")     # Type=notify: probes attached, snapshot taken

    pending: list = []
    last_flush = last_mark = time.monotonic()
    lost_state = {"reported": 0, "unseen": 0, "stale": 0, "since": time.time()}
    last_lost_poll = 0.0

    def losses() -> list:
        """Records the kernel dropped since the last look, as a loss event: stored, so traces
        crossing this window on this host say they may be incomplete."""
        lost, since = cap.lost(), lost_state["since"]
        lost_state["since"] = now = time.time()

        def loss(count: int, what: str) -> dict:
            return {"v": 1, "kind": "loss", "host": host, "boot": asm.boot, "ts": round(now, 6),
                    "since": round(since, 6), "count": count, "what": what}

        def counted(name: str, total: int, what) -> list:
            """A kernel count since load (BPF only) -> a loss event for what it gained since the last look."""
            if total <= lost_state[name]:
                return []
            count, lost_state[name] = total - lost_state[name], total
            said = what(count)
            log.warning(said, host=host)
            return [loss(count, said)]

        # connection records a uid's budget refused (BPF only): their own loss events, naming the uid
        over = asm.budget_losses(cap.over_budget(), since, now, budget.per_second, budget.burst) \
            if mode == "bpf" else []
        for ev in over:
            log.warning(ev["what"], host=host)
        if mode == "bpf":
            over += counted("stale", cap.stale_connects(), lambda n: (
                f"TCP connects whose end the agent did not see: up to {n:,} connections not recorded (the kernel "
                "skipped its probe on the state change, or the connect was still in progress when the agent "
                "stopped)"))
            over += counted("unseen", cap.unseen_starts(), lambda n: (
                f"TCP connections established whose start the agent had not seen: {n:,} not recorded (begun "
                "before it loaded, or more connections in progress than its table holds)"))
        if lost <= lost_state["reported"]:
            return over
        count, lost_state["reported"] = lost - lost_state["reported"], lost
        log.error(f"the kernel dropped {count} records ({mode}); raise --ringbuf-pages", host=host, lost=count)
        return over + [loss(count, "ring buffer full" if mode == "bpf" else "netlink overrun")]

    def logins(final: bool = False) -> list:
        if follower is None:
            return []
        while not follower.lines.empty():
            asm.add_login(*follower.lines.get_nowait())
        return asm.match_logins(time.time(), give_up_after=0 if final else 30.0)

    while not stop.is_set():
        pending.extend(cap.poll(200))
        if names:
            names.drain()                               # between connects too: the socket's queue is bounded
        pending.extend(logins())
        now = time.monotonic()
        if now - last_mark >= heartbeat:                 # rides with the next flush
            # every record made before the mark goes with it: should the agent die after
            # this flush, an outage counted from the mark must not hide records still waiting
            # in the ring (Capture's batching). The mark's time is taken first, then the ring read.
            mark = run_mark("alive")
            pending.extend(cap.poll(0, now=True))
            pending.append(mark)
            last_mark = now
        if len(pending) >= FLUSH_EVENTS or (pending and now - last_flush >= flush_interval):
            sink.write(pending)
            pending, last_flush = [], now
        if now - last_lost_poll >= 1.0:                 # reading the counters costs a map lookup
            last_lost_poll = now
            pending.extend(losses())
    sdnotify.stopping("stopping: flushing and shipping what was captured")
    stopped = run_mark("stop")          # before the drain: records made after it may be lost
    pending.extend(cap.drain())
    pending.extend(losses())                            # the last second before stopping
    if follower:
        time.sleep(follower.poll * 2)                # the last lines written before SIGTERM
        follower.stop()
    pending.extend(logins(final=True))
    sink.write(pending + [stopped])
    sink.close()
    if shipper:
        stop_shipping(shipper, spool, ship_stop, ship_thread, grace=5.0)
    if names:
        names.close()
    cap.close()              # last: detaching takes the kernel a while, and every event is out by now
    log.info(f"stopped; {sink.written} events written, {lost_state['reported']} records lost, "
             f"{asm.counts['redacted']} command lines redacted, {asm.counts['unmatched_login']} logins not "
             "tied to a process", host=host)
    return 0


def dns_watch(asm: Assembler, extra_resolvers=()) -> DnsWatch | None:
    """Start reading the DNS answers this host receives from its resolvers (resolv.conf's, and
    agent.dns_resolvers) and hand the names to the assembler's connects; without them (no
    CAP_NET_RAW) connects are recorded unnamed, and the agent says so."""
    resolvers = frozenset(host_resolvers()) | frozenset(str(r) for r in extra_resolvers)
    try:
        watch = DnsWatch(NameBook(resolvers=resolvers))
    except OSError as exc:
        log.warning(f"cannot read DNS answers ({exc.strerror or exc}), so connects are recorded without the "
                    "name their address was answered for; run as root or with CAP_NET_RAW, or set "
                    "agent.dns_names: false")
        return None
    asm.names = watch.name_for
    log.info("naming connects from the DNS answers this host receives (port 53, every interface of this "
             "network namespace) from its resolvers: "
             + (", ".join(sorted(resolvers)) or "none found - set agent.dns_resolvers"))
    return watch


def unix_snapshot(asm: Assembler, watched) -> list:
    """The watched unix-socket connections that exist now (agent/unixdiag.py), as snapshot events."""
    from . import unixdiag
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    try:
        found = unixdiag.attached(unixdiag.dump(), unixdiag.socket_holders(), asm.procfs.comm,
                                  tuple(watched.prefixes), tuple(watched.comms), str(now))
    except (OSError, ValueError) as exc:    # the kernel refusing, or a reply this reader does not know
        log.warning(f"could not list the unix-socket connections that exist already ({exc}); those made "
                    "from now on are recorded")
        return []
    found, left_out = unixdiag.capped(found)
    out = asm.unix_snapshot(found, now)
    if left_out:
        said = (f"left out {left_out} unix-socket connections that exist already (more than one per client "
                f"process, or more than {unixdiag.MAX_PER_PATH} clients of one socket)")
        log.warning(said)
        wall = round(time.time(), 6)
        out.append({"v": 1, "kind": "loss", "host": asm.host, "boot": asm.boot, "ts": wall, "since": wall,
                    "count": left_out, "what": said})
    return out


def doctor(_args) -> int:
    """Check what the agent needs, and say how to fix what is missing."""
    checks = []
    checks.append(("running as root", os.geteuid() == 0, "run the agent as root (or with CAP_BPF, CAP_PERFMON)"))
    tracefs = next((p for p in TRACEFS
                    if os.path.exists(f"{p}/events/sched/sched_process_exec")), None)
    checks.append(("tracepoints visible in tracefs", tracefs is not None,
                   "mount it: `mount -t tracefs nodev /sys/kernel/tracing`"))
    offsets, btf_note = btf.running_kernel()
    checks.append(("kernel BTF (/sys/kernel/btf/vmlinux)", btf_note is None,
                   f"optional, but {btf_note}"))
    checks.append(("unix-socket connects (tmux, screen, ssh ControlMaster, docker)", offsets.unix is not None,
                   f"optional, but {btf.UNIX_MISSING}"))
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    checks.append((f"kernel headers at {build}", os.path.exists(f"{build}/include"),
                   "install linux-headers-$(uname -r); if no exact match exists, install your distribution's "
                   f"nearest (linux-headers-amd64) and link it: `ln -s /usr/src/linux-headers-*-amd64 {build}` and "
                   f"`ln -s /usr/src/linux-headers-*-common /lib/modules/{release}/source`. whodid reads only "
                   "no struct layout from them (offsets come from the kernel's BTF), so a close version gives correct data"))
    try:
        load_bcc()
        ok_bcc, fix_bcc = True, ""
    except BccMissing as exc:
        ok_bcc, fix_bcc = False, str(exc)
    checks.append(("BCC Python module (python3-bpfcc)", ok_bcc, fix_bcc))
    width = max(len(c[0]) for c in checks)
    bad = 0
    for name, ok, fix in checks:
        print(f"  {'ok  ' if ok else 'FAIL'}  {name:<{width}}" + ("" if ok else f"\n        fix: {fix}"))
        bad += not ok and not name.startswith(("kernel BTF", "unix-socket"))
    if not bad and os.geteuid() == 0:
        try:
            asm = Assembler("doctor", "doctor", 0.0, ProcFS(), user_name, group_name)
            Capture(asm, watch=tuple(config_mod.AgentConfig().watch), ringbuf_pages=8).close()
            print("  ok    the BPF program loads and attaches")
        except (CaptureError, BccMissing) as exc:
            print(f"  FAIL  the BPF program did not load: {exc}")
            bad += 1
    print("ready" if not bad else f"{bad} problem(s) to fix")
    return 0 if not bad else 1


def bad_number(args) -> str | None:
    """What is wrong with a number given on the command line, if anything."""
    pages = getattr(args, "ringbuf_pages", None)
    # at most 2 GiB: the kernel keeps a ring's size in 32 bits
    if pages is not None and (pages < 1 or pages & (pages - 1) or pages > 1 << 19):
        return f"--ringbuf-pages must be a power of 2 from 1 to {1 << 19} (4 KiB pages); got {pages}"
    interval = getattr(args, "flush_interval", None)
    if interval is not None and not 0 < interval <= 3600:
        return f"--flush-interval must be more than 0 and at most 3600 seconds; got {interval}"
    beat = getattr(args, "heartbeat", None)
    if beat is not None and not 0 < beat <= 3600:
        return f"--heartbeat must be more than 0 and at most 3600 seconds; got {beat}"
    batch = getattr(args, "batch_events", None)
    if batch is not None and not 1 <= batch <= 1_000_000:
        return f"--batch-events must be from 1 to 1000000; got {batch}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="whodid-agent", description="Record process, login, network and file "
                                "activity on this host for whodid.", epilog=__doc__.split("examples:", 1)[1]
                                .join(["examples:", ""]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"whodid-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="capture until stopped (SIGTERM or Ctrl-C flush and stop cleanly)")
    r.add_argument("--db", metavar="PATH", help="local mode: write into this store")
    r.add_argument("--out", metavar="FILE", help="append schema-v1 JSON lines to FILE (- for stdout)")
    r.add_argument("--host", metavar="NAME", help="this host's name in traces (default: the hostname)")
    r.add_argument("--config", metavar="FILE", help="config file (its `agent` section; `whodid config example` shows "
                   "every key)")
    r.add_argument("--watch", action="append", metavar="PATH",
                   help=f"record changes under PATH (a glob is allowed); repeatable (default: agent.watch, "
                        f"{', '.join(config_mod.AgentConfig().watch)})")
    r.add_argument("--mode", choices=["auto", "bpf", "netlink"], default="auto",
                   help="how to see processes: BPF tracepoints, the netlink process connector (fewer facts), or "
                        "BPF when it loads and netlink otherwise (default: auto)")
    r.add_argument("--audit-log", metavar="PATH", help="no BPF: follow this audit log (auditd with the rules "
                   "`whodid-agent audit-rules` prints loaded), across rotations, as the source of events")
    r.add_argument("--buffer", choices=["auto", "ringbuf", "perf"], default="auto",
                   help="how BPF hands records over: the ring buffer (Linux 5.8+) or per-CPU perf buffers "
                        "(default: the ring buffer where the kernel has it)")
    r.add_argument("--pid-namespace", choices=["self"], help="record only the processes of the agent's own pid "
                   "namespace, under their pids there: one agent per container or simulated host (its "
                   "host name comes from its UTS namespace)")
    r.add_argument("--auth-log", metavar="PATH", help="sshd's log to follow: a file, `journal`, or `none` "
                   "(default: agent.auth_log, else journald, /var/log/auth.log or /var/log/secure)")
    r.add_argument("--exclude", action="append", metavar="PROGRAM",
                   help="do not record this program (path or name glob) nor what it starts; repeatable "
                        "(added to agent.exclude)")
    r.add_argument("--redact", action="append", metavar="REGEX", help="also mask what REGEX matches in command lines")
    r.add_argument("--ringbuf-pages", type=int, metavar="N",
                   help="ring buffer size in 4 KiB pages, a power of 2 (default: agent.ringbuf_pages, 1024)")
    r.add_argument("--flush-interval", type=float, metavar="SECONDS",
                   help="longest time events wait before being written (default: agent.flush_interval, 1s)")
    r.add_argument("--heartbeat", type=float, metavar="SECONDS",
                   help="how often the agent marks that it is still running, so a crash shows as an outage "
                        "from its last mark (default: agent.heartbeat, 60s)")
    r.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)   # tests: written once capturing
    for parser in (r, f := sub.add_parser("forward", help="ship JSON-lines events (files, - for stdin) to the "
                                           "collector through the spool; exits once all are delivered")):
        parser.add_argument("--collector", metavar="URL", help="fleet mode: ship to this collector (default: "
                            "agent.collector); the token comes from $WHODID_AGENT_TOKEN or agent.token(_file)")
        parser.add_argument("--spool", metavar="PATH", help="the spool file (default: agent.spool)")
        parser.add_argument("--ca-file", metavar="PEM", help="CA bundle for the collector's certificate")
        parser.add_argument("--batch-events", type=int, metavar="N", help="events per batch at most (default: "
                            "agent.batch_events, 5000)")
        logs.add_arguments(parser)
    f.add_argument("--config", metavar="FILE", help="config file (its `agent` section)")
    f.add_argument("files", nargs="*", metavar="FILE", help="JSON-lines files (- for stdin); none: only ship what the spool holds")
    sub.add_parser("doctor", help="check this host can run the agent, and say how to fix what it cannot")
    sub.add_parser("audit-rules", help="print the auditd rules --audit-log needs (for /etc/audit/rules.d/)")
    args = p.parse_args(argv)
    if args.command in ("run", "forward"):
        logs.setup_for(args)               # the flags now, for what goes wrong before the config is read
    problem = bad_number(args)
    if problem:
        log.error(problem)
        return 2
    if args.command == "run":
        return run(args)
    if args.command == "doctor":
        return doctor(args)
    if args.command == "audit-rules":
        sys.stdout.write(shipped.find("audit.rules").text())
        return 0
    if args.command == "forward":
        return forward(args)
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
