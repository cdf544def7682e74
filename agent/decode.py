"""Decode the ring buffer's raw records (layouts in capture.c) into plain tuples.

Pure: bytes in, a Record out. Fixed layouts are unpacked with precompiled struct formats
so the consumer keeps up with exec storms.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import NamedTuple

from whodid.tracer.events import plain_ip

EV_EXEC_ARGS, EV_EXEC, EV_FORK, EV_EXIT, EV_CRED, EV_CONNECT, EV_PASSIVE, EV_ACCEPT, EV_FILE = range(1, 10)
EV_UCONNECT, EV_UACCEPT, EV_LISTEN = 10, 11, 12
FILE_OPS = {1: "write", 2: "create", 3: "rename", 4: "unlink", 5: "rmdir", 6: "chmod", 7: "chown"}
CRED_CALLS = {1: "setuid", 2: "setreuid", 3: "setresuid", 4: "setgid", 5: "setregid", 6: "setresgid"}
GID_CALLS = {"setgid", "setregid", "setresgid"}
UNCHANGED = 0xFFFFFFFF
NO_PROCESS = 0xFFFFFFFF             # the connection budget's key for passive TCP opens (capture.c)
OVER_BUDGET_OTHER = 0xFFFFFFFE      # ... and for uids its table had no room for
TRUNC_FAULT = 2
AF_INET = 2

HDR = struct.Struct("<QIIIIIIII")               # ts pid tid uid gid type aux gpid pad
ARGS_HEAD = struct.Struct("<HBBI")              # argc truncated pad len
EXEC_TAIL = struct.Struct("<16s256s")           # comm filename
EXEC_FACTS = struct.Struct("<IIII")             # known auid ses pidns: what the kernel's task_struct said
KNOWN_LOGIN, KNOWN_PIDNS = 1, 2
EXIT_TAIL = struct.Struct("<iI")                # code has_code
CRED_TAIL = struct.Struct("<IIII")              # call a b c
SOCK_TAIL = struct.Struct("<HHHH16s16s")        # family lport rport flags laddr raddr
SOCK_LOCAL = 1                                  # flags: an accept's laddr/lport were read from its socket
SOCK_AGGREGATE = 2                              # flags: the first connection of an aggregate (capture.c)
SOCK_LATE = 4                                   # flags: a connect recorded late (capture.c); its
                                                # header's aux already names its SYN_SENT, all user space needs
AGG_KEY = struct.Struct("<IIBBHHH16s")          # pid minute dir pad family port pad2 addr: capture.c's agg_key
AGG_NS = 60_000_000_000                         # an aggregate's span: a minute of CLOCK_BOOTTIME
AGG_CONNECT, AGG_ACCEPT = 0, 1
FILE_TAIL = struct.Struct("<IIIIII256s256s")    # op relative mode owner group pad path path2
UNIX_TAIL = struct.Struct("<IIIIIIQQ108s108s")  # peer_pid peer_uid known path_len bound_len pad conn_sk conn_ts
#                                                 path bound
UKNOWN_PEER_PID, UKNOWN_PEER_UID = 1, 2


class DecodeError(ValueError):
    pass


class Hdr(NamedTuple):
    ts_ns: int
    pid: int
    tid: int
    uid: int
    gid: int
    type: int
    aux: int
    gpid: int
    pad: int = 0


class ExecArgs(NamedTuple):
    hdr: Hdr
    argv: list[str]
    truncated: bool
    faulted: bool = False     # the kernel could not read all of argv (page not present)


class Exec(NamedTuple):
    hdr: Hdr
    comm: str
    filename: str
    # read from the task at exec when the kernel's BTF located them (agent/btf.py); None when
    # not read, and then /proc or the parent says
    auid: int | None = None
    ses: int | None = None
    pidns: int | None = None


class Fork(NamedTuple):
    hdr: Hdr
    child: int


class Exit(NamedTuple):
    hdr: Hdr
    code: int | None


class Cred(NamedTuple):
    hdr: Hdr
    call: str
    ids: tuple[int | None, int | None, int | None]    # None: left unchanged


class Sock(NamedTuple):
    hdr: Hdr
    laddr: str | None
    lport: int
    raddr: str
    rport: int
    # the first connection over its uid's budget to one place this minute: the key (AGG_KEY bytes)
    # under which the kernel counts it and the rest; None for a connection recorded on its own
    agg: bytes | None = None


class Listen(NamedTuple):
    """A TCP socket entered LISTEN (listen() returned 0): hdr names the caller."""
    hdr: Hdr
    laddr: str
    lport: int


class FileChange(NamedTuple):
    hdr: Hdr
    op: str
    path: str
    path2: str | None
    relative: bool
    mode: int | None
    owner: int | None
    group: int | None


class UnixConn(NamedTuple):
    """A unix-socket connect (hdr.type EV_UCONNECT, the client) or its accept (EV_UACCEPT, the
    server). Names are as people read them: an abstract name `@name`, odd bytes as \\xHH."""
    hdr: Hdr
    conn: str                  # the connection's id: the client's sock and the connect's time
    path: str | None           # connect: what was asked for
    bound: str | None          # the listener's bound name, when the kernel had one
    peer_pid: int | None       # SO_PEERCRED: connect, who called listen(); accept, the client
    peer_uid: int | None


Record = ExecArgs | Exec | Fork | Exit | Cred | Sock | Listen | FileChange | UnixConn


# tuple.__new__ straight from the unpacked tuple: a NamedTuple's own constructor is Python
# code, and every record has a header
_hdr = partial(tuple.__new__, Hdr)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _addr(family: int, raw: bytes) -> str:
    return plain_ip(raw[:4] if family == AF_INET else raw)


def unix_name(raw: bytes, length: int) -> str | None:
    """A sun_path as a name: the first `length` bytes; a pathname ends at its first NUL, an
    abstract name (first byte NUL) is `@` and all its bytes (a relative path that starts with
    `@` is written `./@...`, so it cannot pass for one). Bytes that are not printable UTF-8
    are written \\xHH, so a name cannot carry control characters into a terminal."""
    raw = raw[:max(0, min(length, len(raw)))]
    if not raw:
        return None
    if raw[:1] == b"\0":
        body, at = raw[1:], "@"
    else:
        body, at = raw.split(b"\0", 1)[0], ""
        if not body:
            return None
        if body[:1] == b"@":
            at = "./"                  # a relative path, not to be read as an abstract name
    out = []
    for ch in body.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:                 # a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return at + "".join(out)


def _id(value: int) -> int | None:
    return None if value == UNCHANGED else value


def decode(raw: bytes) -> Record:
    if len(raw) < HDR.size:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than its header ({HDR.size})")
    hdr = _hdr(HDR.unpack_from(raw))
    body = HDR.size
    try:
        t = hdr.type
        if t == EV_EXEC_ARGS:
            argc, truncated, _, length = ARGS_HEAD.unpack_from(raw, body)
            start = body + ARGS_HEAD.size
            blob = raw[start:start + length]
            argv = [a.decode("utf-8", "surrogateescape") for a in blob.split(b"\0")[:argc]]
            return ExecArgs(hdr, argv, bool(truncated), truncated == TRUNC_FAULT)
        if t == EV_EXEC:
            comm, filename = EXEC_TAIL.unpack_from(raw, body)
            if len(raw) < body + EXEC_TAIL.size + EXEC_FACTS.size:
                return Exec(hdr, _cstr(comm), _cstr(filename))
            known, auid, ses, pidns = EXEC_FACTS.unpack_from(raw, body + EXEC_TAIL.size)
            login = known & KNOWN_LOGIN
            return Exec(hdr, _cstr(comm), _cstr(filename), auid if login else None, ses if login else None,
                        pidns if known & KNOWN_PIDNS else None)
        if t == EV_FORK:
            return Fork(hdr, hdr.aux)
        if t == EV_EXIT:
            code, has_code = EXIT_TAIL.unpack_from(raw, body)
            return Exit(hdr, code if has_code else None)
        if t == EV_CRED:
            call, a, b, c = CRED_TAIL.unpack_from(raw, body)
            return Cred(hdr, CRED_CALLS.get(call, f"call{call}"), (_id(a), _id(b), _id(c)))
        if t in (EV_CONNECT, EV_PASSIVE, EV_ACCEPT):
            family, lport, rport, flags, laddr, raddr = SOCK_TAIL.unpack_from(raw, body)
            # an accept's local end comes from its socket, or (without the kernel's BTF) from the
            # passive open user space joins it to
            local = None if t == EV_ACCEPT and not flags & SOCK_LOCAL else _addr(family, laddr)
            agg = None
            if flags & SOCK_AGGREGATE:
                connect = t == EV_CONNECT
                agg = AGG_KEY.pack(hdr.pid, hdr.ts_ns // AGG_NS, AGG_CONNECT if connect else AGG_ACCEPT, 0, family,
                                   rport if connect else lport, 0, raddr)
            return Sock(hdr, local, lport, _addr(family, raddr), rport, agg)
        if t == EV_LISTEN:
            family, lport, _, _, laddr, _ = SOCK_TAIL.unpack_from(raw, body)
            return Listen(hdr, _addr(family, laddr), lport)
        if t == EV_FILE:
            op, relative, mode, owner, group, _, path, path2 = FILE_TAIL.unpack_from(raw, body)
            p2 = _cstr(path2)
            return FileChange(hdr, FILE_OPS.get(op, "write"), _cstr(path), p2 or None, bool(relative),
                              mode if op in (2, 6) or (op == 1 and mode) else None,
                              _id(owner) if op == 7 else None, _id(group) if op == 7 else None)
        if t in (EV_UCONNECT, EV_UACCEPT):
            ppid, puid, known, path_len, bound_len, _, sk, conn_ts, path, bound = UNIX_TAIL.unpack_from(raw, body)
            return UnixConn(hdr, f"{sk:x}-{conn_ts}", unix_name(path, path_len) if t == EV_UCONNECT else None,
                            unix_name(bound, bound_len), ppid if known & UKNOWN_PEER_PID else None,
                            puid if known & UKNOWN_PEER_UID else None)
    except struct.error as exc:
        raise DecodeError(f"record type {hdr.type} of {len(raw)} bytes is truncated ({exc})") from None
    raise DecodeError(f"unknown record type {hdr.type}")
