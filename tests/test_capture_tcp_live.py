"""TCP capture completeness for real (issue 21): the agent's BPF program in this kernel, and

- servers that accept without asking for the peer's address (`accept(fd, NULL, NULL)`,
  `accept4(fd, NULL, NULL, 0)`), over IPv4, IPv6 and IPv4-mapped IPv6: each accept is recorded
  with both ends, matching its client's connect;
- processes that open a listening port (`listen`), bound and unbound;
- processes that connect and exit at once, IPv4 and IPv6.

The agent writes JSON lines (--out), read back here.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from test_agent_live import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")

# A server that accepts through libc with NULL address pointers, as many C servers do. Python's
# socket.accept always passes one. It prints its port, accepts `count` connections, and for each
# prints the peer the connection really has (getpeername), so the test knows the truth.
NULL_ACCEPT_SERVER = r"""
import ctypes, socket, sys
family, host, call, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET, socket.SOCK_STREAM)
if family == "6":
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)    # dual stack: v4 clients come mapped
s.bind((host, 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
for _ in range(count):
    fd = libc.accept(s.fileno(), None, None) if call == "accept" else libc.accept4(s.fileno(), None, None, 0)
    assert fd >= 0, ctypes.get_errno()
    c = socket.socket(fileno=fd)
    peer = c.getpeername()
    print(peer[0], peer[1], flush=True)
    c.recv(4)
    c.close()
"""

CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.send(b"hi")
c.close()
"""

LISTENER = r"""
import socket, sys
family, host, bind = sys.argv[1], sys.argv[2], sys.argv[3] == "bind"
s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET)
if bind:
    s.bind((host, 0))
s.listen(1)                     # unbound: the kernel picks the port in listen() itself
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""

# Two sockets bound to one port (SO_REUSEADDR lets both bind): the second listen() is refused
# with EADDRINUSE after its socket already entered LISTEN, and must leave no record.
REFUSED_LISTEN = r"""
import errno, socket
a, b = socket.socket(), socket.socket()
for s in (a, b):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("127.0.0.1", 0))
b.bind(("127.0.0.1", a.getsockname()[1]))
a.listen(1)
try:
    b.listen(1)
    raise SystemExit("the second listen was not refused")
except OSError as exc:
    assert exc.errno == errno.EADDRINUSE, exc
print(a.getsockname()[1], flush=True)
"""


def null_accepts(family: str, host: str, call: str, client_host: str) -> dict:
    srv = subprocess.Popen([sys.executable, "-c", NULL_ACCEPT_SERVER, family, host, call, "1"],
                           stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline())
    cli = subprocess.run([sys.executable, "-c", CLIENT, client_host, str(port)], timeout=20)
    addr, rport = srv.stdout.readline().split()
    srv.wait(20)
    assert cli.returncode == 0 and srv.returncode == 0
    return {"server": srv.pid, "port": port, "peer": (addr, int(rport)), "call": call, "family": family}


def listener(family: str, host: str, bind: bool) -> dict:
    p = subprocess.Popen([sys.executable, "-c", LISTENER, family, host, "bind" if bind else "nobind"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    p.stdin.close()
    p.wait(20)
    return {"pid": p.pid, "port": port, "host": host, "bind": bind}


# connect, then _exit at once: the process is gone microseconds after its connection is made
QUICK_CONNECT = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sockaddr_in6 a6 = {0};
    struct sockaddr_in a4 = {0};
    int v6 = strchr(argv[1], ':') != NULL;
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int rc;
    if (v6) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons(atoi(argv[2]));
        inet_pton(AF_INET6, argv[1], &a6.sin6_addr);
        rc = connect(s, (struct sockaddr *)&a6, sizeof(a6));
    } else {
        a4.sin_family = AF_INET;
        a4.sin_port = htons(atoi(argv[2]));
        inet_pton(AF_INET, argv[1], &a4.sin_addr);
        rc = connect(s, (struct sockaddr *)&a4, sizeof(a4));
    }
    _exit(rc == 0 ? 0 : 1);
}
"""


def short_connect(program, host: str, port: int) -> int:
    """A process that connects and exits at once (no send, no close): its pid."""
    p = subprocess.Popen([str(program), host, str(port)])
    assert p.wait(20) == 0
    return p.pid


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    work = tmp_path_factory.mktemp("tcp")
    out, ready = work / "events.jsonl", work / "ready"
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--out", str(out), "--host", "live",
                              "--auth-log", "none", "--ready-file", str(ready), "--flush-interval", "0.2",
                              "--mode", "bpf"], stderr=subprocess.PIPE, text=True)
    facts: dict = {"accepts": [], "listens": [], "short": []}
    (work / "quick.c").write_text(QUICK_CONNECT)
    subprocess.run(["cc", "-O2", "-o", str(work / "quick"), str(work / "quick.c")], check=True)
    try:
        deadline = time.time() + 90
        while not ready.exists():
            if agent.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the agent did not start: {agent.communicate(timeout=30)[1]}")
            time.sleep(0.1)
        for call in ("accept", "accept4"):
            facts["accepts"].append(null_accepts("4", "127.0.0.1", call, "127.0.0.1"))
            facts["accepts"].append(null_accepts("6", "::1", call, "::1"))
            facts["accepts"].append(null_accepts("6", "::", call, "127.0.0.1"))     # v4-mapped on a v6 socket
        facts["listens"] += [listener("4", "0.0.0.0", True), listener("4", "127.0.0.1", True),
                             listener("6", "::", True), listener("4", "", False)]
        refused = subprocess.run([sys.executable, "-c", REFUSED_LISTEN], capture_output=True, text=True, timeout=20)
        assert refused.returncode == 0, refused.stderr
        facts["refused_listen"] = int(refused.stdout)
        # a listening socket this test holds, for the short-lived clients to reach
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as s:
                s.bind((host, 0))
                s.listen(64)
                port = s.getsockname()[1]
                facts["short"] += [(short_connect(work / "quick", host, port), host, port) for _ in range(5)]
        time.sleep(1.0)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    events = [json.loads(line) for line in out.read_text().splitlines()]
    return events, facts, err


