"""TCP records from bytes to events, without a kernel (issue 21): an accept whose two ends were
read from its socket, and a listen. The live counterparts are in test_capture_tcp_live.py."""

import socket

from whodid.agent import decode as d

from test_agent_units import assembler, feed, hdr, shell


def tcp_rec(type_, pid, laddr, lport, raddr, rport, flags=0, family=socket.AF_INET, **kw):
    def pack(a):
        return socket.inet_pton(family, a).ljust(16, b"\0") if a else b"\0" * 16
    return hdr(type_, pid, **kw) + d.SOCK_TAIL.pack(family, lport, rport, flags, pack(laddr), pack(raddr))


def test_an_accept_read_from_its_socket_needs_no_passive_open():
    asm = assembler([shell(pid=50, uid=0, auid=None, ses=None)])
    asm.snapshot()
    events = feed(asm, tcp_rec(d.EV_ACCEPT, 50, "10.0.1.20", 8080, "10.0.0.10", 51234, flags=d.SOCK_LOCAL),
                  tcp_rec(d.EV_ACCEPT, 50, "::ffff:10.0.1.20", 8080, "::ffff:10.0.0.11", 40000,
                          flags=d.SOCK_LOCAL, family=socket.AF_INET6),
                  tcp_rec(d.EV_ACCEPT, 50, "2001:db8::1", 443, "2001:db8::2", 40001, flags=d.SOCK_LOCAL,
                          family=socket.AF_INET6))
    assert [(e["kind"], e["pid"], e["laddr"], e["lport"], e["raddr"], e["rport"]) for e in events] == [
        ("accept", 50, "10.0.1.20", 8080, "10.0.0.10", 51234),
        ("accept", 50, "10.0.1.20", 8080, "10.0.0.11", 40000),           # v4-mapped made plain
        ("accept", 50, "2001:db8::1", 443, "2001:db8::2", 40001)]
    assert asm.counts["unmatched_accept"] == 0


def test_without_the_flag_an_accept_still_waits_for_its_passive_open():
    rec = d.decode(tcp_rec(d.EV_ACCEPT, 50, "10.0.1.20", 8080, "10.0.0.10", 51234))
    assert rec.laddr is None                          # bytes there are not the local end


def test_a_listen_names_its_process_address_and_port():
    asm = assembler([shell(pid=50, uid=0, auid=None, ses=None)])
    asm.snapshot()
    rec = d.decode(tcp_rec(d.EV_LISTEN, 50, "0.0.0.0", 8080, None, 0))
    assert rec == d.Listen(rec.hdr, "0.0.0.0", 8080)
    (ev,) = asm.feed(rec)
    assert ev == {"v": 1, "kind": "listen", "host": "web-01", "boot": "boot-1", "ts": ev["ts"], "pid": 50,
                  "start": asm.procs[50].start, "laddr": "0.0.0.0", "lport": 8080}
    (v6,) = asm.feed(d.decode(tcp_rec(d.EV_LISTEN, 50, "::", 22, None, 0, family=socket.AF_INET6)))
    assert (v6["laddr"], v6["lport"]) == ("::", 22)
