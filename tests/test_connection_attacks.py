"""Attacks on connections as evidence (issue 21): inputs that could make a `to:`, `from:` or a
canary's connection suspect name the wrong person with confidence. Each test is one attack,
store-level, with hand-made events in the style of tests/test_connections.py; the "before" of
each is in docs/security.md's table."""

import os

import pytest

from whodid.tracer import Identity, Person, Query, Tracer
from whodid.tracer.destinations import parse_destination
from whodid.tracer.events import INT_MAX
from whodid.tracer.stitch import UNKNOWN

from kit import T0, Host, ssh_session, store_with

OPS = Host("ops-1", "10.0.1.20")
NAT = "203.0.113.7"
API = "10.0.5.10"
JIM_FP, BOB_FP = "SHA256:jim", "SHA256:bob"
IDENT = Identity(people=(Person("jim", ssh_keys=(JIM_FP,)), Person("bob", ssh_keys=(BOB_FP,))))


def find(store, **q):
    q.setdefault("pattern", "")
    return Tracer(store, IDENT).find(Query(**q))


def accept(ts, pid, lport, raddr, rport, start=None):
    return OPS._ev("accept", ts, pid=pid, start=start or pid * 1000, laddr=OPS.addr, lport=lport,
                   raddr=raddr, rport=rport)


# --- from: the accept -> login join ------------------------------------------------------------

def test_a_web_accept_is_not_the_ssh_login_that_later_came_from_the_same_nat_port():
    """bob's browser behind a NAT reaches nginx (port 80) from 203.0.113.7:50123; minutes later
    the NAT hands the same port to jim's ssh (port 22). Who came in from the NAT to port 80 is
    not jim: his login came to another port, to another process."""
    events = [OPS.exec(0, 600, ["nginx", "-g", "daemon off;"], snapshot=True),
              accept(10, 600, 80, NAT, 50123)]
    events += ssh_session(OPS, 100, 400, "ec2-user", 1000, NAT, 50123, JIM_FP, ses=7)
    events.append(accept(100.05, 100, 22, NAT, 50123))
    store = store_with(events)
    (tr,) = find(store, from_=parse_destination(f"{NAT}:80"))
    assert tr.connections.login is None
    assert tr.poi.pid == 600 and tr.attributed.user != "jim"
    # the ssh accept still carries jim's login
    (tr,) = find(store, from_=parse_destination(f"{NAT}:22"))
    assert tr.attributed.user == "jim" and tr.connections.login["user"] == "ec2-user"


def test_a_nat_port_reused_for_two_ssh_logins_gives_each_login_its_own_accept():
    """jim, then bob (both behind one NAT) ssh in from the same public address and port within
    the join's window: each session's match counts its own accept, never the other's."""
    events = ssh_session(OPS, 10, 400, "ec2-user", 1000, NAT, 50123, JIM_FP, ses=7)
    events += ssh_session(OPS, 200, 500, "ec2-user", 1000, NAT, 50123, BOB_FP, ses=8)[1:]
    events += [accept(10.0, 100, 22, NAT, 50123), accept(200.0, 100, 22, NAT, 50123)]
    store = store_with(events)
    got = {tr.attributed.user: (tr.connections.count, tr.connections.first) for tr in
           find(store, from_=parse_destination(NAT))}
    assert got == {"jim": (1, T0 + 10), "bob": (1, T0 + 200)}


# --- to: a process that connects for others --------------------------------------------------------

def test_a_proxy_jim_started_is_not_jims_connection_when_it_serves_others():
    """jim starts squid by hand; bob's host goes through it to the API. The connect is squid's,
    on jim's chain, but squid accepted others' connections first: whose request it carried is
    not known. Never "jim, observed"."""
    events = ssh_session(OPS, 10, 400, "ec2-user", 1000, NAT, 50123, JIM_FP, ses=7)
    events += [OPS.fork(20, 420, 401), OPS.exec(20.01, 420, ["squid", "-N"], uid=1000, auid=1000, ses=7),
               accept(50, 420, 3128, "10.0.1.30", 41000),
               OPS.connect(50.1, 420, API, 6443, lport=52000)]
    store = store_with(events)
    (tr,) = find(store, to=parse_destination(API))
    assert tr.poi.pid == 420
    assert tr.attributed.confidence == UNKNOWN and tr.attributed.user != "jim"
    assert [c.person for c in tr.attributed.candidates] == ["jim"]
    assert any("accepted" in n and "10.0.1.30" in n for n in tr.notes), tr.notes


