"""Connections as evidence on a real kernel (issue 21): the two-host lab (agent/lab.py: real
sshd, the real agent per host). A local HTTP API listens on host-b; jim, from his laptop, logs
in to host-a, hops to ec2-user@host-b and, with sudo, runs a python one-liner that sends an
HTTP DELETE to the URL it reads from a file. No command line names the API: only the connection
does, and `to:` finds jim by it.

Run under the lab lock (`flock /work/lab.lock .venv/bin/python -m pytest tests/test_connections_live.py`):
another run of the lab makes the same users. Needs root, tracefs, BCC, sshd and sudo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from whodid.agent.lab import A_IN, B, Lab, missing_tools
from whodid.tracer import Identity, Person, Query, Store, Tracer
from whodid.tracer.destinations import parse_destination
from whodid.tracer.render import render_text

from test_agent_live import REASON

MISSING = missing_tools()
pytestmark = pytest.mark.skipif(bool(REASON or MISSING), reason=f"{REASON or 'missing ' + ', '.join(MISSING)}")

PORT = 18081
# the fake API: answers DELETE with 200 and writes down what it was asked, so the test knows the
# request was made (and made once); a GET of what was deleted is then 404, as Kubernetes says it
API = """
import http.server, sys
gone = set()
class H(http.server.BaseHTTPRequestHandler):
    def do_DELETE(self):
        open(sys.argv[2], "a").write(f"DELETE {self.path}\\n")
        gone.add(self.path)
        self.send_response(200); self.end_headers(); self.wfile.write(b"deleted")
    def do_GET(self):                       # a Kubernetes-like read: the object, or 404 once deleted
        code = 404 if self.path in gone else 200
        self.send_response(code); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b'{"kind": "Cluster"}' if code == 200 else b'{"kind": "Status", "code": 404}')
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    db = tmp_path_factory.mktemp("conn") / "lab.db"
    sdir = Path(tempfile.mkdtemp(prefix="whodid-conn-"))
    os.chmod(sdir, 0o755)                       # ec2-user reads the URL file
    (sdir / "api.py").write_text(API)
    asked = sdir / "asked"
    url = sdir / "url"
    url.write_text(f"http://{B}:{PORT}/clusters/prod\n")
    os.chmod(url, 0o644)
    api = None
    try:
        with Lab(db) as lab:
            api = subprocess.Popen(["ip", "netns", "exec", lab.ns["b"], sys.executable, str(sdir / "api.py"),
                                    str(PORT), str(asked)], stderr=subprocess.DEVNULL)
            deadline = time.time() + 30
            while subprocess.run(["ip", "netns", "exec", lab.ns["b"], "sh", "-c", f"ss -ltn | grep -q :{PORT}"]
                                 ).returncode and time.time() < deadline:
                time.sleep(0.2)
            one_liner = ('sudo python3 -c "import urllib.request as u; '
                         f'print(u.urlopen(u.Request(open(\\"{url}\\").read().strip(), method=\\"DELETE\\")).read())"')
            out = lab.ssh_from_laptop("jim", f"jim@{A_IN}", lab.hop_command(one_liner))
            time.sleep(1.5)                       # the agents' last flush
            logs = lab.stop_hosts()
            keys = dict(lab.keys)
            canary = run_canary(lab, db, sdir, keys)
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=20)
        said = asked.read_text() if asked.exists() else ""
        shutil.rmtree(sdir, ignore_errors=True)
    ident = Identity(people=(Person("jim", ssh_keys=(keys["jim"],)), Person("bob", ssh_keys=(keys["bob"],))))
    return dict(store=Store.open(db), ident=ident, out=out, logs=logs, asked=said, canary=canary)


def run_canary(lab: Lab, db, sdir: Path, keys: dict[str, str]) -> subprocess.CompletedProcess:
    """`whodid canary run` on host-a, as whodid serve would run it: a kubernetes canary on the
    API's cluster object, now 404. Its config names no suspect at all: what it suspects is the
    connections to its own api_url (and the change patterns, which no command here matches)."""
    cfg = sdir / "whodid.yaml"
    cfg.write_text(json.dumps({
        "identity": {"people": {name: {"ssh_keys": [keys[name]]} for name in ("jim", "bob")}},
        "canaries": [{"name": "prod-cluster", "every": "1m", "timeout": "10s",
                      "check": {"type": "kubernetes", "api_url": f"http://{B}:{PORT}", "path": "/clusters/prod"}}]}))
    os.chmod(cfg, 0o600)
    return subprocess.run(["ip", "netns", "exec", lab.ns["a"], sys.executable, "-m", "whodid.bot.cli",
                           "--config", str(cfg), "canary", "run", "prod-cluster", "--db", str(db)],
                          capture_output=True, text=True, timeout=120)


def test_the_delete_was_made_and_the_agents_lost_nothing(played):
    assert played["asked"] == "DELETE /clusters/prod\n", played["out"]
    assert "deleted" in played["out"].stdout, played["out"]
    for host, log in played["logs"].items():
        assert "stopped;" in log and "0 records lost" in log, log


def test_to_the_api_finds_jim_through_the_hop_and_sudo(played):
    q = Query(pattern="", to=parse_destination(f"{B}:{PORT}"))
    (tr,) = Tracer(played["store"], played["ident"]).find(q)
    assert tr.poi.host == "host-b" and tr.poi.command.startswith("python3 -c import urllib.request"), tr.poi
    assert tr.attributed.user == "jim", (tr.attributed, tr.chain)
    assert [s.host for s in tr.chain if s.edge in ("login", "ssh")] == ["host-a", "host-b"], tr.chain
    assert any(s.edge == "sudo" for s in tr.chain), tr.chain
    assert tr.connections.count == 1 and tr.connections.peers[0].addr == B
    assert f"connected to {B}:{PORT} once" in render_text(q, [tr], time.time())
    # the same question by the network and by the wrong port
    assert len(Tracer(played["store"], played["ident"]).find(
        Query(pattern="", to=parse_destination("10.77.0.0/24")))) >= 1
    assert Tracer(played["store"], played["ident"]).find(Query(pattern="", to=parse_destination(f"{B}:{PORT + 1}"))) == []


def test_a_kubernetes_canary_whose_cluster_is_gone_names_jim_by_his_connection_to_its_api(played):
    """The issue's story with no command line naming the action: the canary's API says the
    cluster is gone, and the alert's top suspect is jim - by the connection his one-liner made
    to the API the canary watches, through the hop and sudo."""
    res = played["canary"]
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "prod-cluster: FAILED - cluster prod is gone: 404" in res.stdout, res.stdout
    top = res.stdout.split("Top suspects", 1)[1].split("\n")[1:3]
    assert top[0].lstrip().startswith("1. jim ran `python3 -c import urllib.request"), res.stdout
    assert f"connected to {B}:{PORT} once" in top[0], res.stdout
    assert "jim" in top[1] and "sudo" in top[1], res.stdout
