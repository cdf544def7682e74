"""DNS packets made by hand for the tests of agent/dns.py and agent/dnswatch.py, and a tiny DNS
server answering A queries from a table over real UDP (tests/test_dns_live.py).

Small and obvious on purpose: uncompressed names unless a test builds a pointer itself.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading


def name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".") if label) + b"\0"


def question(qname: str, qtype: int = 1) -> bytes:
    return name(qname) + struct.pack("!HH", qtype, 1)


def record(owner: bytes | str, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    owner = name(owner) if isinstance(owner, str) else owner
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def a(owner: str, addr: str, ttl: int = 60) -> bytes:
    ip = ipaddress.ip_address(addr)
    return record(owner, 1 if ip.version == 4 else 28, ip.packed, ttl)


def cname(owner: str, target: str, ttl: int = 60) -> bytes:
    return record(owner, 5, name(target), ttl)


def query(ident: int, qname: str, qtype: int = 1) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question(qname, qtype)


def response(ident: int, qname: str, answers: list[bytes], qtype: int = 1, rcode: int = 0) -> bytes:
    return (struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(answers), 0, 0) + question(qname, qtype)
            + b"".join(answers))


def ip_udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet carrying a UDP datagram (checksums left 0: nobody here checks)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if s.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, s.packed, d.packed) + udp
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, s.packed, d.packed) + udp


class Responder:
    """A DNS server on (addr, 53) over UDP answering A queries from `table` (name -> address,
    CNAMEs as name -> "cname:target"), NXDOMAIN otherwise, until closed."""

    def __init__(self, addr: str, table: dict[str, str]):
        self.table = table
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.sock.settimeout(0.2)
        self.asked: list[str] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from whodid.agent import dns
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                continue
            try:
                msg = dns.message(data)
            except dns.DnsError:
                continue
            qname = msg.qname or ""
            self.asked.append(qname)
            answers, current = [], qname
            while self.table.get(current, "").startswith("cname:"):
                target = self.table[current][len("cname:"):]
                answers.append(cname(current, target))
                current = target
            if msg.qtype == 1 and current in self.table:
                answers.append(a(current, self.table[current]))
            rcode = 0 if answers or current in self.table else 3
            self.sock.sendto(response(msg.id, qname, answers, msg.qtype, rcode), peer)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close()
