"""The names behind the addresses this host connects to, from the DNS answers it received
(docs/agent.md, "Names of the addresses a host connected to").

`NameBook` is the state, pure: packets in (as bytes, with whether the host sent or received
them and when), a name out for an address at a time. `DnsWatch` is the edge: an AF_PACKET
socket on every interface of the agent's network namespace (`lo` too: systemd-resolved's
stub and local caches answer over it), a classic BPF filter so the kernel passes only UDP and
TCP to or from port 53, and a non-blocking drain.

Rules:
- An answer counts only if it answers a query this host sent: same transaction id, question,
  and the two ends' addresses and ports, within PENDING_FOR seconds - what a stub resolver
  itself checks. An answer nobody asked for (anyone can send the host a UDP packet "from" port
  53) names nothing.
- The address gets the name the client **asked** for (the question), not the CNAME target:
  `to:eks.us-east-1.amazonaws.com` is what a person will type; the chain only decides which
  A/AAAA records belong to the question.
- A name is held past its TTL (capped at a day) by GRACE seconds: programs cache answers
  (the JVM, nscd, a connection pool), so a connect can come minutes after the answer.
- An address may have been answered for several names (a CDN, a shared load balancer): the
  newest answer received no later than the connect wins; up to PER_ADDRESS are held.
- Bounded: CAPACITY addresses (least recently answered go first), PENDING_MAX queries.
- The drain runs before each connect is named (Assembler), and on every turn of the agent's
  loop: the kernel queues a DNS answer on this socket before the client can read it, so an
  answer the client used before connecting is always drained by the time its connect is.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from collections import OrderedDict

from . import dns

CAPACITY = 4096          # addresses held
PER_ADDRESS = 4          # names held per address
GRACE = 600.0            # seconds a name is held past its TTL
MAX_TTL = 86400.0        # a TTL longer than a day is held as a day
PENDING_MAX = 1024       # queries waiting for their answer
PENDING_FOR = 10.0       # seconds a query waits (glibc gives up after 5 s x 2 tries)
CLOCK_SLACK = 1.0        # an answer stamped up to this long after the connect still counts (two clocks)
DRAIN_MAX = 4096         # packets read per drain; the rest wait for the next
RCVBUF = 4 << 20         # bytes the kernel queues for us between drains

ETH_P_ALL = 0x0003
PACKET_HOST, PACKET_OUTGOING = 0, 4
SO_ATTACH_FILTER, SO_TIMESTAMPNS, SO_RCVBUFFORCE = 26, 35, 33


def host_resolvers(path: str = "/etc/resolv.conf", resolved: str = "/run/systemd/resolve/resolv.conf",
                   host_root: str = "/proc/1/root") -> set[str]:
    """The DNS servers this host's programs ask: resolv.conf's `nameserver` lines, and - when
    one is systemd-resolved's stub (127.0.0.53, 127.0.0.54) - the upstream servers resolved
    itself asks. An unreadable file gives none. Both the host's files (through pid 1's root)
    and the agent's own: in a pod, its /etc/resolv.conf names the cluster's DNS, not the node's."""
    found: set[str] = set()
    if host_root:
        found = _resolvers_in(host_root + path, host_root + resolved)
    return found | _resolvers_in(path, resolved)


def _resolvers_in(path: str, resolved: str) -> set[str]:
    found: set[str] = set()
    for file in (path, resolved):
        try:
            with open(file) as f:
                lines = f.read(65536).splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                found.add(words[1].split("%")[0])
        if file == path and not found & {"127.0.0.53", "127.0.0.54"}:
            break
    return found


class NameBook:
    def __init__(self, capacity: int = CAPACITY, per_address: int = PER_ADDRESS, grace: float = GRACE,
                 pending_max: int = PENDING_MAX, pending_for: float = PENDING_FOR,
                 resolvers: frozenset[str] | None = None):
        self.capacity, self.per_address, self.grace = capacity, per_address, grace
        # whose answers count: the host's resolvers (None: any server asked). Anyone may send a
        # query to a server of their own (`dig @x eks...`) and have it answer any address for a
        # name; only the resolvers the host's programs use say what a name meant on this host
        self.resolvers = resolvers
        self.pending_max, self.pending_for = pending_max, pending_for
        self.pending: OrderedDict[tuple, float] = OrderedDict()
        # address -> [(answered at, held until, name)], oldest first
        self.names: OrderedDict[str, list[tuple[float, float, str]]] = OrderedDict()
        self.counts = {"answers": 0, "unasked": 0, "malformed": 0, "other_servers": 0}

    def packet(self, data: bytes, outgoing: bool, ts: float) -> None:
        """One IP packet the host sent (`outgoing`) or received. Never raises: a packet that is
        not DNS we can read is counted and forgotten."""
        try:
            dgram = dns.transport(data)
            if outgoing and dgram.dport == 53:
                self._query(dgram, ts)
            elif not outgoing and dgram.sport == 53:
                self._response(dgram, ts)
        except dns.DnsError:
            self.counts["malformed"] += 1

    def _query(self, dgram: dns.Datagram, ts: float) -> None:
        msg = dns.message(dgram.payload)
        if msg.response or msg.opcode != 0 or msg.qname is None or msg.qtype not in (dns.TYPE_A, dns.TYPE_AAAA):
            return
        if self.resolvers is not None and dgram.dst not in self.resolvers:
            self.counts["other_servers"] += 1
            return
        key = (dgram.tcp, dgram.src, dgram.sport, dgram.dst, dgram.dport, msg.id, msg.qname, msg.qtype)
        self.pending[key] = ts
        self.pending.move_to_end(key)
        while len(self.pending) > self.pending_max:
            self.pending.popitem(last=False)

    def _response(self, dgram: dns.Datagram, ts: float) -> None:
        msg = dns.message(dgram.payload)
        if not msg.response or msg.opcode != 0 or msg.rcode != 0 or msg.qname is None:
            return
        asked = self.pending.pop((dgram.tcp, dgram.dst, dgram.dport, dgram.src, dgram.sport, msg.id, msg.qname,
                                  msg.qtype), None)
        if asked is None or not asked - CLOCK_SLACK <= ts <= asked + self.pending_for:
            self.counts["unasked"] += 1
            return
        for addr, qname, _chain, ttl in dns.addresses(msg):
            self.counts["answers"] += 1
            self._hold(addr, qname, ts, ts + min(float(ttl), MAX_TTL) + self.grace)

    def _hold(self, addr: str, name: str, ts: float, until: float) -> None:
        held = [h for h in self.names.pop(addr, []) if h[1] >= ts and h[2] != name]
        held.append((ts, until, name))
        self.names[addr] = held[-self.per_address:]
        while len(self.names) > self.capacity:
            self.names.popitem(last=False)

    def name_for(self, addr: str, ts: float) -> str | None:
        """The name `addr` was last answered for no later than `ts` (a connect's time), if that
        answer is still held; None if the host was never told a name for it. Only when no answer
        came before ts, the first stamped within CLOCK_SLACK after it (two clocks): a later
        answer - someone else's lookup of a shared address - never renames a connect."""
        before = after = None
        for answered, until, name in self.names.get(addr, ()):
            if until < ts or answered > ts + CLOCK_SLACK:
                continue
            if answered <= ts:
                if before is None or answered >= before[0]:
                    before = (answered, name)
            elif after is None or answered < after[0]:
                after = (answered, name)
        best = before or after
        return best[1] if best else None


