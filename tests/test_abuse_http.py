"""Hostile HTTP against whodid's three servers, over real sockets (issue 16, item 3).

Malformed framing (lengths that are negative, missing, doubled or lying; chunked bodies;
bytes after the body; a second gzip member) gets a 4xx with a reason, never a dropped
connection or a hang; the Slack endpoint bounds its memory before checking the signature;
slow and idle clients lose their connection at total deadlines that a trickle cannot reset;
connections are bounded; and `whodid serve` stops on SIGTERM whatever its clients do, writing
the batches it accepted. The servers here run with 1-second deadlines so the tests are quick.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml
from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult

from slackemu import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, SlackEmulator
from kit import collector_on, free_port

from whodid import config as config_mod
from whodid.bot.slack.http_mode import SlackHTTPServer
from whodid.bot.web.pages import TracePages
from whodid.collector.server import Collector, Limits
from whodid.guarded_http import Deadlines
from whodid.tracer.store import Store

FAST = Deadlines(header=1, body=1, idle=1, write=1, grace=1)
CAP = 4                                         # connections each test server takes


def ev(i, host="web-1"):
    return {"v": 1, "kind": "exec", "host": host, "boot": "b1", "ts": 1_700_000_000.0 + i, "pid": 1000 + i,
            "start": i, "argv": ["echo", str(i)], "uid": 0, "euid": 0}


def batch(*numbers) -> bytes:
    return "".join(json.dumps(ev(i)) + "\n" for i in numbers).encode()


# --- raw HTTP ------------------------------------------------------------------------------

def exchange(addr, data: bytes, *, close_write: bool = False, timeout: float = 30) -> bytes:
    """Send data and read everything until the server closes. A reset (a dropped connection)
    or a silence of `timeout` seconds (a hang) fails the test."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        return read_to_end(s)


