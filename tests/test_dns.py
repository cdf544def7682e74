"""The names of the addresses a host connects to (agent/dns.py, agent/dnswatch.py): DNS read
from hostile bytes, answers trusted only when the host asked, and the watcher on real sockets."""

import os
import random
import socket
import struct

import pytest

from whodid.agent import dns
from whodid.agent.assemble import Assembler
from whodid.agent.dnswatch import GRACE, NameBook

from dnskit import Responder, a, cname, ip_tcp, ip_udp, query, record, response
from test_agent_units import BOOT_EPOCH, NAMES, FakeProc, feed, sock_rec
from whodid.agent import decode as d

CLIENT, SERVER = ("10.0.0.5", 41000), ("10.0.0.2", 53)


def asked_and_answered(book, ident, qname, answers, ts=100.0, answer_ts=None, client=CLIENT, server=SERVER,
                       qtype=1, rcode=0):
    book.packet(ip_udp(*client, *server, query(ident, qname, qtype)), True, ts)
    book.packet(ip_udp(*server, *client, response(ident, qname, answers, qtype, rcode)), False,
                answer_ts if answer_ts is not None else ts + 0.01)


# --- the wire ---------------------------------------------------------------------------------

def test_a_response_gives_the_addresses_with_the_name_the_client_asked_and_its_cname_chain():
    msg = dns.message(response(7, "EKS.us-east-1.amazonaws.com", [
        cname("eks.us-east-1.amazonaws.com", "lb-1.elb.amazonaws.com", ttl=300),
        a("lb-1.elb.amazonaws.com", "203.0.113.10", ttl=30),
        a("lb-1.elb.amazonaws.com", "2001:db8::10", ttl=30),
        a("unrelated.example.com", "198.51.100.1")]))            # not on the chain from the question
    assert (msg.id, msg.response, msg.qname) == (7, True, "eks.us-east-1.amazonaws.com")
    assert dns.addresses(msg) == [
        ("203.0.113.10", "eks.us-east-1.amazonaws.com", ["lb-1.elb.amazonaws.com"], 30),
        ("2001:db8::10", "eks.us-east-1.amazonaws.com", ["lb-1.elb.amazonaws.com"], 30)]


def test_compressed_names_are_read_and_a_pointer_must_point_backwards():
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    q = b"\x03api\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    ans = record(b"\xc0\x0c", 1, bytes([192, 0, 2, 1]))           # owner: a pointer to the question
    assert dns.addresses(dns.message(head + q + ans)) == [("192.0.2.1", "api.example.com", [], 60)]
    # a pointer to itself, and one pointing forward: refused, never followed
    for pointer in (b"\xc0\x0c", b"\xc0\x20"):
        with pytest.raises(dns.DnsError, match="backwards"):
            dns.message(head + pointer + struct.pack("!HH", 1, 1) + b"\0" * 40)


def test_two_pointers_pointing_at_each_other_end_with_an_error():
    # offset 12: a label then a pointer to 20; offset 20: a label then a pointer back to 12
    body = b"\x01a" + b"\xc0\x14" + b"\0" * 4 + b"\x01b\xc0\x0c"
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0)
    with pytest.raises(dns.DnsError):
        dns.read_name(head + body, 12)
    with pytest.raises(dns.DnsError):
        dns.read_name(head + body, 20)


@pytest.mark.parametrize("label, expected", [
    (b"www", "www"), (b"WWW", "www"), (b"_sip", "_sip"), (b"a-b", "a-b"),
    (b"a.b", None), (b"a\x00b", None), (b"a\nb", None), (b"<script>", None), ("é".encode(), None),
    (b"a b", None), (b"", None)])
def test_only_host_names_are_names(label, expected):
    name = dns.hostname([label, b"example", b"com"])
    assert name == (None if expected is None else f"{expected}.example.com")


