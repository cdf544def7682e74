"""The fallback where BPF is not available: the kernel's process connector (netlink).

It reports fork, exec, uid changes and exit - no arguments, no connections, no files.
Arguments, program and ids are read from /proc while the process lives, so a process that
exits before it is read keeps only its program name. NetlinkCapture offers the same
poll/drain/lost/close as the BPF Capture and feeds the same Assembler.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time

from . import decode as d
from .assemble import Assembler

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_UID, PROC_EVENT_EXIT = 0x1, 0x2, 0x4, 0x80000000

NLMSGHDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
EVENT_HEAD = struct.Struct("=IIQ")                 # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
FOUR = struct.Struct("=IIII")


class NetlinkUnavailable(RuntimeError):
    pass


def monotonic_epoch() -> float:
    """Epoch seconds at CLOCK_MONOTONIC zero: the connector stamps events with that clock."""
    return time.time() - time.monotonic()


def parse_message(data: bytes) -> list[tuple[int, int, tuple[int, ...]]]:
    """Netlink datagram -> [(what, timestamp_ns, (four fields))]. Pure."""
    out = []
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length = NLMSGHDR.unpack_from(data, off)[0]
        if length < NLMSGHDR.size:
            break
        body = off + NLMSGHDR.size + CN_MSG.size
        if body + EVENT_HEAD.size + FOUR.size <= off + length:
            what, _cpu, ts = EVENT_HEAD.unpack_from(data, body)
            out.append((what, ts, FOUR.unpack_from(data, body + EVENT_HEAD.size)))
        off += (length + 3) & ~3
    return out


def _hdr(type_: int, ts: int, pid: int, uid: int = 0, gid: int = 0, aux: int = 0) -> d.Hdr:
    return d.Hdr(ts, pid, pid, uid, gid, type_, aux, pid)


class NetlinkCapture:
    def __init__(self, assembler: Assembler):
        self.assembler = assembler
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            self.sock.bind((os.getpid(), CN_IDX_PROC))
            payload = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
            self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, os.getpid()) + cn)
        except OSError as exc:
            raise NetlinkUnavailable(f"the netlink process connector is not available either ({exc.strerror}); "
                                     "it needs CAP_NET_ADMIN and a kernel with CONFIG_PROC_EVENTS") from None
        self.sock.setblocking(False)
        self._lost = 0

    def _records(self, what: int, ts: int, f: tuple[int, ...]) -> list:
        procfs = self.assembler.procfs
        if what == PROC_EVENT_FORK:
            _ppid, ptgid, child_pid, child_tgid = f
            if child_pid != child_tgid:
                return []                                   # a thread
            return [d.Fork(_hdr(d.EV_FORK, ts, ptgid, aux=child_tgid), child_tgid)]
        if what == PROC_EVENT_EXEC:
            pid, tgid = f[0], f[1]
            if pid != tgid:
                return []
            ids = procfs.ids(tgid)
            st = self.assembler.procs.get(tgid)
            uid, gid = (ids[0], ids[2]) if ids else ((st.uid, st.gid) if st else (0, 0))
            argv = procfs.cmdline(tgid)
            exe, comm = procfs.exe(tgid), procfs.comm(tgid) or ""
            h = _hdr(d.EV_EXEC, ts, tgid, uid, gid)
            recs = [d.ExecArgs(h._replace(type=d.EV_EXEC_ARGS), argv or [comm or exe or "?"], argv is None,
                               argv is None)]
            return recs + [d.Exec(h, comm[:15], exe or (argv[0] if argv else comm))]
        if what == PROC_EVENT_UID:
            pid, tgid, ruid, euid = f
            if pid != tgid:
                return []
            return [d.Cred(_hdr(d.EV_CRED, ts, tgid), "uid change", (ruid, euid, None))]
        if what == PROC_EVENT_EXIT:
            pid, tgid, status, _signal = f
            if pid != tgid:
                return []
            code = (status >> 8) & 0xFF if status & 0x7F == 0 else None
            return [d.Exit(_hdr(d.EV_EXIT, ts, tgid), code)]
        return []

    def poll(self, timeout_ms: int = 200, now: bool = False) -> list:
        """What arrived within timeout_ms (everything queued is read; `now` changes nothing here)."""
        out: list = []
        ready, _, _ = select.select([self.sock], [], [], timeout_ms / 1000)
        while ready:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:              # the kernel dropped events for us
                    self._lost += 1
                    continue
                raise
            for what, ts, fields in parse_message(data):
                for rec in self._records(what, ts, fields):
                    out.extend(self.assembler.feed(rec))
        return out

    def drain(self) -> list:
        return self.poll(0)

    def lost(self) -> int:
        return self._lost

    def close(self) -> None:
        self.sock.close()