def test_accepts_without_a_peer_address_are_recorded_with_both_ends(captured):
    events, facts, err = captured
    for case in facts["accepts"]:
        peer_addr, peer_port = case["peer"]
        peer_addr = peer_addr.removeprefix("::ffff:")
        accepts = [e for e in events if e["kind"] == "accept" and e["pid"] == case["server"]]
        assert len(accepts) == 1, (case, accepts, err)
        (acc,) = accepts
        assert (acc["raddr"], acc["rport"], acc["lport"]) == (peer_addr, peer_port, case["port"]), case
        connects = [e for e in events if e["kind"] == "connect" and e["rport"] == case["port"]
                    and e["lport"] == peer_port]
        assert len(connects) == 1, case
        assert (connects[0]["laddr"], connects[0]["raddr"]) == (acc["raddr"], acc["laddr"])


def test_a_listening_port_names_the_process_that_opened_it(captured):
    events, facts, _ = captured
    for case in facts["listens"]:
        listens = [e for e in events if e["kind"] == "listen" and e["pid"] == case["pid"]]
        assert len(listens) == 1, (case, listens)
        (ev,) = listens
        assert ev["lport"] == case["port"]
        assert ev["laddr"] == (case["host"] or "0.0.0.0")
        execs = [e for e in events if e["kind"] == "exec" and e["pid"] == case["pid"]]
        assert execs and ev["start"] == execs[-1]["start"]
        assert set(ev) == {"v", "kind", "host", "boot", "ts", "pid", "start", "laddr", "lport"}
    # the refused listen() left nothing; the one that worked, its one record
    port = facts["refused_listen"]
    assert len([e for e in events if e["kind"] == "listen" and e["lport"] == port]) == 1


def test_a_process_that_connects_and_exits_at_once_is_recorded(captured):
    events, facts, _ = captured
    for pid, host, port in facts["short"]:
        connects = [e for e in events if e["kind"] == "connect" and e["pid"] == pid]
        assert len(connects) == 1, (pid, host, port)
        (ev,) = connects
        assert (ev["raddr"], ev["rport"], ev["laddr"]) == (host, port, host)
        (ex,) = [e for e in events if e["kind"] == "exec" and e["pid"] == pid]
        assert ev["start"] == ex["start"]                 # the process that exec'd, not a stand-in
        exits = [e for e in events if e["kind"] == "exit" and e["pid"] == pid]
        assert [e["start"] for e in exits] == [ex["start"]]


# One process making N loopback connections to itself: connect, accept(fd, NULL, NULL), close.
STORM = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(l, (void *)&sa, sizeof sa) || listen(l, 128) || getsockname(l, (void *)&sa, &len))
        return 1;
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (void *)&sa, sizeof sa))
            return 2;
        close(accept(l, NULL, NULL));
        close(s);
    }
    return 0;
}
"""


def test_a_storm_over_the_budget_is_counted_per_place_not_lost(tmp_path):
    """A budget of 10 records a second (burst 20): one process's 400 connections to itself make
    800 facts, nearly all over budget. Each is still counted: the connects in one aggregate per
    (process, remote address and port, minute), the accepts per (process, remote address, local
    port, minute), and no loss event says any was not recorded."""
    (tmp_path / "storm.c").write_text(STORM)
    subprocess.run(["cc", "-O2", "-o", str(tmp_path / "storm"), str(tmp_path / "storm.c")], check=True)
    config = tmp_path / "whodid.yaml"
    config.write_text(json.dumps({"agent": {"connection_budget": {"per_second": 10, "burst": 20}}}))
    out, ready = tmp_path / "events.jsonl", tmp_path / "ready"
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--config", str(config), "--out", str(out),
                              "--host", "live", "--auth-log", "none", "--ready-file", str(ready),
                              "--flush-interval", "0.2", "--mode", "bpf"], stderr=subprocess.PIPE, text=True)
    n = 400
    try:
        deadline = time.time() + 90
        while not ready.exists():
            if agent.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the agent did not start: {agent.communicate(timeout=30)[1]}")
            time.sleep(0.1)
        storm = subprocess.Popen([str(tmp_path / "storm"), str(n)], stdout=subprocess.PIPE, text=True)
        port = int(storm.stdout.readline())
        assert storm.wait(60) == 0
        time.sleep(1.0)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    events = [json.loads(line) for line in out.read_text().splitlines()]
    connects = [e for e in events if e["kind"] == "connect" and e["rport"] == port]
    accepts = [e for e in events if e["kind"] == "accept" and e["lport"] == port]
    assert {e["pid"] for e in connects + accepts} == {storm.pid}
    assert sum(e.get("count", 1) for e in connects) == n
    assert sum(e.get("count", 1) for e in accepts) == n
    grouped = [e for e in connects + accepts if "count" in e]
    assert grouped and len(grouped) <= 4                   # per direction and minute (the storm may span two)
    for e in grouped:
        assert e["first"] == e["ts"] <= e["last"] and e["count"] > 1
    assert len(connects) + len(accepts) < 60               # the budget (20 + 10/s) and the aggregates
    assert not [e for e in events if e["kind"] == "loss"], err