def test_a_name_longer_than_dns_allows_is_refused():
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\0"      # 257 bytes on the wire
    with pytest.raises(dns.DnsError, match="longer than 255"):
        dns.read_name(labels, 0)


def test_hostile_packets_never_crash_or_hang_the_parser():
    """Random bytes, every truncation of a real answer, and random bit flips in it: each is a
    Message or a DnsError, nothing else, and each is done at once (bounded work)."""
    rng = random.Random(21)
    good = ip_udp("10.0.0.2", 53, "10.0.0.5", 41000, response(9, "api.example.com", [
        cname("api.example.com", "lb.example.net"), a("lb.example.net", "192.0.2.7"),
        a("lb.example.net", "2001:db8::7")]))
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(3000)]
    cases += [good[:n] for n in range(len(good))]
    good_tcp = ip_tcp("10.0.0.2", 53, "10.0.0.5", 41000, dns.transport(good).payload)
    cases += [good_tcp[:n] for n in range(len(good_tcp))]
    for _ in range(5000):
        flipped = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        cases.append(bytes(flipped))
    # and DNS payloads whose every byte after the header is a pointer to somewhere
    for _ in range(1000):
        payload = struct.pack("!HHHHHH", 1, 0x8180, 1, rng.randrange(0, 5), 0, 0)
        payload += b"".join(struct.pack("!H", 0xC000 | rng.randrange(0, 64)) for _ in range(30))
        cases.append(ip_udp("10.0.0.2", 53, "10.0.0.5", 41000, payload))
    outcomes = {"parsed": 0, "refused": 0}
    book = NameBook()
    for case in cases:
        try:
            dns.addresses(dns.message(dns.transport(case).payload))
            outcomes["parsed"] += 1
        except dns.DnsError:
            outcomes["refused"] += 1
        book.packet(case, False, 1.0)                   # the book never raises either
        book.packet(case, True, 1.0)
    assert outcomes["parsed"] and outcomes["refused"]


def test_ip_and_udp_headers_are_checked():
    dgram = dns.transport(ip_udp("2001:db8::5", 41000, "2001:db8::53", 53, b"x"))
    assert (dgram.src, dgram.sport, dgram.dst, dgram.dport, dgram.payload) == (
        "2001:db8::5", 41000, "2001:db8::53", 53, b"x")
    fragment = bytearray(ip_udp("10.0.0.5", 41000, "10.0.0.2", 53, b"x"))
    fragment[6] |= 0x20                                  # more fragments follow
    with pytest.raises(dns.DnsError, match="fragment"):
        dns.transport(bytes(fragment))


def test_dns_over_tcp_is_read_when_one_segment_holds_one_whole_message():
    answer = response(3, "big.example.com", [a("big.example.com", "192.0.2.9")])
    dgram = dns.transport(ip_tcp("10.0.0.2", 53, "10.0.0.5", 41000, answer))
    assert (dgram.tcp, dgram.sport, dgram.payload) == (True, 53, answer)
    for length in (len(answer) + 100, len(answer) - 1):      # split across segments, or two in one
        with pytest.raises(dns.DnsError, match="one whole DNS message"):
            dns.transport(ip_tcp("10.0.0.2", 53, "10.0.0.5", 41000, answer, length=length))


def test_an_answer_over_tcp_counts_for_a_query_over_tcp_only():
    book = NameBook()
    ans = response(3, "big.example.com", [a("big.example.com", "192.0.2.9")])
    book.packet(ip_tcp(*CLIENT, *SERVER, query(3, "big.example.com")), True, 100.0)
    book.packet(ip_udp(*SERVER, *CLIENT, ans), False, 100.01)          # same ends and id, over UDP
    assert book.name_for("192.0.2.9", 101.0) is None
    book.packet(ip_tcp(*SERVER, *CLIENT, ans), False, 100.02)
    assert book.name_for("192.0.2.9", 101.0) == "big.example.com"


# --- the book: whose answers count ---------------------------------------------------------------

