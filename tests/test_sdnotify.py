"""systemd's notify protocol (issue 22 item 1): `Type=notify` units start `whodid serve` and
`whodid-agent run`, and count them started at READY=1. The test plays the service manager: it
binds the AF_UNIX datagram socket $NOTIFY_SOCKET names, starts the real daemons with it, and
reads what they say. READY=1 must come once, and only when the daemon does its job (the
collector answers, the agent records); STOPPING=1 must follow SIGTERM. PID 1 here is not
systemd, so no unit is started by systemd itself (docs/deploy.md says what that leaves out).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid

import pytest

from whodid import sdnotify

from kit import free_port
from test_agent_live import REASON


class Manager:
    """The service manager's end: a bound datagram socket, abstract (@name) or a path."""

    def __init__(self, tmp_path=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if tmp_path is None:
            name = f"whodid-test-notify-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.env = str(tmp_path / "notify.sock")
            self.sock.bind(self.env)

    def next(self, timeout: float = 120) -> dict:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def left(self) -> list[dict]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(dict(line.split("=", 1) for line in self.sock.recv(4096).decode().splitlines()))
        except BlockingIOError:
            return out

    def close(self):
        self.sock.close()


def test_the_address_forms_systemd_uses():
    assert sdnotify.address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.address("@/org/freedesktop/systemd1/notify/123") == "\0/org/freedesktop/systemd1/notify/123"
    assert sdnotify.address("vsock:2:1234") is None and sdnotify.address("@") is None
    assert sdnotify.status_line("two\nlines") == "two lines"


def test_messages_reach_an_abstract_and_a_path_socket_and_nothing_is_sent_without_one(tmp_path, monkeypatch):
    for manager in (Manager(), Manager(tmp_path)):
        monkeypatch.setenv("NOTIFY_SOCKET", manager.env)
        assert sdnotify.ready("collector on http://x\nSTATUS=forged") is True
        assert manager.next(5) == {"READY": "1", "STATUS": "collector on http://x STATUS=forged"}
        assert sdnotify.stopping() is True
        assert manager.next(5)["STOPPING"] == "1"
        manager.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.ready() is False


def test_a_socket_that_is_gone_costs_one_line_not_the_daemon(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(sdnotify, "_warned", False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-here"))
    with caplog.at_level("WARNING", logger="whodid"):
        assert sdnotify.ready() is False and sdnotify.stopping() is False
    # said once, through the log: on stderr before logging is set up (whodid/logs.py), or to
    # the handlers another test's setup() left - pytest's capture of the record then
    said = {line.removeprefix("whodid: ") for line in capsys.readouterr().err.splitlines() if line} | {
        r.getMessage() for r in caplog.records if r.name.startswith("whodid")}
    assert len(said) == 1, said
    (line,) = said
    assert "could not tell the service manager READY=1" in line and "\n" not in line


def serve_config(tmp_path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text("slack:\n  mode: \"off\"\nweb:\n  listen: \"off\"\n")
    return str(path)


def test_serve_says_ready_once_it_answers_and_stopping_on_sigterm(tmp_path):
    manager = Manager()
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": manager.env}
    proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "serve", "--config", serve_config(tmp_path),
                             "--db", str(tmp_path / "s.db"), "--listen", f"127.0.0.1:{port}"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = manager.next()
        assert ready["READY"] == "1" and f"127.0.0.1:{port}" in ready["STATUS"]
        # READY means answering: the first request after it is served (before the collector
        # listened, it would be refused)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert manager.next()["STOPPING"] == "1"
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert manager.left() == []                 # READY=1 once, STOPPING=1 once
        assert err.index("collector listening on") < err.index("stopping:")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        manager.close()


def test_serve_that_cannot_listen_never_says_ready(tmp_path):
    manager = Manager()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "whodid.bot.cli", "serve", "--config", serve_config(tmp_path),
                               "--db", str(tmp_path / "s.db"), "--listen", f"127.0.0.1:{port}"],
                              env={**os.environ, "NOTIFY_SOCKET": manager.env}, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 2 and "cannot listen" in proc.stderr
    assert manager.left() == []                     # systemd sees the exit, not a start
    manager.close()


@pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")
def test_the_agent_says_ready_once_its_probes_record_and_stopping_on_sigterm(tmp_path):
    manager = Manager(tmp_path)
    out = tmp_path / "events.jsonl"
    mark = f"whodid-notify-{uuid.uuid4().hex[:12]}"
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--mode", "bpf", "--out", str(out),
                              "--auth-log", "none", "--flush-interval", "0.2"],
                             env={**os.environ, "NOTIFY_SOCKET": manager.env}, stderr=subprocess.PIPE, text=True)
    try:
        ready = manager.next()
        assert ready["READY"] == "1" and "(bpf)" in ready["STATUS"]
        # READY means recording: a program run right after it is in the events (before the
        # probes were attached it would be missing)
        subprocess.run(["/bin/true", mark], check=True)
        agent.send_signal(signal.SIGTERM)
        assert manager.next()["STOPPING"] == "1"
        _, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
        assert manager.left() == []
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
        manager.close()
    execs = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(ev.get("kind") == "exec" and mark in ev.get("argv", []) for ev in execs)