def test_a_client_that_connects_before_it_accepts_anything_keeps_its_person():
    """Control: `ssh -L` connects to its server first and accepts on its forward later; asked
    about that first connect, the person stands."""
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += [OPS.fork(20, 420, 401), OPS.exec(20.01, 420, ["python3", "deploy.py"], uid=1001, auid=1001, ses=7),
               OPS.connect(50.1, 420, API, 6443, lport=52000),
               accept(60, 420, 8080, "10.0.1.30", 41000)]
    (tr,) = find(store_with(events), to=parse_destination(API))
    assert tr.attributed.user == "jim" and tr.attributed.confidence != UNKNOWN


# --- counted connections -------------------------------------------------------------------------

def test_counted_connections_that_overflow_sqlite_integers_do_not_break_the_question():
    """A host sends counted connects with absurd counts (each within the schema's integer): the
    sum must not stop every `to:` question (SQLite's sum() raises on overflow)."""
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += [OPS.fork(20, 420, 401), OPS.exec(20.01, 420, ["python3", "deploy.py"], uid=1001, auid=1001, ses=7)]
    events += [dict(OPS.connect(30 + i, 420, API, 6443, lport=52000 + i), count=INT_MAX, last=T0 + 31 + i)
               for i in range(3)]
    (tr,) = find(store_with(events), to=parse_destination(API))
    assert tr.attributed.user == "jim" and tr.connections.count >= INT_MAX


def test_a_counted_row_over_a_pid_reuse_says_some_may_be_the_other_processs():
    """The agent counts connections over budget by (pid, minute, place) - not the start - so a
    pid reused within the minute adds the new process's connects to the first one's row. The
    answer naming the first process's person says so, naming the other process."""
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += ssh_session(OPS, 12, 500, "bob", 1002, "10.0.1.30", 41000, BOB_FP, ses=8)[1:]
    events += [OPS.fork(240, 420, 401), OPS.exec(240.01, 420, ["python3", "deploy.py"], uid=1001, auid=1001, ses=7),
               dict(OPS.connect(250, 420, API, 6443, lport=52000), count=500, last=T0 + 290),
               OPS.exit(255, 420),
               OPS.fork(256, 420, 501, start=420999), OPS.exec(256.01, 420, ["python3", "wipe.py"], uid=1002,
                                                                auid=1002, ses=8, start=420999)]
    (tr,) = find(store_with(events), to=parse_destination(API))
    assert tr.poi.command == "python3 deploy.py"
    assert any("reused" in n and "python3 wipe.py" in n for n in tr.notes), tr.notes


# --- hostile inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["*", "*:443", "?", "0.0.0.0/0", "::/0", "a" * 250, "*.*.*.*.*.*.*.*.*.*.*.*"])
def test_wide_or_odd_destinations_answer_without_error(spec):
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += [OPS.fork(20, 420, 401), OPS.exec(20.01, 420, ["python3", "deploy.py"], uid=1001, auid=1001, ses=7),
               dict(OPS.connect(30, 420, API, 443, lport=52000), rname="eks.example.com")]
    for tr in find(store_with(events), to=parse_destination(spec)):
        assert tr.attributed.user == "jim"


# --- canaries: the canary's own checks ---------------------------------------------------------------

