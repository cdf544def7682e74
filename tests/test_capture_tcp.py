"""TCP records from bytes to events, without a kernel (issue 21): an accept whose two ends were
read from its socket, a listen, and connections over the budget counted per place and minute.
The live counterparts are in test_capture_tcp_live.py."""

import os
import socket

import pytest

from whodid.agent import btf, decode as d
from whodid.tracer import parse_event

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


def test_connections_over_budget_are_one_event_per_place_and_minute_once_the_minute_is_over():
    asm = assembler([shell(pid=50, uid=0, auid=None, ses=None)])
    asm.snapshot()
    t0 = 3 * d.AGG_NS + 5_000_000_000                     # 5 s into boot minute 3
    first = tcp_rec(d.EV_CONNECT, 50, "10.0.0.5", 40000, "10.0.5.10", 443, flags=d.SOCK_AGGREGATE, ts_ns=t0)
    assert asm.feed(d.decode(first)) == []                # held until its count is known
    (key,) = asm.aggregating
    assert d.AGG_KEY.unpack(key)[:6] == (50, 3, d.AGG_CONNECT, 0, socket.AF_INET, 443)
    kernel = {key: (300, t0, t0 + 40_000_000_000)}
    taken = []

    def read(k):
        taken.append(k)
        return kernel.pop(k, None)

    assert asm.aggregates_due(read, 4 * d.AGG_NS + 1_000_000_000) == []   # the minute is over, but not its grace
    assert taken == []
    (ev,) = asm.aggregates_due(read, 4 * d.AGG_NS + 2_000_000_000)
    assert taken == [key] and asm.aggregating == {}
    assert {k: ev[k] for k in ("kind", "pid", "start", "laddr", "lport", "raddr", "rport", "count")} == {
        "kind": "connect", "pid": 50, "start": asm.procs[50].start, "laddr": "10.0.0.5", "lport": 40000,
        "raddr": "10.0.5.10", "rport": 443, "count": 300}
    assert ev["first"] == ev["ts"] and round(ev["last"] - ev["first"], 6) == 40.0
    parse_event(ev)                                       # still a valid connect: count/first/last ride along


def test_at_stop_every_aggregate_is_sent_with_what_was_counted():
    asm = assembler([shell(pid=50, uid=0, auid=None, ses=None)])
    asm.snapshot()
    feed(asm, tcp_rec(d.EV_ACCEPT, 50, "10.0.1.20", 22, "203.0.113.7", 50000, ts_ns=d.AGG_NS + 1,
                      flags=d.SOCK_LOCAL | d.SOCK_AGGREGATE))
    (key,) = asm.aggregating
    assert d.AGG_KEY.unpack(key)[2:6] == (d.AGG_ACCEPT, 0, socket.AF_INET, 22)     # the local port stays
    (ev,) = asm.aggregates_due(lambda k: None, d.AGG_NS + 2, final=True)           # the kernel's entry gone
    assert (ev["kind"], ev["raddr"], ev["lport"], ev["count"], ev["first"], ev["last"]) == (
        "accept", "203.0.113.7", 22, 1, ev["ts"], ev["ts"])


@pytest.mark.skipif(not os.path.exists(btf.VMLINUX), reason="this kernel has no BTF")
def test_this_kernel_s_btf_has_the_tcp_socket_members():
    offs, note = btf.running_kernel()
    assert offs.inet is not None, note
    named = dict(zip((m[0] for m in btf.INET_MEMBERS), offs.inet))
    # sock_common begins with the address pair, then the port pair (dport, num), then the family
    assert (named["OFF_SKC_DADDR"], named["OFF_SKC_RCV_SADDR"]) == (0, 4)
    assert (named["OFF_SKC_DPORT"], named["OFF_SKC_NUM"], named["OFF_SKC_FAMILY"]) == (12, 14, 16)
    flags = offs.cflags()
    assert "-DHAVE_INET=1" in flags and len([f for f in flags if f.startswith("-DOFF_SKC_FAMILY=")]) == 1
