"""The unix-socket connections that exist when the agent starts (issue 19): a tmux client
attached yesterday made its connect before the agent could see it.

The kernel lists unix sockets over NETLINK_SOCK_DIAG (UNIX_DIAG: each socket's inode, state,
bound name and its peer's inode); /proc/PID/fd says which processes hold which socket inode.
A connection is an established pair: the server's end carries the listener's bound name (an
accepted socket shares it), the client's end usually none. Parsing and pairing are pure
(`parse_dump`, `connections`); the socket and /proc reads are at the edges (`dump`,
`socket_holders`). The agent's Assembler turns the pairs into `uconnect`/`uaccept` events
marked `snapshot`.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

from .decode import unix_name

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER = 0x1, 0x4
UNIX_DIAG_NAME, UNIX_DIAG_PEER = 0, 2
TCP_LISTEN, TCP_ESTABLISHED = 10, 1
SOCK_STREAM = 1

NLMSGHDR = struct.Struct("=IHHII")
REQUEST = struct.Struct("=BBHIIIII")      # family protocol pad states ino show cookie[2]
MESSAGE = struct.Struct("=BBBBIII")       # family type state pad ino cookie[2]
RTATTR = struct.Struct("=HH")


class UnixSocket(NamedTuple):
    ino: int
    type: int
    state: int
    name: str | None          # as decode.unix_name writes it (abstract: @name)
    peer: int | None          # the peer's inode


class Connection(NamedTuple):
    client_ino: int
    server_ino: int
    path: str                 # the listener's bound name


def request(seq: int = 1) -> bytes:
    body = REQUEST.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER, 0, 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_dump(data: bytes) -> tuple[list[UnixSocket], bool]:
    """Netlink messages of a UNIX_DIAG dump -> (sockets, whether the dump is done). Pure; a
    message cut short ends the parse rather than inventing a socket."""
    out, off, done = [], 0, False
    while off + NLMSGHDR.size <= len(data):
        length, type_, _, _, _ = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            break
        if type_ in (NLMSG_DONE, NLMSG_ERROR):
            done = True
            break
        body, end = off + NLMSGHDR.size, off + length
        if body + MESSAGE.size <= end:
            _family, stype, state, _, ino, _, _ = MESSAGE.unpack_from(data, body)
            name, peer, at = None, None, body + MESSAGE.size
            while at + RTATTR.size <= end:
                alen, atype = RTATTR.unpack_from(data, at)
                if alen < RTATTR.size or at + alen > end:
                    break
                value = data[at + RTATTR.size:at + alen]
                if atype == UNIX_DIAG_NAME:
                    name = unix_name(value, len(value))
                elif atype == UNIX_DIAG_PEER and len(value) >= 4:
                    peer = struct.unpack_from("=I", value)[0]
                at += (alen + 3) & ~3
            out.append(UnixSocket(ino, stype, state, name, peer))
        off += (length + 3) & ~3
    return out, done


def dump(timeout: float = 2.0) -> list[UnixSocket]:
    """Every unix socket of the agent's network namespace, from the kernel."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(timeout)
        nl.send(request())
        out: list[UnixSocket] = []
        while True:
            got, done = parse_dump(nl.recv(1 << 16))
            out.extend(got)
            if done:
                return out


def connections(sockets: list[UnixSocket]) -> list[Connection]:
    """Established stream pairs whose one end carries a name a listener has: that end is the
    server's (accepted sockets share their listener's name), the other the client's. Pure."""
    by_ino = {s.ino: s for s in sockets}
    listening = {s.name for s in sockets if s.state == TCP_LISTEN and s.name}
    out = []
    for s in sockets:
        if s.type != SOCK_STREAM or s.state != TCP_ESTABLISHED or not s.name or s.name not in listening:
            continue
        peer = by_ino.get(s.peer) if s.peer else None
        if peer is None or peer.name == s.name:
            continue
        out.append(Connection(peer.ino, s.ino, s.name))
    return out


def socket_holders(proc: str = "/proc") -> dict[int, list[int]]:
    """socket inode -> the pids holding it open (sorted), from /proc/PID/fd."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"{proc}/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.setdefault(int(target[8:-1]), []).append(int(entry))
    return {ino: sorted(set(pids)) for ino, pids in out.items()}


class Attached(NamedTuple):
    """A connection found at start, with its processes: who holds each end, who listens."""
    client_pid: int
    server_pid: int
    listener_pid: int | None
    path: str
    conn: str


def comm_wanted(comm: str | None, comms: tuple[str, ...]) -> bool:
    """The kernel filter's rule for comms: whole, or up to a colon (`tmux: client`)."""
    return bool(comm) and any(comm == c or comm.startswith(c + ":") for c in comms)


# At most this many connections per socket path are reported at start, one per client process: a
# tmux server or an ssh master has a handful of clients, and a user holding thousands of
# connections to a watched path must not make every agent start ship them all again
MAX_PER_PATH = 256


def capped(found: list[Attached], per_path: int = MAX_PER_PATH) -> tuple[list[Attached], int]:
    """The connections to report, and how many were left out: a client process's second
    connection to the same path adds nothing (one process is one client), and past `per_path`
    clients of one path the rest are counted, not shipped."""
    kept: list[Attached] = []
    seen: set[tuple[str, int]] = set()
    per: dict[str, int] = {}
    for a in found:
        if (a.path, a.client_pid) in seen or per.get(a.path, 0) >= per_path:
            continue
        seen.add((a.path, a.client_pid))
        per[a.path] = per.get(a.path, 0) + 1
        kept.append(a)
    return kept, len(found) - len(kept)


def attached(sockets: list[UnixSocket], holders: dict[int, list[int]], comm_of, prefixes: tuple[str, ...],
             comms: tuple[str, ...], boot_tag: str) -> list[Attached]:
    """The connections the agent would have recorded had it been running: a watched path, or a
    watched client program. Each end is named by the lowest pid holding it (a forked server
    shares its sockets with its children). Pure, with comm_of(pid) given."""
    listeners = {s.name: s.ino for s in sockets if s.state == TCP_LISTEN and s.name}
    out = []
    for c in connections(sockets):
        clients, servers = holders.get(c.client_ino), holders.get(c.server_ino)
        if not clients or not servers:
            continue
        if not (c.path.startswith(prefixes) or comm_wanted(comm_of(clients[0]), comms)):
            continue
        listener = holders.get(listeners.get(c.path, -1))
        out.append(Attached(clients[0], servers[0], listener[0] if listener else None, c.path,
                            f"ino{c.client_ino:x}-{boot_tag}"))
    return out
