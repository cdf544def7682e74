"""Unix-socket connects for real (issue 19): the agent's BPF program in this kernel, a python
server on a watched path, an abstract name and a path nobody watches, a client connecting to
each; then tmux's own client and server. The agent writes events to a file (--out), which is
read back and checked against the schema (test_agent_unix.schema_problems)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from test_agent_live import REASON
from test_agent_unix import schema_problems

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")


class OutAgent:
    """`whodid-agent run --out FILE` with a config, around a block; stopped with SIGTERM after."""

    def __init__(self, tmp_path, prefixes, comms):
        self.out, self.ready = tmp_path / "events.jsonl", tmp_path / "ready"
        self.config = tmp_path / "whodid.yaml"
        self.config.write_text(json.dumps({"agent": {"unix_sockets": {"prefixes": prefixes, "comms": comms}}}))

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--config", str(self.config),
                                      "--out", str(self.out), "--host", "live", "--auth-log", "none",
                                      "--ready-file", str(self.ready), "--flush-interval", "0.2"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while not self.ready.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"the agent did not start: {self.proc.communicate()[1]}")
            time.sleep(0.1)
        return self

    def __exit__(self, *_):
        time.sleep(1.0)                          # let the last records reach the agent
        self.proc.send_signal(signal.SIGTERM)
        _, self.err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, self.err
        self.events = [json.loads(line) for line in self.out.read_text().splitlines()]

    def kinds(self, *kinds):
        return [e for e in self.events if e["kind"] in kinds]


SERVER = """
import os, socket, sys
socks = []
for name in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("\\0" + name[1:] if name.startswith("@") else name)
    s.listen(4)
    socks.append(s)
print("ready", flush=True)
for s in socks:
    c, _ = s.accept()
    c.recv(8)
    c.close()
"""

CLIENT = """
import socket, sys
for name in sys.argv[1:]:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect("\\0" + name[1:] if name.startswith("@") else name)
    c.send(b"hi")
    c.close()