def test_an_answer_to_the_hosts_own_query_names_the_address():
    book = NameBook()
    asked_and_answered(book, 77, "eks.us-east-1.amazonaws.com",
                       [cname("eks.us-east-1.amazonaws.com", "lb.elb.amazonaws.com"),
                        a("lb.elb.amazonaws.com", "203.0.113.10")])
    assert book.name_for("203.0.113.10", 101.0) == "eks.us-east-1.amazonaws.com"
    assert book.name_for("203.0.113.11", 101.0) is None


@pytest.mark.parametrize("how", ["nobody asked", "another id", "another port", "another server",
                                 "another question", "too late", "the host's own answer going out"])
def test_an_answer_nobody_asked_for_names_nothing(how):
    """Anyone who can send the host a UDP packet can make it "from" port 53: such an answer must
    not name (or rename) the addresses the host connects to."""
    book = NameBook()
    bogus = response(77, "evil.example.com", [a("evil.example.com", "10.0.5.10")])
    if how != "nobody asked":
        ident, port, server, qname = 77, CLIENT[1], SERVER[0], "evil.example.com"
        if how == "another id":
            ident = 78
        elif how == "another port":
            port = 41001
        elif how == "another server":
            server = "10.0.0.3"
        elif how == "another question":
            qname = "good.example.com"
        book.packet(ip_udp(CLIENT[0], port, server, 53, query(ident, qname)), True, 100.0)
    when = 100.0 + (60 if how == "too late" else 0.01)
    book.packet(ip_udp(*SERVER, *CLIENT, bogus), how == "the host's own answer going out", when)
    assert book.name_for("10.0.5.10", when + 1) is None


def test_an_answer_is_taken_once():
    book = NameBook()
    asked_and_answered(book, 5, "good.example.com", [a("good.example.com", "10.0.5.10")])
    # a second "answer" to the same query (a spoofer's, after the real one): ignored
    book.packet(ip_udp(*SERVER, *CLIENT, response(5, "good.example.com", [a("good.example.com", "10.0.9.9")])),
                False, 100.02)
    assert book.name_for("10.0.9.9", 101.0) is None
    assert book.counts["unasked"] == 1


def test_a_name_is_held_past_its_ttl_for_the_grace_then_forgotten():
    book = NameBook()
    asked_and_answered(book, 5, "api.example.com", [a("api.example.com", "10.0.5.10", ttl=30)])
    assert book.name_for("10.0.5.10", 100.0 + 30 + GRACE - 1) == "api.example.com"
    assert book.name_for("10.0.5.10", 100.0 + 30 + GRACE + 1) is None


def test_the_newest_answer_before_the_connect_wins_and_a_later_one_does_not_rename_it():
    book = NameBook()
    asked_and_answered(book, 1, "a.example.com", [a("a.example.com", "10.0.5.10")], ts=100.0)
    asked_and_answered(book, 2, "b.example.com", [a("b.example.com", "10.0.5.10")], ts=200.0)
    assert book.name_for("10.0.5.10", 150.0) == "a.example.com"
    assert book.name_for("10.0.5.10", 250.0) == "b.example.com"


def test_an_answer_just_after_the_connect_names_it_only_when_none_came_before():
    """An answer stamped up to CLOCK_SLACK after a connect still counts (two clocks), but only
    when the host had no answer for that address before it: a connect is made to an address the
    host had been told already. Someone else's lookup answered a moment later (a shared CDN
    address, read in the same batch of records) must not rename it."""
    book = NameBook()
    asked_and_answered(book, 1, "api.example.com", [a("api.example.com", "10.0.5.10")], ts=100.0)
    asked_and_answered(book, 2, "other.example.org", [a("other.example.org", "10.0.5.10")], ts=150.1)
    assert book.name_for("10.0.5.10", 150.0) == "api.example.com"
    lone = NameBook()
    asked_and_answered(lone, 3, "api.example.com", [a("api.example.com", "10.0.6.10")], ts=150.2)
    asked_and_answered(lone, 4, "other.example.org", [a("other.example.org", "10.0.6.10")], ts=150.5)
    assert lone.name_for("10.0.6.10", 150.0) == "api.example.com"      # the first after it, clocks apart


