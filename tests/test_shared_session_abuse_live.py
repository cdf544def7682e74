"""Issue 19, adversarial review, live (BPF): an unprivileged user's connect storm - to a watched
unix-socket prefix, and over TCP loopback - against the real agent writing to a file
(tests/test_unix_live.py's OutAgent). Run it alone, under the lab lock: the storm runs the
machine's CPUs flat for 8 s and would cost a concurrent live test its records.

Before the per-uid connection budget (agent/capture.c), nobody's storm filled the ring buffer:
~560k records lost, said only as 'ring buffer full', and 58 % of root's canary execs went
unrecorded. Now nobody's connection records stop at its budget, the rest are counted and said in
a loss event naming uid 65534, and the ring buffer keeps its room for everyone's execs."""

from __future__ import annotations

import sys

import pytest


# --- the agent: an unprivileged user's connect storm (BPF, live) --------------------------

STORM = r'''
import socket, sys, time
where, seconds, role = sys.argv[1], float(sys.argv[2]), sys.argv[3]
family, address = (socket.AF_UNIX, where) if where.startswith("/") else (socket.AF_INET, ("127.0.0.1", int(where)))
if role == "server":
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(address)
    s.listen(4096)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.close()
n, end = 0, time.time() + seconds
while time.time() < end:
    c = socket.socket(family, socket.SOCK_STREAM)
    try:
        c.connect(address)
        n += 1
    except OSError:
        pass
    c.close()
print(n, flush=True)
'''

NOBODY = 65534


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["unix", "tcp"])
def storm(request, tmp_path_factory):
    """nobody (uid 65534) listens - under /tmp/tmux-<tag>/, a watched prefix anyone may create, or
    on a loopback TCP port - and connects to it from three processes for 8 s, while root runs
    /bin/true as a canary."""
    import os
    import subprocess
    import time
    import uuid

    from test_agent_live import REASON
    if REASON is not None:
        pytest.skip(f"BPF capture unavailable: {REASON}")
    from test_unix_live import OutAgent
    tag = uuid.uuid4().hex[:6]
    d = f"/tmp/tmux-storm{tag}"
    os.makedirs(d)
    os.chown(d, NOBODY, NOBODY)
    where = f"{d}/s" if request.param == "unix" else str(free_port())
    seconds = 8.0
    nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", STORM,
              where, str(seconds)]
    try:
        with OutAgent(tmp_path_factory.mktemp("storm"), prefixes=["/tmp/tmux-"], comms=["ssh", "tmux", "screen"]) \
                as agent:
            server = subprocess.Popen(nobody + ["server"], stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            clients = [subprocess.Popen(nobody + ["client"], stdout=subprocess.PIPE, text=True) for _ in range(3)]
            ran, end = 0, time.time() + seconds
            while time.time() < end:
                subprocess.run(["/bin/true", f"canary-{tag}-{ran}"])
                ran += 1
            made = sum(int(c.communicate(timeout=60)[0].strip() or 0) for c in clients)
            server.kill()
            server.wait()
    finally:
        if os.path.exists(f"{d}/s"):
            os.unlink(f"{d}/s")
        os.rmdir(d)
    seen = sum(1 for e in agent.kinds("exec") if e["argv"][-1].startswith(f"canary-{tag}-"))
    losses = agent.kinds("loss")
    if request.param == "unix":
        recorded = len([e for e in agent.kinds("uconnect") if e.get("path") == where])
    else:
        # over the budget, TCP connects are counted per place in the kernel (issue 21): `count` each
        recorded = sum(e.get("count", 1) for e in agent.kinds("connect") if e.get("rport") == int(where))
    return {"kind": request.param, "made": made, "ran": ran, "seen": seen, "losses": losses, "recorded": recorded,
            "over_budget": sum(e["count"] for e in losses if f"uid {NOBODY} (nobody)" in (e.get("what") or "")),
            "ring_full": sum(e["count"] for e in losses if e.get("what") == "ring buffer full")}


def said(storm) -> str:
    """The storm's figures and every loss in full (pytest cuts a dict short)."""
    import json
    return json.dumps({k: v for k, v in storm.items() if k != "losses"}) + "\nlosses: " + json.dumps(
        [(e["count"], e.get("what")) for e in storm["losses"]])


def test_a_connect_storm_loses_nothing_without_a_loss_record(storm):
    assert storm["made"] > 0 and storm["recorded"] > 0, said(storm)
    if storm["seen"] < storm["ran"]:
        lost = sum(e["count"] for e in storm["losses"])
        assert lost >= storm["ran"] - storm["seen"], said(storm)


def test_a_users_connect_storm_costs_no_one_elses_exec(storm):
    """Every one of root's canary execs is recorded: nobody's connection records stop at its
    budget (2,000/s, burst 10,000: at most ~26,000 in 8 s, against ~450,000 without), so the
    ring buffer never fills. Exact, not nearly: before the budget 58 % were missing."""
    assert storm["seen"] == storm["ran"], said(storm)
    assert storm["ring_full"] == 0, said(storm)


def test_the_connections_over_budget_are_said_and_name_the_user(storm):
    """A loss event names uid 65534 (nobody); for the unix storm, every connect nobody made is
    either recorded or counted in it (two records a connection: its connect and accept) - none
    vanishes unsaid. TCP connections over the budget are not lost at all since issue 21: counted in
    the kernel per (process, place, minute), every one nobody made is in a connect's `count`."""
    if storm["kind"] == "tcp":
        # every connect here is blocking: one whose state change the kernel skipped (a nested probe,
        # ~1 in 100,000: CI at stop 28) is recorded at connect()'s return (tests/test_tcp_skipped_live.py)
        assert storm["recorded"] == storm["made"] and storm["over_budget"] == 0, said(storm)
        return
    assert storm["over_budget"] > 0, said(storm)
    assert storm["recorded"] < storm["made"], said(storm)
    if storm["kind"] == "unix":
        assert storm["recorded"] + storm["over_budget"] // 2 >= storm["made"], said(storm)