"""


def test_connects_to_watched_paths_and_abstract_names_pair_with_their_accepts(tmp_path):
    tag = uuid.uuid4().hex[:8]
    watched_dir = f"/tmp/whodid-h19-{tag}"
    os.makedirs(watched_dir)
    watched, abstract, other = f"{watched_dir}/mux.sock", f"@whodid-h19-{tag}", str(tmp_path / "other.sock")
    try:
        with OutAgent(tmp_path, prefixes=[watched_dir + "/", f"@whodid-h19-{tag}"], comms=[]) as agent:
            server = subprocess.Popen([sys.executable, "-c", SERVER, watched, abstract, other],
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            client = subprocess.run([sys.executable, "-c", CLIENT, watched, abstract, other], timeout=20)
            assert client.returncode == 0
            server.wait(20)
    finally:
        for p in (watched, other):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(watched_dir)
    client_pid = next(e["pid"] for e in agent.kinds("exec")
                      if e["argv"][:2] == [sys.executable, "-c"] and e["argv"][2] == CLIENT)
    server_exec = next(e for e in agent.kinds("exec") if e["argv"][:3] == [sys.executable, "-c", SERVER])
    connects = [e for e in agent.kinds("uconnect") if e["pid"] == client_pid]
    accepts = {e["conn"]: e for e in agent.kinds("uaccept")}
    assert [c["path"] for c in connects] == [watched, abstract]     # the path nobody watches: not recorded
    for c in connects:
        assert schema_problems(c) == [], c
        assert "bound" not in c                                      # the listener's name is the path asked for
        a = accepts[c["conn"]]
        assert schema_problems(a) == [], a
        assert (c["peer_pid"], c["peer_start"]) == (server.pid, server_exec["start"])
        assert (a["pid"], a["start"]) == (server.pid, server_exec["start"])
        assert (a["peer_pid"], a["peer_start"]) == (client_pid, c["start"])
        assert a["path"] == c["path"] and c["peer_uid"] == a["peer_uid"] == os.getuid()
        assert a["ts"] >= c["ts"] - 0.001
    assert not [e for e in agent.kinds("uconnect", "uaccept") if other in e.get("path", "")]
    assert len({c["conn"] for c in connects}) == 2


def test_tmux_s_client_connect_and_its_server_s_accept_are_recorded(tmp_path):
    tag = uuid.uuid4().hex[:8]
    sock = f"/tmp/whodid-h19-tmux-{tag}/s"      # not under /tmp/tmux-: kept for the client's comm alone
    os.makedirs(os.path.dirname(sock), mode=0o700)
    env = {**os.environ, "TMUX": ""}
    try:
        with OutAgent(tmp_path, prefixes=[], comms=["tmux"]) as agent:
            subprocess.run(["tmux", "-S", sock, "new-session", "-d", "sleep 30"], env=env, check=True, timeout=20)
            subprocess.run(["tmux", "-S", sock, "ls"], env=env, check=True, timeout=20, capture_output=True)
            subprocess.run(["tmux", "-S", sock, "kill-server"], env=env, timeout=20)
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], env=env, timeout=20, capture_output=True)
        if os.path.exists(sock):
            os.unlink(sock)
        os.rmdir(os.path.dirname(sock))
    connects = [e for e in agent.kinds("uconnect") if e["path"] == sock]
    accepts = {e["conn"]: e for e in agent.kinds("uaccept")}
    ls_pid = next(e["pid"] for e in agent.kinds("exec") if e["argv"][-1:] == ["ls"] and "tmux" in e["exe"])
    ls_connect = next(c for c in connects if c["pid"] == ls_pid)
    server_accept = accepts[ls_connect["conn"]]
    assert schema_problems(ls_connect) == [] and schema_problems(server_accept) == []
    # the server is a fork of the first client (no exec): it is who listened and who accepted
    assert server_accept["pid"] == ls_connect["peer_pid"] != ls_pid
    assert server_accept["peer_pid"] == ls_pid and server_accept["path"] == sock
    # ls and kill-server connect; the client that starts the server talks to its fork over a
    # socketpair (tmux 3), so the starter is found by lineage, not by a connect
    kill = next(e["pid"] for e in agent.kinds("exec") if e["argv"][-1:] == ["kill-server"])
    assert {c["pid"] for c in connects} >= {ls_pid, kill}


def test_a_connection_made_before_the_agent_started_is_a_snapshot_pair(tmp_path):
    tag = uuid.uuid4().hex[:8]
    watched_dir = f"/tmp/whodid-h19-{tag}"
    os.makedirs(watched_dir)
    path = f"{watched_dir}/mux.sock"
    hold = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
            "print('ready', flush=True)\n"
            "c, _ = s.accept(); c.recv(8); time.sleep(60)\n")
    attach = ("import socket, sys, time\n"
              "c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); c.send(b'hi')\n"
              "print('attached', flush=True); time.sleep(60)\n")
    server = subprocess.Popen([sys.executable, "-c", hold, path], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.Popen([sys.executable, "-c", attach, path], stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "attached"
        with OutAgent(tmp_path, prefixes=[watched_dir + "/"], comms=[]) as agent:
            pass
    finally:
        for p in (client, server):
            if p:
                p.kill()
                p.wait()
        os.unlink(path)
        os.rmdir(watched_dir)
    execs = {e["pid"]: e for e in agent.kinds("exec") if e.get("snapshot")}
    [conn] = [e for e in agent.kinds("uconnect") if e["path"] == path]
    [acc] = [e for e in agent.kinds("uaccept") if e["conn"] == conn["conn"]]
    assert schema_problems(conn) == [] and schema_problems(acc) == []
    assert conn["snapshot"] is True and acc["snapshot"] is True
    assert (conn["pid"], conn["start"]) == (client.pid, execs[client.pid]["start"])
    assert (acc["pid"], acc["peer_pid"], acc["path"]) == (server.pid, client.pid, path)
    assert conn["peer_pid"] == server.pid and conn["peer_start"] == execs[server.pid]["start"]


def test_without_the_socket_members_the_program_loads_with_no_connect_probe():
    import dataclasses

    from whodid.agent import btf
    from whodid.agent.assemble import Assembler
    from whodid.agent.capture import Capture
    from whodid.agent.procfs import ProcFS
    offsets, _ = btf.running_kernel()
    attached = {}
    for label, offs in (("with", offsets), ("without", dataclasses.replace(offsets, unix=None))):
        cap = Capture(Assembler("h", "b", 0.0, ProcFS(), lambda u: None, lambda g: None), watch=("/etc",),
                      ringbuf_pages=8, offsets=offs)
        try:
            attached[label] = {str(tp) for tp in cap.bpf.tracepoint_fds}
        finally:
            cap.close()
    assert any("sys_enter_connect" in tp for tp in attached["with"])
    assert not any("sys_enter_connect" in tp for tp in attached["without"])
    assert any("sys_exit_accept4" in tp for tp in attached["without"])       # TCP's accepts still


def test_a_server_in_a_nested_pid_namespace_is_named_by_the_agent_s_pid_for_it(tmp_path):
    # the server is pid 1 of its own namespace; SO_PEERCRED read at the wrong level would say 1
    tag = uuid.uuid4().hex[:8]
    watched_dir = f"/tmp/whodid-h19-{tag}"
    os.makedirs(watched_dir)
    path = f"{watched_dir}/ns.sock"
    try:
        with OutAgent(tmp_path, prefixes=[watched_dir + "/"], comms=[]) as agent:
            server = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", SERVER,
                                       path], stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            subprocess.run([sys.executable, "-c", CLIENT, path], timeout=20, check=True)
            server.wait(20)
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(watched_dir)
    [conn] = [e for e in agent.kinds("uconnect") if e["path"] == path]
    acc = next(e for e in agent.kinds("uaccept") if e["conn"] == conn["conn"])
    nested = next(e for e in agent.kinds("exec") if e["argv"][:3] == [sys.executable, "-c", SERVER])
    assert acc["pid"] == nested["pid"] == conn["peer_pid"] != 1
    assert conn["peer_start"] == nested["start"]


def test_in_pid_namespace_self_mode_peers_are_named_as_the_agent_s_namespace_sees_them(tmp_path):
    tag = uuid.uuid4().hex[:8]
    watched_dir = f"/tmp/whodid-h19-{tag}"
    os.makedirs(watched_dir)
    path, out, ready = f"{watched_dir}/self.sock", tmp_path / "events.jsonl", tmp_path / "ready"
    config = tmp_path / "whodid.yaml"
    config.write_text(json.dumps({"agent": {"unix_sockets": {"prefixes": [watched_dir + "/"], "comms": []}}}))
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "client.py").write_text(CLIENT)
    py = sys.executable
    script = (f"{py} -m whodid.agent.cli run --pid-namespace self --config {config} --out {out} --host live "
              f"--auth-log none --ready-file {ready} --flush-interval 0.2 2>{tmp_path}/agent.err & A=$!; "
              f"for i in $(seq 900); do [ -f {ready} ] && break; sleep 0.1; done; "
              f"{py} {tmp_path}/server.py {path} > {tmp_path}/server.out & S=$!; "
              f"for i in $(seq 100); do grep -q ready {tmp_path}/server.out && break; sleep 0.1; done; "
              f"{py} {tmp_path}/client.py {path}; wait $S; sleep 1; kill -TERM $A; wait $A")
    try:
        subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", script], timeout=180, check=True)
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(watched_dir)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    server = next(e for e in events if e["kind"] == "exec" and e["argv"][1:2] == [str(tmp_path / "server.py")])
    client = next(e for e in events if e["kind"] == "exec" and e["argv"][1:2] == [str(tmp_path / "client.py")])
    [conn] = [e for e in events if e["kind"] == "uconnect" and e["path"] == path]
    acc = next(e for e in events if e["kind"] == "uaccept" and e["conn"] == conn["conn"])
    assert server["pid"] < 1000 and client["pid"] < 1000       # the namespace's own numbering
    assert (conn["pid"], conn["peer_pid"], conn["peer_start"]) == (client["pid"], server["pid"], server["start"])
    assert (acc["pid"], acc["peer_pid"], acc["peer_start"]) == (server["pid"], client["pid"], client["start"])


@pytest.mark.skipif(not shutil.which("screen"), reason="screen is not installed")
def test_screen_s_injecting_and_listing_clients_are_recorded_with_the_server(tmp_path):
    screendir = tmp_path / "screens"
    screendir.mkdir(mode=0o700)
    env = {**os.environ, "SCREENDIR": str(screendir)}
    name = f"h19-{uuid.uuid4().hex[:6]}"
    try:
        with OutAgent(tmp_path, prefixes=[], comms=["screen"]) as agent:
            subprocess.run(["screen", "-dmS", name, "sleep", "30"], env=env, check=True, timeout=20)
            for _ in range(50):
                if list(screendir.iterdir()):
                    break
                time.sleep(0.1)
            subprocess.run(["screen", "-S", name, "-X", "stuff", "x"], env=env, check=True, timeout=20)
            subprocess.run(["screen", "-S", name, "-X", "quit"], env=env, timeout=20)
    finally:
        subprocess.run(["screen", "-S", name, "-X", "quit"], env=env, timeout=20, capture_output=True)
    execs = {e["pid"]: e for e in agent.kinds("exec") if "screen" in e["exe"]}
    stuff = next(pid for pid, e in execs.items() if "stuff" in e["argv"])
    [conn] = [e for e in agent.kinds("uconnect") if e["pid"] == stuff]
    acc = next(e for e in agent.kinds("uaccept") if e["conn"] == conn["conn"])
    assert schema_problems(conn) == [] and schema_problems(acc) == []
    assert conn["path"].startswith(str(screendir) + "/") and conn["path"].endswith("." + name)
    assert acc["pid"] == conn["peer_pid"] and acc["peer_pid"] == stuff and acc["path"] == conn["path"]
    # two clients, two connections: ids differ even when the kernel reuses a socket's address
    assert len({e["conn"] for e in agent.kinds("uconnect") if e["path"] == conn["path"]}) >= 2