def read_to_end(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise AssertionError(f"the server neither answered nor closed; got {out[:300]!r}") from None
        if not chunk:
            return out
        out += chunk


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 answers in raw, in order; fails unless raw is made of whole answers."""
    found = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), f"not an HTTP answer: {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        assert len(rest) >= length, f"answer cut short: {raw[:300]!r}"
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def one_answer(raw: bytes) -> tuple[int, str]:
    (status, headers, body), = responses(raw)
    return status, body.decode()


def post_head(token: str, *extra: str, path: str = "/v1/events") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {token}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- servers -------------------------------------------------------------------------------

@pytest.fixture
def collector(tmp_path):
    c, tokens = collector_on(str(tmp_path / "c.db"), ("web-1",),
                             Limits(max_body=1 << 20, max_batch=4 << 20, max_connections=CAP, deadlines=FAST))
    c.token = tokens["web-1"]
    c.addr = c.httpd.server_address[:2]
    yield c
    c.stop()


def stored(c) -> int:
    return c.read(lambda s: s.db.execute("SELECT count(*) FROM execs").fetchone()[0])


class Recorder:
    """A real Bolt app that counts the requests that got past the signature check."""

    def __init__(self):
        # authorized without asking Slack: nothing here reaches the Web API
        self.app = App(signing_secret=SIGNING_SECRET, process_before_response=True,
                       authorize=lambda **kw: AuthorizeResult(enterprise_id=None, team_id="T1", bot_token="xoxb-test",
                                                              bot_user_id="U0", bot_id="B0"))
        self.commands = []
        self.app.command("/whodid")(self.on_command)

    def on_command(self, ack, command):
        self.commands.append(command["text"])
        ack("ok")


@pytest.fixture
def slack():
    rec = Recorder()
    server = SlackHTTPServer(rec.app, "127.0.0.1", 0, "/slack/events", deadlines=FAST, max_connections=CAP).start()
    server.addr = server.httpd.server_address[:2]
    server.recorder = rec
    yield server
    server.close()


@pytest.fixture
def pages(tmp_path):
    db = str(tmp_path / "p.db")
    Store.open(db, create=True).close()
    site = TracePages(config_mod.from_dict({}), db, log=lambda m: None)
    site.start("127.0.0.1:0", deadlines=FAST, max_connections=CAP)
    site.addr = site._server.server_address[:2]
    yield site
    site.stop()


@pytest.fixture(params=["collector", "slack", "pages"])
def server(request):
    """(address, a request it answers) for each of the three servers."""
    if request.param == "collector":
        c = request.getfixturevalue("collector")
        return c.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    if request.param == "slack":
        return request.getfixturevalue("slack").addr, b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    return request.getfixturevalue("pages").addr, b"GET /trace HTTP/1.1\r\nHost: x\r\n\r\n"


# --- framing -------------------------------------------------------------------------------

GZ = gzip.compress(batch(1, 2))
GZ2 = GZ + gzip.compress(batch(3))               # `cat a.gz b.gz`: valid gzip, two members

MALFORMED = {
    "negative length": (["Content-Length: -1"], batch(1), 400, "Content-Length '-1' is not a byte count"),
    "signed length": ([f"Content-Length: +{len(batch(1))}"], batch(1), 400, "is not a byte count"),
    "no length": ([], batch(1), 411, "a Content-Length header is required"),
    "two different lengths": ([f"Content-Length: {len(batch(1))}", "Content-Length: 5"], batch(1), 400,
                              "2 Content-Length headers; send exactly one"),
    "two equal lengths": ([f"Content-Length: {len(batch(1))}"] * 2, batch(1), 400, "2 Content-Length headers"),
    "chunked": (["Transfer-Encoding: chunked"], b"%x\r\n%s\r\n0\r\n\r\n" % (len(batch(1)), batch(1)), 411,
                "not Transfer-Encoding (chunked)"),
    "chunked and a length": ([f"Content-Length: {len(batch(1))}", "Transfer-Encoding: chunked"], batch(1), 411,
                             "not Transfer-Encoding"),
    "length too long, then the client closes": ([f"Content-Length: {len(batch(1)) + 100}"], batch(1), 400,
                                                "the body ended after"),
    "a second gzip member": (["Content-Encoding: gzip", f"Content-Length: {len(GZ2)}"], GZ2, 400,
                             "(a second gzip member)"),
    "bytes after the gzip stream": (["Content-Encoding: gzip", f"Content-Length: {len(GZ) + 7}"], GZ + b"garbage",
                                    400, "7 bytes follow the end of the gzip stream (trailing bytes)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_framing_gets_a_4xx_naming_the_problem_and_stores_nothing(collector, case):
    extra, body, status, message = MALFORMED[case]
    raw = exchange(collector.addr, post_head(collector.token, *extra) + body, close_write=True)
    got, text = one_answer(raw)
    assert (got, json.loads(text)["error"].count(message)) == (status, 1), text
    assert stored(collector) == 0


def test_bytes_after_the_declared_body_are_answered_as_a_bad_next_request(collector):
    body = batch(1)
    raw = exchange(collector.addr, post_head(collector.token, f"Content-Length: {len(body)}") + body
                   + b"GARBAGE\r\n\r\n", close_write=True)
    (s1, _, b1), (s2, h2, b2) = responses(raw)
    assert s1 == 200 and json.loads(b1)["accepted"] == 1
    assert s2 == 400 and "Bad request syntax ('GARBAGE')" in json.loads(b2)["error"]
    assert h2["connection"] == "close"


def test_a_body_that_stops_coming_gets_408_at_the_body_deadline(collector):
    body = batch(1)
    with socket.create_connection(collector.addr, timeout=30) as s:
        s.sendall(post_head(collector.token, f"Content-Length: {len(body)}") + body[:10])   # and waits
        status, text = one_answer(read_to_end(s))
    assert status == 408 and f"only 10 of {len(body)} bytes of the body arrived within 1 s" in text
    assert stored(collector) == 0


def trickle(addr, head: bytes, drip: bytes, every: float = 0.25, most: int = 200) -> bytes:
    """Send head, then drip one byte every `every` s - never finishing - until the server
    answers or closes; what it said. Fails if it lets the trickle run out."""
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(head)
        for byte in drip[:most]:
            try:
                s.sendall(bytes([byte]))
            except OSError:                              # closed on us: read what it said
                break
            s.settimeout(every)
            try:
                first = s.recv(65536)
            except socket.timeout:
                continue
            finally:
                s.settimeout(30)
            return first + read_to_end(s) if first else first
        raise AssertionError(f"the server still waits after {most} bytes, one every {every} s")


def test_a_header_trickle_cannot_outlast_the_header_deadline(server):
    addr, _ = server
    raw = trickle(addr, b"GET /healthz HTTP/1.1\r\nX-Slow: ", b"a" * 1000)
    status, text = one_answer(raw)
    assert status == 408 and "headers did not arrive within 1 s" in text


@pytest.mark.parametrize("where", ["collector", "slack"])
def test_a_body_trickle_cannot_outlast_the_body_deadline(request, where):
    srv = request.getfixturevalue(where)
    if where == "collector":
        head = post_head(srv.token, "Content-Length: 1000")
    else:
        head = b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    status, text = one_answer(trickle(srv.addr, head, b"a" * 1000))
    assert status == 408 and "of 1000 bytes of the body arrived within 1 s" in text


def test_an_idle_kept_alive_connection_is_closed(server):
    addr, ask = server
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(ask)
        s.settimeout(30)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 ") and b"Connection: close" not in first   # kept alive...
        rest = read_to_end(s)                                                       # ...until idle too long
    responses(first + rest)


def test_headers_over_64_kib_get_431(server):
    addr, _ = server
    raw = exchange(addr, b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 60000 + b"\r\n"
                   + b"X-Big2: " + b"a" * 60000 + b"\r\n\r\n")
    status, text = one_answer(raw)
    assert status == 431 and "exceed 65536 bytes" in text


def test_connections_beyond_the_limit_get_503_at_once_and_the_server_recovers(server):
    addr, ask = server
    held = [socket.create_connection(addr, timeout=30) for _ in range(CAP)]
    try:
        for s in held:                                     # each is being served: it answers
            s.sendall(ask)
            assert s.recv(65536).startswith(b"HTTP/1.1 ")
        status, text = one_answer(exchange(addr, ask))
        assert status == 503 and f"{CAP} connections are open" in text
    finally:
        for s in held:
            s.close()
    for _ in range(200):                                   # the held ones' threads finish, in their time
        raw = exchange(addr, ask)
        if not raw.startswith(b"HTTP/1.1 503"):
            break
        time.sleep(0.05)
    assert one_answer(raw)[0] != 503


def test_a_client_that_never_reads_its_answers_is_cut_at_the_write_deadline(collector):
    with socket.create_connection(collector.addr, timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)   # megabytes of answers, none read
        for _ in range(300):                                # 15 s: the old per-send timeout was 30 s
            if not collector.httpd.connections:
                break
            time.sleep(0.05)
        assert not collector.httpd.connections, "the server still holds the connection of a client that never reads"
        assert one_answer(exchange(collector.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))[0] == 200


def test_a_tls_client_that_never_shakes_hands_is_cut_at_the_header_deadline(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    db = str(tmp_path / "t.db")
    Store.open(db, create=True).close()
    c = Collector(db, "127.0.0.1", 0, limits=Limits(deadlines=FAST), tls_cert=str(cert), tls_key=str(key)).start()
    try:
        with socket.create_connection(c.httpd.server_address[:2], timeout=15) as s:   # the old timeout: 30 s
            s.sendall(b"\x16\x03\x01")                            # the start of a ClientHello, then nothing
            assert read_to_end(s) == b""                            # closed, not held
    finally:
        c.stop()


def test_a_bug_in_a_handler_is_a_500_and_one_line_not_a_dropped_connection(collector, monkeypatch, capsys):
    from whodid.collector import server as server_mod

    def broken(header):
        raise RuntimeError("boom")
    monkeypatch.setattr(server_mod, "parse_clock", broken)
    body = batch(1)
    status, text = one_answer(exchange(collector.addr, post_head(collector.token, f"Content-Length: {len(body)}")
                                       + body))
    assert status == 500 and "the server failed on this request (RuntimeError)" in text
    assert "POST /v1/events failed: RuntimeError('boom')" in capsys.readouterr().err


# --- the Slack endpoint before the signature -----------------------------------------------

def test_slack_refuses_an_oversized_body_with_413_before_reading_it(slack):
    with socket.create_connection(slack.addr, timeout=30) as s:
        s.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        s.sendall(b"a" * 65536)                           # and the rest never comes
        status, text = one_answer(read_to_end(s))
    assert status == 413 and "the request is 67108864 bytes; the limit is 1048576" in text
    assert slack.recorder.commands == []


def test_slack_does_not_read_until_the_client_closes_on_a_negative_length(slack):
    # before: Content-Length -1 read the socket until the client closed: memory without bound
    with socket.create_connection(slack.addr, timeout=30) as s:
        s.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        s.sendall(b"a" * (4 << 20))                       # more than the cap, and the socket stays open
        status, text = one_answer(read_to_end(s))
    assert status == 400 and "Content-Length '-1' is not a byte count" in text


def test_slack_still_answers_a_signed_command_and_refuses_a_bad_signature(slack):
    form = urllib.parse.urlencode({"command": "/whodid", "text": "delete-cluster", "team_id": "T1",
                                   "user_id": "U1", "channel_id": "C1", "response_url": "http://x/r"})
    url = f"http://{slack.addr[0]}:{slack.addr[1]}/slack/events"
    assert SlackEmulator.signed_post(url, form)[:2] == (200, "ok")
    assert SlackEmulator.signed_post(url, form, secret="wrong")[0] == 401
    assert slack.recorder.commands == ["delete-cluster"]


# --- whodid serve stops whatever its clients do --------------------------------------------

def test_serve_stops_on_sigterm_despite_hostile_clients_and_writes_what_it_accepted(tmp_path):
    db = str(tmp_path / "s.db")
    token = Store.open(db, create=True).add_agent("web-1")
    ports = {name: free_port() for name in ("collector", "slack", "web")}
    with SlackEmulator() as emu:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({
            "collector": {"listen": f"127.0.0.1:{ports['collector']}"},
            "slack": {"mode": "http", "api_base_url": emu.api_base_url, "listen": f"127.0.0.1:{ports['slack']}"},
            "web": {"listen": f"127.0.0.1:{ports['web']}"}}))
        env = dict(os.environ, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                   SLACK_SIGNING_SECRET=SIGNING_SECRET)
        ready = tmp_path / "ready"
        proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp_path / "config.yaml"),
                                 "serve", "--db", db, "--ready-file", str(ready)],
                                stderr=open(tmp_path / "serve.err", "w"), env=env)
        hostile = []
        try:
            deadline = time.time() + 60
            while not ready.exists():
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.err").read_text()
                time.sleep(0.1)
            addr = {name: ("127.0.0.1", port) for name, port in ports.items()}

            def connect(name, data=b""):
                s = socket.create_connection(addr[name], timeout=30)
                s.sendall(data)
                hostile.append(s)
                return s

            accepted = batch(1, 2, 3)                              # a batch answered 200 before the stop
            s = connect("collector", post_head(token, f"Content-Length: {len(accepted)}") + accepted)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")       # and kept alive, idle
            for name in addr:
                connect(name, b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")       # half-sent headers
            connect("slack", b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nab")
            connect("collector", post_head(token, "Content-Length: 900") + b"ab")   # half-sent body
            # a client that asks and asks and never reads: the server blocks writing to it
            connect("collector", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
            for name in addr:
                connect(name)                                     # connected, silent
            in_flight = batch(4, 5)
            late = connect("collector", post_head(token, f"Content-Length: {len(in_flight)}") + in_flight[:20])
            time.sleep(0.5)                                       # let every connection reach its thread
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            late.sendall(in_flight[20:])                          # in flight at SIGTERM: finished and written
            assert late.recv(65536).startswith(b"HTTP/1.1 200")
            code = proc.wait(timeout=20)
            took = time.monotonic() - started
        finally:
            for s in hostile:
                s.close()
            if proc.poll() is None:
                proc.kill()
    log = (tmp_path / "serve.err").read_text()
    assert code == 0, log
    print(f"whodid serve stopped {took:.1f} s after SIGTERM")
    assert "stopped; 5 events written since start" in log
    assert Store.open(db).db.execute("SELECT count(*) FROM execs").fetchone()[0] == 5
