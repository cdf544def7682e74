"""DNS on the wire, read from bytes: the IP and UDP (or TCP) headers around it, a query's
question, and a response's addresses with the name the client asked for (docs/agent.md,
"Names of the addresses a host connected to").

Every byte here is hostile: anyone who can send the host a packet from port 53 can make one.
So every read is bounds-checked, a compression pointer may only point backwards (which makes
a loop impossible, not just unlikely), a name is at most 255 bytes on the wire, and what is
not well-formed raises DnsError - never IndexError, never a hang. Pure functions over bytes:
tests/test_dns.py feeds them random, truncated and looping packets.

A name is kept only if it is a host name: labels of letters, digits, `-` and `_` (SRV and
DKIM names use `_`), at most 63 bytes each and 253 in all, lowercased. Anything else (a label
with a dot, a NUL, a newline, UTF-8) is not a name we record: `hostname()` gives None.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CLASS_IN = 1
MAX_WIRE_NAME = 255          # RFC 1035 2.3.4: a name on the wire, length bytes included
MAX_NAME = 253               # the same name as text, without the trailing dot
MAX_JUMPS = 127              # pointers followed in one name (each label is 2+ bytes of 255)
MAX_CHAIN = 16               # CNAMEs followed from the question; resolvers stop at 8-16 too
_LABEL_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class DnsError(ValueError):
    """A packet that is not the DNS (or IP, UDP, TCP) it claims to be."""


@dataclass(slots=True)
class Datagram:
    """A DNS message's transport: its addresses and ports (IPv4-mapped IPv6 is left as it is:
    DNS does not use it), whether it came over TCP, and the message itself."""
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    tcp: bool = False


@dataclass(slots=True)
class Message:
    """What whodid reads of a DNS message: the header, the one question, and the answers of
    type A, AAAA and CNAME (owner, type, ttl, value: an address or a name, both text; a name
    that is not a host name is None)."""
    id: int
    response: bool
    opcode: int
    rcode: int
    qname: str | None
    qtype: int
    answers: list[tuple[str | None, int, int, str | None]] = field(default_factory=list)


def transport(packet: bytes) -> Datagram:
    """An IPv4 or IPv6 packet (from its network header, as a SOCK_DGRAM packet socket gives it)
    -> the DNS message it carries over UDP, or over TCP when one segment holds exactly one
    message with its 2-byte length (an answer too large for UDP usually fits one segment; one
    split across segments is not read). Fragments and IPv6 extension headers are not read."""
    if len(packet) < 1:
        raise DnsError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise DnsError("IPv4 header cut short")
        ihl = (packet[0] & 0x0F) * 4
        total, frag, proto = struct.unpack_from("!H2xHxB", packet, 2)
        if ihl < 20 or total < ihl or total > len(packet):
            raise DnsError("IPv4 lengths do not fit the packet")
        if frag & 0x3FFF:                     # more fragments, or an offset: half a datagram
            raise DnsError("a fragment")
        src, dst = packet[12:16], packet[16:20]
        body = packet[ihl:total]
    elif version == 6:
        if len(packet) < 40:
            raise DnsError("IPv6 header cut short")
        plen, proto = struct.unpack_from("!HB", packet, 4)
        if 40 + plen > len(packet):
            raise DnsError("IPv6 payload length does not fit the packet")
        src, dst = packet[8:24], packet[24:40]
        body = packet[40:40 + plen]
    else:
        raise DnsError(f"IP version {version}")
    if proto == 17:
        if len(body) < 8:
            raise DnsError("UDP header cut short")
        sport, dport, ulen = struct.unpack_from("!HHH", body, 0)
        if ulen < 8 or ulen > len(body):
            raise DnsError("UDP length does not fit the packet")
        payload, tcp = body[8:ulen], False
    elif proto == 6:
        if len(body) < 20:
            raise DnsError("TCP header cut short")
        sport, dport = struct.unpack_from("!HH", body, 0)
        offset = (body[12] >> 4) * 4
        if offset < 20 or offset > len(body):
            raise DnsError("TCP header length does not fit the packet")
        segment = body[offset:]
        if len(segment) < 2 or struct.unpack_from("!H", segment, 0)[0] != len(segment) - 2:
            raise DnsError("not one whole DNS message in this TCP segment")
        payload, tcp = segment[2:], True
    else:
        raise DnsError("neither UDP nor TCP (or behind IPv6 extension headers)")
    return Datagram(str(ipaddress.ip_address(src)), sport, str(ipaddress.ip_address(dst)), dport, payload, tcp)


def read_name(msg: bytes, off: int) -> tuple[list[bytes], int]:
    """The name at `off` as its labels, and the offset just after it where it sits (after the
    first pointer, if it is compressed). A pointer must point before the label it stands in
    for, so following pointers always moves backwards and ends."""
    labels: list[bytes] = []
    wire = 0                         # bytes of the name as if uncompressed
    end = None                       # where the name ends in place (after the first pointer)
    limit = off                      # a pointer must point before this
    jumps = 0
    while True:
        if off >= len(msg):
            raise DnsError("name runs past the end of the message")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsError("compression pointer cut short")
            target = ((n & 0x3F) << 8) | msg[off + 1]
            if end is None:
                end = off + 2
            if target >= limit:
                raise DnsError("compression pointer does not point backwards (a loop or a forward jump)")
            jumps += 1
            if jumps > MAX_JUMPS:            # cannot happen with backward pointers; a second guard
                raise DnsError(f"more than {MAX_JUMPS} compression pointers in one name")
            off = limit = target
            continue
        if n & 0xC0:
            raise DnsError(f"label type 0x{n & 0xC0:02x} is not one DNS uses")
        if n == 0:
            wire += 1
            if wire > MAX_WIRE_NAME:
                raise DnsError(f"name longer than {MAX_WIRE_NAME} bytes")
            return labels, (end if end is not None else off + 1)
        if off + 1 + n > len(msg):
            raise DnsError("label runs past the end of the message")
        wire += 1 + n
        if wire > MAX_WIRE_NAME:
            raise DnsError(f"name longer than {MAX_WIRE_NAME} bytes")
        labels.append(msg[off + 1:off + 1 + n])
        off += 1 + n


def hostname(labels: list[bytes]) -> str | None:
    """Labels -> a lowercase host name, or None when a label holds anything but letters,
    digits, `-` and `_` (a name we would not store or show). The root (no labels) is None."""
    if not labels:
        return None
    for label in labels:
        if not label or len(label) > 63 or not _LABEL_BYTES.issuperset(label):
            return None
    name = b".".join(labels).decode("ascii").lower()
    return name if len(name) <= MAX_NAME else None


def message(data: bytes) -> Message:
    """A DNS message (without its TCP length) -> its header, its question and its A/AAAA/CNAME answers.
    A message with other than one question is refused: queries from stub resolvers carry one."""
    if len(data) < 12:
        raise DnsError("DNS header cut short")
    ident, flags, qdcount, ancount = struct.unpack_from("!HHHH", data, 0)
    if qdcount != 1:
        raise DnsError(f"{qdcount} questions; a query asks one")
    labels, off = read_name(data, 12)
    if off + 4 > len(data):
        raise DnsError("question cut short")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    off += 4
    out = Message(ident, bool(flags & 0x8000), (flags >> 11) & 0x0F, flags & 0x0F,
                  hostname(labels) if qclass == CLASS_IN else None, qtype)
    if not out.response:
        return out
    for _ in range(ancount):                 # each record takes at least 11 bytes: bounded by the size
        owner, off = read_name(data, off)
        if off + 10 > len(data):
            raise DnsError("answer record cut short")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        rdata_at, off = off, off + rdlen
        if off > len(data):
            raise DnsError("answer data runs past the end of the message")
        if rclass != CLASS_IN:
            continue
        if rtype == TYPE_A and rdlen == 4 or rtype == TYPE_AAAA and rdlen == 16:
            value = str(ipaddress.ip_address(data[rdata_at:off]))
        elif rtype == TYPE_CNAME:
            target, after = read_name(data, rdata_at)
            if after != off:
                raise DnsError("CNAME data is not one name")
            value = hostname(target)
        else:
            continue
        out.answers.append((hostname(owner), rtype, ttl & 0x7FFFFFFF, value))
    return out


def addresses(msg: Message) -> list[tuple[str, str, list[str], int]]:
    """The addresses a response gives for the name the client asked: (address, question name,
    the CNAME chain followed to it, ttl). Only records on the chain from the question count -
    an answer for some other name in the same packet names nothing the client asked for."""
    if msg.qname is None:
        return []
    chain, current, seen = [], msg.qname, {msg.qname}
    cnames = {owner: target for owner, rtype, _ttl, target in msg.answers if rtype == TYPE_CNAME and owner}
    while current in cnames and len(chain) < MAX_CHAIN:
        current = cnames[current]
        if current is None or current in seen:
            break
        chain.append(current)
        seen.add(current)
    owners = {msg.qname, *chain}
    return [(value, msg.qname, chain, ttl) for owner, rtype, ttl, value in msg.answers
            if rtype in (TYPE_A, TYPE_AAAA) and owner in owners and value is not None]