def test_the_canarys_own_checks_are_never_its_connection_suspects():
    """`whodid serve` runs the kubernetes canary in its own process, on a watched host: it
    connects to the API every minute, the last time just before the failure. Started by jim by
    hand, it would be the first suspect - jim, observed - for a cluster bob deleted."""
    from whodid.agent.procfs import boot_id
    from whodid.bot.canary.alerts import find_suspects
    from whodid.bot.canary.checks import parse_canary

    with open("/proc/self/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    me, my_start = os.getpid(), ticks * 10_000_000 + 3_000_000      # the fork record, just after the tick
    assert me not in (100, 400, 401, 420, 500, 501)
    host = Host("ops-1", "10.0.1.20", boot=boot_id())
    events = ssh_session(host, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += ssh_session(host, 12, 500, "bob", 1002, "10.0.1.30", 41000, BOB_FP, ses=8)[1:]
    events += [host.fork(20, me, 401, start=my_start),
               host.exec(20.01, me, ["whodid", "serve"], uid=1001, auid=1001, ses=7, start=my_start)]
    events += [host._ev("connect", 30 + 60 * i, pid=me, start=my_start, laddr=host.addr, lport=40000 + i,
                        raddr=API, rport=6443) for i in range(6)]
    events += [host.fork(300, 520, 501), host.exec(300.01, 520, ["python3", "delete.py"], uid=1002, auid=1002, ses=8),
               host.connect(300.5, 520, API, 6443, lport=51000)]
    canary = parse_canary({"name": "k", "every": "1m", "check": {"type": "kubernetes", "path": "/api",
                                                                   "api_url": f"https://{API}:6443"}}, "test")
    suspects = find_suspects(Tracer(store_with(events), IDENT), canary, T0 + 340)
    assert [(s.trace.poi.pid, s.trace.attributed.user) for s in suspects] == [(520, "bob")]


# --- names -------------------------------------------------------------------------------------------

CDN = "198.51.100.80"


def cdn_story(rname):
    """jim's process connects to a CDN's address; the host recorded `rname` for it (None: no name)."""
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    connect = OPS.connect(30, 420, CDN, 443, lport=52000)
    if rname:
        connect["rname"] = rname
    return store_with(events + [OPS.fork(20, 420, 401), connect,
                                OPS.exec(20.01, 420, ["curl", "https://shop.example.org"], uid=1001, auid=1001, ses=7)])


def test_a_name_resolved_now_to_a_shared_address_says_the_host_recorded_another_name():
    """api.example.com resolves now to a CDN address that jim reached as shop.example.org: the
    match may stand (an address is an address), but the answer must say the host named it
    otherwise, not read as "jim connected to api.example.com"."""
    from whodid.tracer.names import RESOLVED
    store = cdn_story("shop.example.org")
    (tr,) = Tracer(store, IDENT, addresses_for=lambda n: [(CDN, RESOLVED)]).find(
        Query(pattern="", to=parse_destination("api.example.com")))
    assert tr.connections.peers[0].name == "shop.example.org"
    assert any("shop.example.org" in n and "api.example.com" in n for n in tr.notes), tr.notes


def test_a_name_resolved_now_with_no_name_recorded_says_it_is_weaker():
    from whodid.tracer.names import CONFIG, RESOLVED
    store = cdn_story(None)
    (tr,) = Tracer(store, IDENT, addresses_for=lambda n: [(CDN, RESOLVED)]).find(
        Query(pattern="", to=parse_destination("api.example.com")))
    assert any("resolved now" in n and CDN in n for n in tr.notes), tr.notes
    # config network.names is the operator's word: no such note
    (tr,) = Tracer(store, IDENT, addresses_for=lambda n: [(CDN, CONFIG)]).find(
        Query(pattern="", to=parse_destination("api.example.com")))
    assert not any("resolved now" in n for n in tr.notes), tr.notes


def test_an_answer_from_a_server_that_is_not_the_hosts_resolver_names_nothing():
    """An unprivileged user's `dig @their-server eks.us-east-1.amazonaws.com`, answered with the
    address jim's blog is at, must not name jim's later connect to that address eks: only the
    host's resolvers (resolv.conf's, agent.dns_resolvers) say what a name meant on this host."""
    from dnskit import a, ip_udp, query, response
    from whodid.agent.dnswatch import NameBook
    book = NameBook(resolvers=frozenset({"10.0.0.2"}))
    eks = "eks.us-east-1.amazonaws.com"
    for n, server in enumerate((("198.51.100.1", 53), ("10.0.0.2", 53))):
        client = ("10.0.0.5", 41000 + n)
        addr = ("93.184.215.14", "52.94.133.131")[n]
        book.packet(ip_udp(*client, *server, query(5, eks)), True, 100.0)
        book.packet(ip_udp(*server, *client, response(5, eks, [a(eks, addr)])), False, 100.01)
    assert book.name_for("93.184.215.14", 101.0) is None            # bob's server's answer
    assert book.name_for("52.94.133.131", 101.0) == eks              # the host's resolver's
    assert book.counts["other_servers"] == 1


def test_the_hosts_resolvers_are_resolv_confs_and_behind_the_stub_resolveds_upstreams(tmp_path):
    from whodid.agent.dnswatch import host_resolvers
    conf, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    conf.write_text("# a comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch example.org\n")
    upstream.write_text("nameserver 10.9.9.9\n")
    assert host_resolvers(str(conf), str(upstream)) == {"10.0.0.2", "fe80::1"}
    conf.write_text("nameserver 127.0.0.53\noptions edns0\n")
    assert host_resolvers(str(conf), str(upstream)) == {"127.0.0.53", "10.9.9.9"}
    assert host_resolvers(str(tmp_path / "none"), str(tmp_path / "none")) == set()


JUMP = Host("jump-box", "10.0.0.10")


def test_a_connect_sshd_made_for_jims_L_forward_that_bob_used_is_not_jims():
    """jim runs `ssh -L 6443:10.0.5.10:6443 ops-1` on the jump box; bob connects to the forward's
    port there; sshd on ops-1 opens the connection to the API for that channel. The connect is
    on jim's chain (his sshd session), but his ssh client had accepted bob's connection: never
    "jim, observed"."""
    ev = ssh_session(JUMP, 0, 200, "jim", 1001, NAT, 53122, JIM_FP)
    ev += ssh_session(JUMP, 5, 300, "bob", 1002, NAT, 53999, BOB_FP)[1:]
    ev += [JUMP.fork(100, 210, 201), JUMP.exec(100.01, 210, ["ssh", "-L", "6443:10.0.5.10:6443", "ops-1"],
                                               uid=1001, auid=1001),
           JUMP.connect(100.05, 210, OPS.addr, 22, lport=40001)]
    ev += ssh_session(OPS, 100.5, 400, "jim", 1001, JUMP.addr, 40001, JIM_FP, ses=7)
    ev += [OPS.fork(100.8, 402, 400), OPS.exec(100.81, 402, ["sshd:", "jim@notty"], uid=1001, auid=1001, ses=7),
           JUMP.fork(150, 310, 301), JUMP.exec(150.01, 310, ["kubectl", "delete", "cluster"], uid=1002, auid=1002),
           JUMP.connect(150.1, 310, "127.0.0.1", 6443, lport=45000),
           JUMP._ev("accept", 150.1, pid=210, start=210000, laddr="127.0.0.1", lport=6443,
                    raddr="127.0.0.1", rport=45000),
           OPS.connect(150.2, 402, API, 6443, lport=52000)]
    (tr,) = find(store_with(ev), to=parse_destination(API))
    assert tr.poi.pid == 402
    assert tr.attributed.confidence == UNKNOWN, (tr.attributed.user, tr.attributed.confidence, tr.summary)
    assert "jim" in [c.person for c in tr.attributed.candidates]


def test_who_came_in_to_a_server_jim_started_is_not_jim():
    """jim starts `python3 -m http.server 8080` by hand; someone at 198.51.100.9 fetches a page.
    Who came in from 198.51.100.9? No login carried the connection: nothing names who was
    there. The server's starter is not the answer (he is a candidate, said as what he did)."""
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += [OPS.fork(20, 420, 401),
               OPS.exec(20.01, 420, ["python3", "-m", "http.server", "8080"], uid=1001, auid=1001, ses=7),
               accept(50, 420, 8080, "198.51.100.9", 41000)]
    (tr,) = find(store_with(events), from_=parse_destination("198.51.100.9"))
    assert tr.poi.pid == 420 and tr.connections.login is None
    assert tr.attributed.confidence == UNKNOWN and tr.attributed.user != "jim"
    (cand,) = tr.attributed.candidates
    assert cand.person == "jim" and "accepted" in cand.evidence[0]


def test_a_count_running_past_the_failure_does_not_rank_first_or_before_zero():
    """A chatty process's counted row (over budget) begins before the failure and counts on after
    it: its last connection is after the failure. It must not rank ahead of bob's delete, 30 s
    before the failure, by a negative "before", nor say it."""
    from whodid.bot.canary.alerts import find_suspects
    from whodid.bot.canary.checks import parse_canary

    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += ssh_session(OPS, 12, 500, "bob", 1002, "10.0.1.30", 41000, BOB_FP, ses=8)[1:]
    events += [OPS.fork(20, 420, 401), OPS.exec(20.01, 420, ["python3", "poller.py"], uid=1001, auid=1001, ses=7),
               dict(OPS.connect(200, 420, API, 6443, lport=52000), count=900, last=T0 + 900),
               OPS.fork(300, 520, 501), OPS.exec(300.01, 520, ["python3", "delete.py"], uid=1002, auid=1002, ses=8),
               OPS.connect(300.5, 520, API, 6443, lport=51000)]
    canary = parse_canary({"name": "k", "every": "1m", "check": {"type": "kubernetes", "path": "/api",
                                                                   "api_url": f"https://{API}:6443"}}, "test")
    suspects = find_suspects(Tracer(store_with(events), IDENT), canary, T0 + 330)
    assert [s.trace.poi.pid for s in suspects] == [520, 420]
    assert all(s.before >= 0 for s in suspects), [(s.before, s.why) for s in suspects]


# --- the agent: which accept a login line joins ------------------------------------------------------

@pytest.mark.parametrize("with_pid", [True, False])
def test_a_nat_port_another_server_accepted_after_sshd_does_not_take_the_login(with_pid):
    """jim's ssh and bob's connection to bob's forking server (`socat TCP-L:8080,fork`) come
    through one NAT with the same public port (a port-preserving NAT: the 4-tuples differ).
    The agent kept only the latest accept per client address and port - the server's - and gave
    jim's login to the child bob's server forked: everything bob's child ran read as jim's."""
    from test_agent_units import BOOT_EPOCH, FakeProc, NAMES, accepted_line, feed, hdr, sock_rec, sshd_listener
    from whodid.agent import decode as d
    from whodid.agent.assemble import Assembler
    from whodid.agent.procfs import ProcInfo

    class Proc(FakeProc):
        def exe(self, pid):
            p = self.procs.get(pid)
            return p.exe if p else None

    socat = ProcInfo(pid=7, ppid=1, start_ticks=200, argv=["socat", "TCP-L:8080,fork", "EXEC:sh"],
                     exe="/usr/bin/socat", cwd="/", uid=1000, euid=1000, gid=1000, egid=1000, auid=1000, ses=9,
                     tty=None, comm="socat")
    procfs = Proc([sshd_listener(), socat])
    asm = Assembler("web-01", "boot-1", BOOT_EPOCH, procfs, NAMES.get, lambda g: None)
    asm.snapshot()
    feed(asm, sock_rec(d.EV_PASSIVE, 0, "10.77.0.2", 22, "10.77.1.2", 55320, ts_ns=900),
         sock_rec(d.EV_ACCEPT, 6, None, 0, "10.77.1.2", 55320, ts_ns=1_000),
         hdr(d.EV_FORK, 6, ts_ns=1_100, aux=121),
         sock_rec(d.EV_PASSIVE, 0, "10.77.0.2", 8080, "10.77.1.2", 55320, ts_ns=1_400),
         sock_rec(d.EV_ACCEPT, 7, None, 0, "10.77.1.2", 55320, ts_ns=1_500),
         hdr(d.EV_FORK, 7, ts_ns=1_600, aux=131))
    procfs.procs[121] = sshd_listener(121, ppid=6)
    asm.add_login(BOOT_EPOCH + 1, accepted_line(55320, pid=121 if with_pid else None))
    (login,) = asm.match_logins(BOOT_EPOCH + 1, give_up_after=0)
    assert (login["pid"], login["lport"]) == (121, 22)


def test_a_proxy_serving_others_over_a_unix_socket_is_not_its_starters_connection():
    """jim runs `kubectl proxy --unix-socket /tmp/k.sock`; bob's curl talks to it through the
    socket and the proxy connects to the API. Never "jim, observed"."""
    events = ssh_session(OPS, 10, 400, "jim", 1001, NAT, 50123, JIM_FP, ses=7)
    events += ssh_session(OPS, 12, 500, "bob", 1002, "10.0.1.30", 41000, BOB_FP, ses=8)[1:]
    events += [OPS.fork(20, 420, 401),
               OPS.exec(20.01, 420, ["kubectl", "proxy", "--unix-socket", "/tmp/k.sock"], uid=1001, auid=1001, ses=7),
               OPS.fork(60, 520, 501), OPS.exec(60.01, 520, ["curl", "--unix-socket", "/tmp/k.sock", "-X", "DELETE",
                                                            "http://x/api"], uid=1002, auid=1002, ses=8),
               OPS.uconnect(60.1, 520, "/tmp/k.sock", "c1", peer=(420, 420000)),
               OPS.uaccept(60.1, 420, "c1", peer=(520, 520000)),
               OPS.connect(60.2, 420, API, 6443, lport=52000)]
    (tr,) = find(store_with(events), to=parse_destination(API))
    assert tr.poi.pid == 420
    assert tr.attributed.confidence == UNKNOWN, (tr.attributed.user, tr.summary)
    assert any("/tmp/k.sock" in n for n in tr.notes), tr.notes