def filter_program() -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept UDP and TCP to or from port 53, IPv4 (not a fragment) or IPv6 (UDP or
    TCP right after the fixed header), as a SOCK_DGRAM packet socket sees it: from the network header, the
    EtherType from the skb. Everything else is dropped in the kernel. Jumps are written as
    labels and resolved to offsets here."""
    ld_h, ld_b, ldx_msh, ld_h_ind = 0x28, 0x30, 0xB1, 0x48
    jeq, jset, ret = 0x15, 0x45, 0x06
    skf_ad_protocol = (-0x1000) & 0xFFFFFFFF
    code = [
        ("", ld_h, None, None, skf_ad_protocol),       # the EtherType
        ("", jeq, None, "v6", 0x0800),
        ("", ld_b, None, None, 9),                     # IPv4: protocol
        ("", jeq, "v4", None, 17),
        ("", jeq, None, "drop", 6),
        ("v4", ld_h, None, None, 6),                   # flags + fragment offset
        ("", jset, "drop", None, 0x3FFF),              # a fragment
        ("", ldx_msh, None, None, 0),                  # X = 4 * IHL
        ("", ld_h_ind, None, None, 0),                 # source port (UDP and TCP alike)
        ("", jeq, "accept", None, 53),
        ("", ld_h_ind, None, None, 2),                 # destination port
        ("", jeq, "accept", "drop", 53),
        ("v6", jeq, None, "drop", 0x86DD),
        ("", ld_b, None, None, 6),                     # IPv6: next header
        ("", jeq, "v6ports", None, 17),
        ("", jeq, None, "drop", 6),
        ("v6ports", ld_h, None, None, 40),             # source port
        ("", jeq, "accept", None, 53),
        ("", ld_h, None, None, 42),                    # destination port
        ("", jeq, "accept", "drop", 53),
        ("accept", ret, None, None, 0x40000),          # the whole packet
        ("drop", ret, None, None, 0),
    ]
    at = {label: i for i, (label, *_rest) in enumerate(code) if label}
    out = []
    for i, (_label, op, jt, jf, k) in enumerate(code):
        out.append((op, at[jt] - i - 1 if jt else 0, at[jf] - i - 1 if jf else 0, k))
    return out


class DnsWatch:
    """The DNS packets of the agent's network namespace, fed into a NameBook."""

    def __init__(self, book: NameBook | None = None):
        self.book = book or NameBook()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            prog = filter_program()
            raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
            buf = ctypes.create_string_buffer(raw)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                                 struct.pack("HL", len(prog), ctypes.addressof(buf)))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:                     # without CAP_NET_ADMIN: what rmem_max allows
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        # packets queued before the filter was attached may be anything; the parser drops them
        self.drained = 0                        # packets read, for tests and people

    def drain(self) -> None:
        """Read what the kernel queued (up to DRAIN_MAX packets) into the book."""
        for _ in range(DRAIN_MAX):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, 64)
            except OSError:                     # nothing queued (EAGAIN), or an error the next drain retries
                return
            pkttype = addr[2]
            if pkttype not in (PACKET_HOST, PACKET_OUTGOING):
                continue                        # another host's traffic seen in promiscuous mode
            ts = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack_from("qq", value)
                    ts = sec + nsec / 1e9
            self.drained += 1
            try:
                self.book.packet(data, pkttype == PACKET_OUTGOING, ts)
            except Exception:               # a parser bug must cost a name, never the agent
                self.book.counts["malformed"] += 1

    def name_for(self, addr: str, ts: float) -> str | None:
        self.drain()
        return self.book.name_for(addr, ts)

    def close(self) -> None:
        self.sock.close()
