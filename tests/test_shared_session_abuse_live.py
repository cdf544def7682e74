"""Issue 19, adversarial review, live (BPF): an unprivileged user's connect storm to a watched
unix-socket prefix, against the real agent writing to a file (tests/test_unix_live.py's
OutAgent). Run it alone, under the lab lock: the storm fills the machine's ring buffers for 8 s
and would cost a concurrent live test its records."""

from __future__ import annotations

import sys

import pytest


# --- the agent: an unprivileged user's connect storm to a watched prefix (BPF, live) -------

STORM = r'''
import socket, sys, time
path, seconds, role = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if role == "server":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4096)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.close()
n, end = 0, time.time() + seconds
while time.time() < end:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(path)
        n += 1
    except OSError:
        pass
    c.close()
print(n, flush=True)
'''


@pytest.fixture(scope="module")
def storm(tmp_path_factory):
    """nobody (uid 65534) listens under /tmp/tmux-<tag>/ - a watched prefix anyone may create -
    and connects to it from three processes for 8 s, while root runs /bin/true as a canary."""
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
    os.chown(d, 65534, 65534)
    sock, seconds = f"{d}/s", 8.0
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", STORM, sock,
              str(seconds)]
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
        if os.path.exists(sock):
            os.unlink(sock)
        os.rmdir(d)
    seen = sum(1 for e in agent.kinds("exec") if e["argv"][-1].startswith(f"canary-{tag}-"))
    return {"made": made, "ran": ran, "seen": seen, "losses": agent.kinds("loss"),
            "unix": len([e for e in agent.kinds("uconnect", "uaccept") if e.get("path") == sock])}


def test_a_connect_storm_loses_nothing_without_a_loss_record(storm):
    assert storm["made"] > 0 and storm["unix"] > 0
    if storm["seen"] < storm["ran"]:
        lost = sum(e["count"] for e in storm["losses"])
        assert lost >= storm["ran"] - storm["seen"], storm


@pytest.mark.xfail(strict=True, reason=(
    "measured: nobody's 3 processes made ~446k connects in 8 s to a socket under /tmp/tmux- (a default "
    "watched prefix any user may create; the default comms ssh/tmux/screen are any program's for a prctl); "
    "each is a uconnect and a uaccept record, the ring buffer overflowed (561k records lost, said only as "
    "'ring buffer full') and 58 % of root's canary execs went unrecorded - the same storm to an unwatched "
    "path lost none. Fix: a per-uid token bucket for unix records in capture.c's sys_enter_connect, its "
    "drops counted apart and shipped as their own loss record ('unix connects over budget, uid N'), so "
    "exec, fork and exit keep the ring buffer's room"))
def test_a_users_connect_storm_costs_no_one_elses_exec(storm):
    assert storm["seen"] == storm["ran"], storm
