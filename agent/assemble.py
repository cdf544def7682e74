"""Turn decoded kernel records into schema-v1 events (tracer/events.py).

The Assembler keeps the host's process table: which `start` each live pid has, and what
each process inherited (login uid, audit session, effective uid, cwd, tty) - so a
short-lived process that is gone before /proc can be read still gets the right facts.
What the kernel's exec record says itself (login uid, session, pid namespace, when its BTF
located them) wins over both.
/proc and the name service are passed in, so tests drive it with fixtures.
"""

from __future__ import annotations

import fnmatch
import os
import stat as statmod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from . import decode as d
from .procfs import TICK_NS, ProcFS
from .redact import DEFAULT_RULES, redact, redact_event, redact_fitted
from whodid.tracer.events import plain_ip

AUID_UNSET = 4294967295
PASSIVE_KEEP = 4096
ACCEPTS_KEPT = 4         # accepts of one client address and port held for its login line


@dataclass(slots=True)
class ProcState:
    start: int
    pidns: int | None = None
    container: str | None = None
    ppid: int | None = None
    pstart: int | None = None
    uid: int = 0
    euid: int = 0
    gid: int = 0
    egid: int = 0
    auid: int | None = None
    ses: int | None = None
    cwd: str | None = None
    tty: str | None = None

    def child(self, start: int, ppid: int) -> ProcState:
        """What a forked child inherits. Spelled out rather than dataclasses.replace or
        copy.copy: this runs for every fork, and those cost several times more."""
        return ProcState(start, self.pidns, self.container, ppid, self.start, self.uid, self.euid, self.gid,
                         self.egid, self.auid, self.ses, self.cwd, self.tty)


