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


def ip_tcp(src: str, sport: int, dst: str, dport: int, payload: bytes, length: int | None = None) -> bytes:
    """An IPv4 packet carrying one TCP segment whose data is a DNS message with its 2-byte length
    (`length` to lie about it), as a DNS client or server over TCP sends it."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    data = struct.pack("!H", len(payload) if length is None else length) + payload
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + data
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s.packed, d.packed) + tcp


class Responder:
    """A DNS server on (addr, 53) over UDP answering A queries from `table` (name -> address,
    CNAMEs as name -> "cname:target"), NXDOMAIN otherwise, until closed."""

    def __init__(self, addr: str, table: dict[str, str]):
        self.table = table
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.sock.settimeout(0.2)
        self.tcp = socket.socket()                   # for clients told `options use-vc`
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, 53))
        self.tcp.listen(8)
        self.tcp.settimeout(0.2)
        self.asked: list[tuple[str, str]] = []       # (udp or tcp, name)
        self.stopping = False
        self.threads = [threading.Thread(target=self._serve, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for thread in self.threads:
            thread.start()

    def answer(self, data: bytes, how: str) -> bytes | None:
        from whodid.agent import dns
        try:
            msg = dns.message(data)
        except dns.DnsError:
            return None
        qname = msg.qname or ""
        self.asked.append((how, qname))
        answers, current = [], qname
        while self.table.get(current, "").startswith("cname:"):
            target = self.table[current][len("cname:"):]
            answers.append(cname(current, target))
            current = target
        if msg.qtype == 1 and current in self.table:
            answers.append(a(current, self.table[current]))
        rcode = 0 if answers or current in self.table else 3
        return response(msg.id, qname, answers, msg.qtype, rcode)

    def _serve(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                continue
            reply = self.answer(data, "udp")
            if reply:
                self.sock.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self.stopping:
            try:
                conn, _peer = self.tcp.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while True:                      # glibc asks A and AAAA on one connection
                        head = conn.recv(2, socket.MSG_WAITALL)
                        if len(head) < 2:
                            break
                        data = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                        reply = self.answer(data, "tcp")
                        if reply is None:
                            break
                        conn.sendall(struct.pack("!H", len(reply)) + reply)      # one segment on lo
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(2)
        self.sock.close()
        self.tcp.close()