def test_the_book_is_bounded():
    book = NameBook(capacity=100)
    for i in range(300):
        asked_and_answered(book, i, f"h{i}.example.com", [a(f"h{i}.example.com", f"10.1.{i // 256}.{i % 256}")],
                           ts=100.0 + i)
    assert len(book.names) == 100
    assert book.name_for("10.1.1.43", 500.0) == "h299.example.com"
    assert book.name_for("10.1.0.0", 500.0) is None                       # the oldest went first
    for i in range(5000):                                                 # queries never answered
        book.packet(ip_udp("10.0.0.5", 1024 + i % 60000, "10.0.0.2", 53, query(i % 65536, "x.example.com")),
                    True, 1000.0)
    assert len(book.pending) == book.pending_max


# --- the assembler gives a connect its name --------------------------------------------------------

def test_a_connect_carries_the_name_its_address_was_answered_for():
    asked = []

    def names(addr, ts):
        asked.append((addr, ts))
        return "eks.us-east-1.amazonaws.com" if addr == "203.0.113.10" else None

    asm = Assembler("web-01", "boot-1", BOOT_EPOCH, FakeProc(), NAMES.get, lambda g: None, names=names)
    events = feed(asm, sock_rec(d.EV_CONNECT, 10, "10.0.0.5", 40000, "203.0.113.10", 443),
                  sock_rec(d.EV_CONNECT, 10, "10.0.0.5", 40001, "198.51.100.1", 443))
    connects = [e for e in events if e["kind"] == "connect"]
    assert [c.get("rname") for c in connects] == ["eks.us-east-1.amazonaws.com", None]
    assert asked[0] == ("203.0.113.10", connects[0]["ts"])


# --- the watcher, on real sockets ------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs CAP_NET_RAW")


@needs_root
def test_the_watcher_reads_answers_over_loopback_and_the_kernel_filter_passes_only_dns():
    from whodid.agent.dnswatch import DnsWatch
    watch = DnsWatch()
    server = Responder("127.0.0.77", {"api.d21.test": "cname:lb.d21.test", "lb.d21.test": "127.0.0.88"})
    try:
        watch.drain()
        watch.drained = 0
        noise = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)       # UDP that is not DNS
        noise.sendto(b"x" * 100, ("127.0.0.1", 9))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(query(4321, "Api.D21.test"), ("127.0.0.77", 53))
        client.recv(2048)
        import time
        assert watch.name_for("127.0.0.88", time.time()) == "api.d21.test"
        # the query and the answer, each seen leaving and arriving on lo; the noise never came up
        assert watch.drained == 4
    finally:
        server.close()
        watch.close()


def test_the_hosts_resolvers_are_read_through_its_root_as_well_as_the_agents(tmp_path):
    """In the DaemonSet the agent's /etc/resolv.conf names the cluster's DNS, not the node's:
    the node's resolvers come from its own files, through /proc/PID/root (adversarial review,
    issue 22). A mount namespace hides the host's file from the agent's view, and shows another;
    here this test's own process stands for pid 1, which is not ours to read."""
    import subprocess
    import sys
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "resolv.conf").write_text("nameserver 169.254.169.253\n")
    code = ("from whodid.agent.dnswatch import host_resolvers; "
            f"print(sorted(host_resolvers({str(etc / 'resolv.conf')!r}, '/nonexistent', '/proc/{os.getpid()}/root')))")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          f"mount -t tmpfs none {etc} && echo 'nameserver 10.96.0.10' > {etc}/resolv.conf && "
                          f"exec {sys.executable} -c {code!r}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['10.96.0.10', '169.254.169.253']"