class Assembler:
    def __init__(self, host: str, boot: str, boot_epoch: float, procfs: ProcFS,
                 user_name: Callable[[int], str | None], group_name: Callable[[int], str | None],
                 watch: tuple[str, ...] = (), rules=DEFAULT_RULES, own_pid: int | None = None,
                 uid_of: Callable[[str], int | None] = lambda name: None, pid_namespace: bool = False,
                 exclude: tuple[str, ...] = (), names: Callable[[str, float], str | None] | None = None):
        self.host, self.boot = host, boot
        # the name the host was told for an address before it connected (agent/dnswatch.py), if any
        self.names = names
        self.boot_epoch = boot_epoch
        self.procfs = procfs
        self.user_name, self.group_name = user_name, group_name
        self.watch = watch
        self.rules = rules
        self.own_pid = own_pid
        self.uid_of = uid_of
        # Programs configured as noise (agent.exclude): they and everything they start are
        # left out at the source. Nothing is excluded unless configured.
        self.exclude = exclude
        self.excluded: set[int] = set()
        # In a pid namespace a fork record names the child by its pid outside; the child's
        # own first record tells its pid inside, and only then can the fork be told.
        self.pid_namespace = pid_namespace
        # Those children's ancestry is taken when the fork is recorded, not at their first
        # record: by then the parent may be gone (a double fork, `setsid cmd &` then exit),
        # and its pid free for another process.
        self.unborn: dict[int, tuple[int, ProcState]] = {}  # outside pid -> (fork time, inherited state)
        self.procs: dict[int, ProcState] = {}
        self.pending_argv: dict[int, d.ExecArgs] = {}
        self.passive: OrderedDict[tuple[str, int], tuple[str, int]] = OrderedDict()
        # for joining sshd's log lines to its processes: who accepted which peer, and what
        # the accepting processes forked after. A fork in a pid namespace whose child has not
        # shown its own pid yet is there too, as (fork time, None, pid outside): it still takes
        # its place in the order of forks (see _served_by)
        # A client address and port may be accepted by several servers at once (a NAT hands one
        # public port to connections to different local ports): the last ACCEPTS_KEPT of each
        self.accepted: OrderedDict[tuple[str, int], list[tuple[int, int, str, int]]] = OrderedDict()
        self.forks_of: dict[int, list[tuple[int, int | None, int]]] = {}   # (fork time, child pid, its start)
        self.uclients: OrderedDict[str, tuple[int, int]] = OrderedDict()   # unix conn -> client (pid, start)
        # pid -> (start, exit time) of the last PASSIVE_KEEP processes to exit: a connect recorded
        # late (at its socket's close, which may follow the exit) is theirs if they were alive then
        self.exited: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # connections over budget counted in the kernel (capture.c, aggregation): key -> the event its
        # first connection made, sent with its count once the key's minute is over (aggregates_due)
        self.aggregating: dict[bytes, dict[str, Any]] = {}
        self.pending_logins: list[tuple[float, Any]] = []
        self._setid_bits: dict[str, tuple[int, tuple[int | None, int | None]]] = {}   # path -> (when, bits)
        self._gone = False           # the exec being fed has its exit later in the batch (feed_all)
        self._budget_reported: dict[int, int] = {}     # uid -> over-budget records said in loss events
        self.counts = {"unmatched_accept": 0, "redacted": 0, "decode_errors": 0, "unmatched_login": 0,
                       "argv_unread": 0}

    # --- helpers -----------------------------------------------------------------------

    @property
    def boot_epoch(self) -> float:
        return self._epoch_us / 1e6

    @boot_epoch.setter
    def boot_epoch(self, value: float) -> None:
        self._epoch_us = round(value * 1e6)

    def _ev(self, kind: str, ts_ns: int, **fields) -> dict[str, Any]:
        # whole microseconds over 1e6: the double nearest a 6-decimal time, as round(t, 6)
        # gives, at a third of its cost (three of these per exec)
        return {"v": 1, "kind": kind, "host": self.host, "boot": self.boot,
                "ts": (self._epoch_us + (ts_ns + 500) // 1000) / 1e6, **fields}

    def _names(self, ev: dict[str, Any]) -> dict[str, Any]:
        for uid_key, name_key in (("uid", "user"), ("euid", "euser"), ("auid", "auser")):
            uid = ev.get(uid_key)
            if uid is not None and uid != AUID_UNSET:
                name = self.user_name(uid)
                if name:
                    ev[name_key] = name
        for gid_key, name_key in (("gid", "group"), ("egid", "egroup")):
            if ev.get(gid_key) is not None:
                name = self.group_name(ev[gid_key])
                if name:
                    ev[name_key] = name
        return ev

    def snapshot(self) -> list[dict[str, Any]]:
        """Every process running now, as `exec` events marked snapshot (docs/events.md)."""
        out = []
        for pid in self.procfs.pids():
            info = self.procfs.info(pid)
            if info is None:
                continue
            out.extend(self._adopt(info))
        return out

    def _adopt(self, info) -> list[dict[str, Any]]:
        pidns, container = self.procfs.namespace(info.pid)
        st = ProcState(start=info.start_ticks * TICK_NS, uid=info.uid or 0, euid=info.euid or 0,
                       gid=info.gid or 0, egid=info.egid or 0, auid=info.auid, ses=info.ses,
                       cwd=info.cwd, tty=info.tty, pidns=pidns, container=container)
        parent = self.procs.get(info.ppid)
        if parent is None and info.ppid:
            pinfo = self.procfs.info(info.ppid)
            parent_start = pinfo.start_ticks * TICK_NS if pinfo else None
        else:
            parent_start = parent.start if parent else None
        if parent_start is not None:
            st.ppid, st.pstart = info.ppid, parent_start
        self.procs[info.pid] = st
        argv, cut, _ = redact_fitted(info.argv, rules=self.rules)     # /proc's argv has no bound
        ev = self._ev("exec", st.start, pid=info.pid, start=st.start, argv=argv,
                      exe=info.exe or argv[0], uid=st.uid, euid=st.euid, gid=st.gid, egid=st.egid,
                      comm=redact([info.comm], self.rules)[0][0][:15], snapshot=True)   # a title's first 15 bytes
        if cut:
            ev["truncated"] = True
        self._fill(ev, st)
        return [self._names(ev)]

    def _fill(self, ev: dict[str, Any], st: ProcState) -> None:
        for key in ("cwd", "tty", "auid", "ses", "ppid", "pstart", "pidns", "container"):
            value = getattr(st, key)
            if value is not None and not (key in ("auid", "ses") and value == AUID_UNSET):
                ev[key] = value

    def _state(self, pid: int, ts_ns: int) -> tuple[ProcState, list[dict[str, Any]]]:
        """The process table entry for pid, adopting it from /proc if we never saw it start."""
        st = self.procs.get(pid)
        if st is not None:
            return st, []
        info = self.procfs.info(pid)
        if info is not None:
            events = self._adopt(info)
            return self.procs[pid], events
        st = ProcState(start=ts_ns)                    # gone already: name it by when we saw it
        self.procs[pid] = st
        return st, []

    def _owner_at(self, pid: int, ts_ns: int) -> tuple[int, list[dict[str, Any]]]:
        """The start of the process `pid` that was alive at ts_ns (a connect's SYN_SENT), and any
        events adopting it. A remembered exit that covers ts_ns settles it (one process holds a
        pid at a time); a start from /proc counts only if a whole clock tick before. When the
        pid's process now began after ts_ns, its own is gone unseen: the connect is named by the
        pid and ts_ns alone - a process of its own, never the newer one."""
        gone = self._exited_at(pid, ts_ns)
        if gone is not None:
            return gone, []
        st = self.procs.get(pid)
        if st is None:
            info = self.procfs.info(pid)
            if info is None:
                st, out = self._state(pid, ts_ns)          # gone, never seen: as any record's
                return st.start, out
            if info.start_ticks * TICK_NS + TICK_NS <= ts_ns:
                out = self._adopt(info)
                return self.procs[pid].start, out
            return ts_ns, []
        return (st.start if st.start <= ts_ns else ts_ns), []

    def _exited_at(self, pid: int, ts_ns: int) -> int | None:
        gone = self.exited.get(pid)
        return gone[0] if gone is not None and gone[0] <= ts_ns <= gone[1] else None

    def _setid_owner(self, path: str, uid: int, gid: int, ts_ns: int) -> tuple[int, int]:
        """(euid, egid) exec'ing path gives, remembering each binary's setuid/setgid bits for a
        second of record time: in an exec storm the same few binaries come by thousands of
        times, each a stat()."""
        bits = self._setid_bits.get(path)
        if bits is None or ts_ns - bits[0] > 1_000_000_000:
            if len(self._setid_bits) > 4096:
                self._setid_bits.clear()
            bits = self._setid_bits[path] = (ts_ns, setid_bits(path))
        return with_setid(bits[1], uid, gid)

    # --- the records -------------------------------------------------------------------

    def feed_all(self, records: list[d.Record]) -> list[dict[str, Any]]:
        """feed() each record, in order, knowing the batch: a process whose exit is already in
        it is gone, so /proc is not asked about its exec - the answer would be "no such
        process", or worse, another process that has its pid by now. In an exec storm that is
        most execs, and the /proc reads were a sixth of the agent's CPU."""
        last_exit = {r.hdr.pid: i for i, r in enumerate(records) if type(r) is d.Exit}
        out: list[dict[str, Any]] = []
        for i, rec in enumerate(records):
            self._gone = type(rec) is d.Exec and last_exit.get(rec.hdr.pid, -1) > i
            out.extend(self.feed(rec))
        self._gone = False
        return out

    def feed(self, rec: d.Record) -> list[dict[str, Any]]:
        h = rec.hdr
        born: list[dict[str, Any]] = []
        # (not a connect: its header was made at its SYN_SENT, and the pid may be another's now)
        if self.unborn and h.gpid in self.unborn and h.type not in (d.EV_PASSIVE, d.EV_CONNECT):
            ts_ns, child = self.unborn.pop(h.gpid)
            born = self._born(h.pid, child, ts_ns, outside=h.gpid)
        if self.own_pid is not None and h.pid == self.own_pid and not isinstance(rec, d.Sock):
            return born
        if self.excluded and h.pid in self.excluded and h.type != d.EV_PASSIVE:
            if isinstance(rec, d.Fork):
                self.excluded.add(rec.child)
            elif isinstance(rec, d.Exit):
                self.excluded.discard(h.pid)
                self.procs.pop(h.pid, None)
            return born
        if self.exclude and isinstance(rec, d.Exec) and noise(rec.filename, self.exclude):
            self.excluded.add(h.pid)
            self.pending_argv.pop(h.pid, None)
            return born
        return born + self._feed(rec)

    def _fork(self, parent_pid: int, child_pid: int, ts_ns: int) -> list[dict[str, Any]]:
        parent, out = self._state(parent_pid, ts_ns)
        return out + self._born(child_pid, parent.child(ts_ns, parent_pid), ts_ns)

    def _born(self, child_pid: int, child: ProcState, ts_ns: int, outside: int | None = None) -> list[dict[str, Any]]:
        """The fork of child_pid, with what it inherited at fork time (child.ppid, .pstart);
        outside is its pid outside our pid namespace, when its fork was recorded before it."""
        self.procs[child_pid] = child
        parent_pid = child.ppid
        forks = self.forks_of.get(parent_pid)
        if forks is not None:
            entry = (ts_ns, child_pid, child.start)
            # in its fork's place: children show up in any order, and the first fork after an
            # accept is the one that serves it
            at = forks.index((ts_ns, None, outside)) if (ts_ns, None, outside) in forks else None
            if at is None:
                self.forks_of[parent_pid] = forks[-63:] + [entry]
            else:
                forks[at] = entry
        return [self._ev("fork", ts_ns, pid=child_pid, start=child.start, ppid=parent_pid, pstart=child.pstart)]

    def _feed(self, rec: d.Record) -> list[dict[str, Any]]:
        h = rec.hdr
        t = type(rec)
        if t is d.ExecArgs:
            self.pending_argv[h.pid] = rec
            return []
        if t is d.Exec:
            return self._exec(rec)
        if t is d.Fork:
            if self.pid_namespace:
                parent, out = self._state(h.pid, h.ts_ns)
                self.unborn[rec.child] = (h.ts_ns, parent.child(h.ts_ns, h.pid))
                if h.pid in self.forks_of:
                    self.forks_of[h.pid] = self.forks_of[h.pid][-63:] + [(h.ts_ns, None, rec.child)]
                while len(self.unborn) > 65536:               # children that died unseen
                    self.unborn.pop(next(iter(self.unborn)))
                return out
            return self._fork(h.pid, rec.child, h.ts_ns)
        if t is d.Exit:
            st = self.procs.pop(h.pid, None)
            self.pending_argv.pop(h.pid, None)
            self.forks_of.pop(h.pid, None)
            if st is None:
                return []
            self.exited[h.pid] = (st.start, h.ts_ns)
            self.exited.move_to_end(h.pid)
            if len(self.exited) > PASSIVE_KEEP:
                self.exited.popitem(last=False)
            ev = self._ev("exit", h.ts_ns, pid=h.pid, start=st.start)
            if rec.code is not None:
                ev["code"] = rec.code
            return [ev]
        if isinstance(rec, d.Cred):
            return self._cred(rec)
        if isinstance(rec, d.Sock):
            return self._sock(rec)
        if t is d.Listen:
            st, out = self._state(h.pid, h.ts_ns)
            out.append(self._ev("listen", h.ts_ns, pid=h.pid, start=st.start, laddr=rec.laddr, lport=rec.lport))
            return out
        if isinstance(rec, d.FileChange):
            return self._file(rec)
        if t is d.UnixConn:
            return self._unix(rec)
        return []

    def _exec(self, rec: d.Exec) -> list[dict[str, Any]]:
        h = rec.hdr
        st, out = self._state(h.pid, h.ts_ns)
        args = self.pending_argv.pop(h.pid, None)
        argv, truncated = (args.argv, args.truncated) if args and args.argv else ([rec.filename], False)
        # /proc speaks for this image only while the process still runs it: by the time we
        # look, `bash -c 'sudo ...'` may already be sudo, with sudo's ids and arguments
        status = None if self._gone else self.procfs.status(h.pid)
        current = status is not None and status[0] == rec.comm
        if args is None or args.faulted:
            # the kernel could not read argv: the live process's /proc says it, if it is
            # still this image and agrees with what was read
            full = self.procfs.cmdline(h.pid) if current else None
            if full and (args is None or full[:len(argv)] == argv):
                argv, truncated = full, False
            else:
                self.counts["argv_unread"] += 1
        argv, truncated, hidden = redact_fitted(argv, truncated, self.rules)    # /proc's argv has no bound
        self.counts["redacted"] += hidden
        old_euid = st.euid
        ids = status[1:] if current else None
        if ids and ids[0] == h.uid:
            st.uid, st.euid, st.gid, st.egid = ids
        else:
            # gone (or moved on) before we looked: the real ids are exact; the effective one
            # follows the binary's setuid bit, as the kernel's exec did
            st.uid, st.gid = h.uid, h.gid
            st.euid, st.egid = self._setid_owner(rec.filename, h.uid, h.gid, h.ts_ns)
        # the login uid, session and pid namespace the kernel gave at exec, when it could
        # (agent/btf.py): exact even for a process gone before /proc is read
        if rec.auid is not None:
            st.auid, st.ses = rec.auid, rec.ses
        if rec.pidns is not None:
            st.pidns = rec.pidns
        if current:
            if rec.auid is None:
                auid, ses = self.procfs.login(h.pid)
                if auid is not None:
                    st.auid, st.ses = auid, ses
            if rec.pidns is None or rec.pidns != self.procfs.own_pidns:     # a container's, maybe
                pidns, container = self.procfs.namespace(h.pid)
                st.pidns = rec.pidns or pidns or st.pidns
                st.container = container or st.container
            st.cwd = self.procfs.cwd(h.pid) or st.cwd
            st.tty = self.procfs.tty(h.pid) or st.tty
        ev = self._ev("exec", h.ts_ns, pid=h.pid, start=st.start, argv=argv, exe=rec.filename, uid=st.uid,
                      euid=st.euid, gid=st.gid, egid=st.egid, comm=rec.comm)
        if truncated:
            ev["truncated"] = True
        self._fill(ev, st)
        out.append(self._names(ev))
        if st.euid != old_euid:
            out.append(self._names(self._ev("cred", h.ts_ns, pid=h.pid, start=st.start, via="exec",
                                            old_uid=st.uid, old_euid=old_euid, uid=st.uid, euid=st.euid)))
        return out

    def _cred(self, rec: d.Cred) -> list[dict[str, Any]]:
        h = rec.hdr
        st, out = self._state(h.pid, h.ts_ns)
        old_uid, old_euid, old_gid, old_egid = st.uid, st.euid, st.gid, st.egid
        a, b, _ = rec.ids
        gids = rec.call in d.GID_CALLS
        real, eff = ("gid", "egid") if gids else ("uid", "euid")
        if rec.call in ("setuid", "setgid"):
            # privileged (euid 0) callers set all ids; others only the effective one
            if old_euid == 0:
                setattr(st, real, a)
            setattr(st, eff, a)
        else:
            if a is not None:
                setattr(st, real, a)
            if b is not None:
                setattr(st, eff, b)
        ev = self._ev("cred", h.ts_ns, pid=h.pid, start=st.start, via=rec.call, old_uid=old_uid,
                      old_euid=old_euid, uid=st.uid, euid=st.euid)
        if gids:
            ev.update(old_gid=old_gid, old_egid=old_egid, gid=st.gid, egid=st.egid)
        for uid_key, name_key in (("old_uid", "old_user"), ("old_euid", "old_euser")):
            name = self.user_name(ev[uid_key])
            if name:
                ev[name_key] = name
        out.append(self._names(ev))
        return out

    def _sock(self, rec: d.Sock) -> list[dict[str, Any]]:
        h = rec.hdr
        if h.type == d.EV_PASSIVE:
            self.passive[(rec.raddr, rec.rport)] = (rec.laddr, rec.lport)
            while len(self.passive) > PASSIVE_KEEP:
                self.passive.popitem(last=False)
            return []
        if h.type == d.EV_CONNECT:
            # named by the process that began it (its SYN_SENT, aux microseconds before): by the
            # time it is recorded that process may have exited, and its pid be another's
            start, out = self._owner_at(h.pid, h.ts_ns - h.aux * 1000)
            ev = self._ev("connect", h.ts_ns, pid=h.pid, start=start, laddr=rec.laddr, lport=rec.lport,
                          raddr=rec.raddr, rport=rec.rport)
            rname = self.names(rec.raddr, ev["ts"]) if self.names is not None else None
            if rname:
                ev["rname"] = rname
            if rec.agg is not None:            # over budget: counted, sent once its minute is over
                self.aggregating[rec.agg] = ev
            else:
                out.append(ev)
            return out
        st, out = self._state(h.pid, h.ts_ns)
        # read from the accepted socket; without the kernel's BTF, the passive open's
        local = (rec.laddr, rec.lport) if rec.laddr is not None else self.passive.pop((rec.raddr, rec.rport), None)
        if local is None:
            self.counts["unmatched_accept"] += 1
            return out
        ev = self._ev("accept", h.ts_ns, pid=h.pid, start=st.start, laddr=local[0], lport=local[1],
                      raddr=rec.raddr, rport=rec.rport)
        if rec.agg is not None:
            self.aggregating[rec.agg] = ev
            return out
        out.append(ev)
        kept = self.accepted.pop((rec.raddr, rec.rport), [])
        self.accepted[(rec.raddr, rec.rport)] = (kept + [(h.pid, h.ts_ns, local[0], local[1])])[-ACCEPTS_KEPT:]
        while len(self.accepted) > PASSIVE_KEEP:
            self.accepted.popitem(last=False)
        self.forks_of.setdefault(h.pid, [])
        return out

    def _unix(self, rec: d.UnixConn) -> list[dict[str, Any]]:
        """A unix-socket connect (uconnect, the client) or its accept (uaccept, the server), with
        the other end's process when the kernel named it (docs/events.md)."""
        h = rec.hdr
        st, out = self._state(h.pid, h.ts_ns)
        if h.type == d.EV_UCONNECT:
            if rec.path is None:
                return out                       # an unnamed socket: socketpair-like, nothing to trace
            ev = self._ev("uconnect", h.ts_ns, pid=h.pid, start=st.start, path=rec.path, conn=rec.conn)
            if rec.bound and rec.bound != rec.path:
                ev["bound"] = rec.bound
            # the server may accept after a one-shot client (`tmux ls`) has exited: its start is
            # kept here for the accept
            self.uclients[rec.conn] = (h.pid, st.start)
            while len(self.uclients) > PASSIVE_KEEP:
                self.uclients.popitem(last=False)
        else:
            ev = self._ev("uaccept", h.ts_ns, pid=h.pid, start=st.start, conn=rec.conn)
            if rec.bound:
                ev["path"] = rec.bound
        if rec.peer_pid is not None:
            ev["peer_pid"] = rec.peer_pid
            # the listener may be gone (ssh's ControlPersist master forks away from it): a start
            # only for a process the table knows, or the client this connection's connect named
            client = self.uclients.pop(rec.conn, None) if h.type == d.EV_UACCEPT else None
            peer = self.procs.get(rec.peer_pid)
            if client is not None and client[0] == rec.peer_pid:
                ev["peer_start"] = client[1]
            elif peer is not None:
                ev["peer_start"] = peer.start
        if rec.peer_uid is not None:
            ev["peer_uid"] = rec.peer_uid
        self.counts["redacted"] += redact_event(ev, self.rules)     # a socket's name may carry a token
        out.append(ev)
        return out

    def aggregates_due(self, read: Callable[[bytes], tuple[int, int, int] | None], now_ns: int,
                       final: bool = False, grace_ns: int = 2_000_000_000) -> list[dict[str, Any]]:
        """The aggregated connections whose minute is over (all of them when final, at stop): for
        each, the event its first connection made, with `count`, `first` and `last` added from
        read(key) - the kernel's (count, first ns, last ns), taken out of its table. One event per
        key, stamped with its first connection's time and ports: a replayed batch is the same event."""
        out = []
        for key, ev in list(self.aggregating.items()):
            minute = d.AGG_KEY.unpack(key)[1]
            if not final and now_ns < (minute + 1) * d.AGG_NS + grace_ns:
                continue
            del self.aggregating[key]
            counted = read(key)
            count, first, last = counted if counted else (1, None, None)
            ev["count"] = count
            ev["first"] = ev["ts"] if first is None else self._wall(first)
            ev["last"] = ev["ts"] if last is None else self._wall(last)
            out.append(ev)
        return out

    def _wall(self, ts_ns: int) -> float:
        return (self._epoch_us + (ts_ns + 500) // 1000) / 1e6

    def budget_losses(self, totals: dict[int, int], since: float, now: float, per_second: int,
                      burst: int) -> list[dict[str, Any]]:
        """The connection records each uid's budget refused (capture.c, the connection budget)
        since the last call, as loss events naming the uid: `totals` are the kernel's counts
        since load, uid -> records; since/now the window, epoch seconds."""
        out = []
        for uid, total in sorted(totals.items()):
            count = total - self._budget_reported.get(uid, 0)
            if count <= 0:
                continue
            self._budget_reported[uid] = total
            if uid == d.NO_PROCESS:
                whose = "incoming TCP connections (no process known)"
            elif uid == d.OVER_BUDGET_OTHER:
                whose = "users beyond the 4,096 the kernel counts apart"
            else:
                name = self.user_name(uid)
                whose = f"uid {uid}" + (f" ({name})" if name else "")
            out.append({"v": 1, "kind": "loss", "host": self.host, "boot": self.boot, "ts": round(now, 6),
                        "since": round(since, 6), "count": count,
                        "what": f"connection records over the per-user budget of {per_second:,}/s, burst "
                                f"{burst:,}: {whose}, {count:,} not recorded"})
        return out

    def unix_snapshot(self, found, ts_ns: int) -> list[dict[str, Any]]:
        """Connections that existed when the agent started (agent/unixdiag.py's Attached), as a
        uconnect and a uaccept each, marked snapshot: not seen connecting."""
        out = []
        for a in found:
            client, server = self.procs.get(a.client_pid), self.procs.get(a.server_pid)
            if client is None or server is None:
                continue                       # started after the process snapshot: seen live
            conn = self._ev("uconnect", ts_ns, pid=a.client_pid, start=client.start, path=a.path, conn=a.conn,
                            snapshot=True)
            listener = self.procs.get(a.listener_pid) if a.listener_pid is not None else None
            if listener is not None:
                conn.update(peer_pid=a.listener_pid, peer_start=listener.start, peer_uid=listener.uid)
            out.append(conn)
            out.append(self._ev("uaccept", ts_ns, pid=a.server_pid, start=server.start, conn=a.conn, path=a.path,
                                peer_pid=a.client_pid, peer_start=client.start, peer_uid=client.uid,
                                snapshot=True))
        for ev in out:
            self.counts["redacted"] += redact_event(ev, self.rules)
        return out

    # --- logins (from sshd's log) ------------------------------------------------------

    def add_login(self, wall_ts: float, acc) -> None:
        self.pending_logins.append((wall_ts, acc))

    def match_logins(self, now: float, give_up_after: float = 30.0) -> list[dict[str, Any]]:
        """Logins whose sshd process is known by now; older unmatched ones are counted and dropped
        (give_up_after=0 at shutdown: whatever is left is counted, never silently lost)."""
        out, keep = [], []
        for wall_ts, acc in self.pending_logins:
            ev = self._login(wall_ts, acc)
            if ev:
                out.append(ev)
            elif now - wall_ts < give_up_after:
                keep.append((wall_ts, acc))
            else:
                self.counts["unmatched_login"] += 1
        self.pending_logins = keep
        return out

    def _logged_by_sshd(self, pid: int | None, accepted: tuple[int, int, str, int] | None) -> bool:
        """Whether the pid a log line names may be sshd's per-connection process. Anyone may write
        "sshd[PID]: Accepted publickey for jim ..." - to syslog (`logger -t`), or to the journal from
        a program named sshd - naming their own shell, which would make it jim's login. The process
        that logs it is sshd's monitor: root (uid and euid; a setuid program a user runs keeps
        their uid), running sshd's program (sshd, sshd-session), and forked by the listener whose
        accept of that client was seen, when it was - after that accept and before the listener's
        next one: a line read late may name a pid that sshd has given since to another
        connection's process. Else the line is joined by the accept alone."""
        st = self.procs.get(pid) if pid is not None else None
        if st is None or st.uid != 0 or st.euid != 0:
            return False
        if accepted:
            since, until = self._serving(accepted)
            if st.ppid != accepted[0] or st.start < since or (until is not None and st.start >= until):
                return False
        return _is_sshd(self.procfs.exe(pid))

    def _serving(self, accepted: tuple[int, int, str, int]) -> tuple[int, int | None]:
        """When the listener may have forked the process serving this accept: from the accept
        to the listener's next accept (None: none seen yet). OpenSSH's listener accepts and forks
        in turn, one connection at a time."""
        listener, since = accepted[0], accepted[1]
        later = [ts for kept in self.accepted.values() for pid, ts, _, _ in kept if pid == listener and ts > since]
        return since, min(later, default=None)

    def _served_by(self, accepted: tuple[int, int, str, int]) -> tuple[int, int] | None:
        """(pid, start) of the one child the listener forked while serving this accept. Not
        the first to show up after the accept: in a pid namespace children are known when each
        first runs, in any order, and two logins from one address at once were both joined to
        the child that ran first. None - the login waits, then is counted unmatched - while that
        child has not shown its own pid yet, when no fork was seen, or when there were two (the
        accept between them was lost): never another connection's process."""
        since, until = self._serving(accepted)
        forks = [f for f in self.forks_of.get(accepted[0], ()) if f[0] >= since and (until is None or f[0] < until)]
        if len(forks) != 1 or forks[0][1] is None:
            return None
        return forks[0][1], forks[0][2]

    def _login(self, wall_ts: float, acc) -> dict[str, Any] | None:
        """sshd's per-connection process: the child its listener forked after accepting
        this client's address and port (or the pid in the log line, when it has one)."""
        addr = _plain(acc.addr)
        kept = self.accepted.get((addr, acc.port), [])
        # the accept whose listener forked the line's pid; else the latest accept of this client
        # by a listener running sshd's program (the only one, whatever it runs: systemd's socket
        # activation): another server's accept of the same NAT port - and the child it forked -
        # is never the login's
        accepted = next((a for a in reversed(kept) if self._logged_by_sshd(acc.pid, a)), None)
        if not kept and self._logged_by_sshd(acc.pid, None) or accepted is not None:
            found = (acc.pid, self.procs[acc.pid].start)
        else:
            if len(kept) > 1:
                sshd = [a for a in kept if _is_sshd(self.procfs.exe(a[0]))]
                kept = sshd
            # the session may be over by the time its log line is read: the fork remembers
            # the child's pid and start either way
            accepted = kept[-1] if kept else None
            found = self._served_by(accepted) if accepted else None
        if found is None:
            return None
        pid, start = found
        ev = self._ev("login", 0, pid=pid, start=start, user=acc.user, method=acc.method, raddr=addr,
                      rport=acc.port, service="sshd")
        ev["ts"] = round(wall_ts, 6)
        if accepted:
            ev.update(laddr=accepted[2], lport=accepted[3])
        if acc.key_fp:
            ev.update(key_fp=acc.key_fp, key_type=acc.key_type)
        uid = self.uid_of(acc.user)
        if uid is not None:
            ev["uid"] = uid
        auid, ses = self.procfs.login(pid)
        if ses is not None and ses != AUID_UNSET:
            ev["ses"] = ses
        return ev

    def _file(self, rec: d.FileChange) -> list[dict[str, Any]]:
        h = rec.hdr
        st, out = self._state(h.pid, h.ts_ns)
        cwd = self.procfs.cwd(h.pid) or st.cwd
        path, path2 = rec.path, rec.path2
        if not path.startswith("/"):
            if not cwd:
                return out
            path = os.path.normpath(os.path.join(cwd, path))
        if path2 and not path2.startswith("/") and cwd:
            path2 = os.path.normpath(os.path.join(cwd, path2))
        if self.watch and not (watched(path, self.watch) or (path2 and watched(path2, self.watch))):
            return out
        ev = self._ev("file", h.ts_ns, pid=h.pid, start=st.start, op=rec.op, path=path, euid=st.euid)
        if path2:
            ev["path2"] = path2
        if rec.mode is not None:
            ev["mode"] = rec.mode & 0o7777
        if rec.owner is not None:
            ev["uid"] = rec.owner
        if rec.group is not None:
            ev["gid"] = rec.group
        name = self.user_name(st.euid)
        if name:
            ev["euser"] = name
        out.append(ev)
        return out


def _is_sshd(exe: str | None) -> bool:
    """Does this program file run sshd (sshd, sshd-session, sshd-auth)?"""
    return bool(exe) and os.path.basename(exe).startswith("sshd")


def _plain(addr: str) -> str:
    try:
        return plain_ip(addr)
    except ValueError:
        return addr


def noise(program: str, patterns: tuple[str, ...]) -> bool:
    """Is this program (its path, or its name) one the config calls noise?"""
    name = os.path.basename(program)
    return any(fnmatch.fnmatchcase(program, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def watched(path: str, patterns: tuple[str, ...]) -> bool:
    """A path is watched when it is under a pattern: `/etc` covers /etc/x; globs allowed."""
    for pat in patterns:
        base = pat.rstrip("/")
        if path == base or path.startswith(base + "/") or fnmatch.fnmatchcase(path, pat) \
                or fnmatch.fnmatchcase(path, base + "/*"):
            return True
    return False


def kernel_prefixes(patterns: tuple[str, ...]) -> list[str]:
    """The literal part of each pattern, up to its first wildcard: what the kernel filters on."""
    out = []
    for pat in patterns:
        cut = min([i for i, ch in enumerate(pat) if ch in "*?["] + [len(pat)])
        prefix = pat[:cut]
        if not prefix.endswith("/") and cut == len(pat):
            prefix += "/"                    # /etc means /etc/..., not /etcetera
        out.append(prefix)
    return sorted(set(out))




def with_setid(bits: tuple[int | None, int | None], uid: int, gid: int) -> tuple[int, int]:
    """(euid, egid) a process gets by exec'ing, as uid/gid, a file with these setid_bits: the
    owner's where setuid/setgid."""
    suid, sgid = bits
    return (uid if suid is None else suid), (gid if sgid is None else sgid)


HOST_ROOT = "/proc/1/root"     # the host's filesystem, whatever the agent's own mount namespace


def setid_bits(path: str, host_root: str = HOST_ROOT) -> tuple[int | None, int | None]:
    """(owner uid if path is setuid, owner gid if setgid); None for a bit that is not set.
    Looked up on the host's filesystem first (through pid 1's root: CAP_SYS_PTRACE): the
    agent's own /tmp is private under its unit (PrivateTmp=), its root an image under
    Kubernetes, and a binary exec'd from the host's /tmp would otherwise seem not setuid."""
    st = None
    for where in (host_root + path, path) if path.startswith("/") else (path,):
        try:
            st = os.stat(where)
            break
        except OSError:
            continue
    if st is None:
        return None, None
    return (st.st_uid if st.st_mode & statmod.S_ISUID else None,
            st.st_gid if st.st_mode & statmod.S_ISGID else None)
