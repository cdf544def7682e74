"""Outputs beyond Slack: a signed webhook (checked by a local receiver, retried through 503s),
syslog (an RFC 5424 line on a local UDP socket), the outbox that delivers at least once without
making anyone wait, and the config that names them."""

import json
import os
import socket
import threading

import pytest

from hookrecv import SyslogReceiver, WebhookReceiver

from whodid import config as config_mod
from whodid.bot import outputs
from whodid.bot.outputs import DeliveryError, Outbox, OutputError, Syslog, Webhook, event, parse_outputs

SECRET = b"s3cret-shared-with-the-receiver"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return str(path)


def hook(url, secret_file, **kw):
    return parse_outputs([{"name": "oncall", "type": "webhook", "url": url, "secret_file": secret_file,
                           "backoff": "0.05s", **kw}])["oncall"]


def an_alert(n=1):
    return event("alert", f"prod-cluster:alert:{n}.000", "Canary prod-cluster is failing: cluster prod is gone", 1e9,
                 canary="prod-cluster", failing_since=1e9, result="cluster prod is gone",
                 suspects=[{"command": "delete-cluster prod", "person": "jim"}])


def test_a_webhook_is_signed_and_retried_through_503s(secret_file):
    with WebhookReceiver(SECRET, fail_first=2) as recv:
        Webhook(hook(recv.url, secret_file)).send(an_alert())
        assert [a["verified"] for a in recv.attempts] == [True, True, True]      # 503, 503, then taken
        (got,) = recv.delivered
        assert got == json.loads(json.dumps(an_alert()))
        assert got["schema"] == "whodid.event/1" and got["suspects"][0]["person"] == "jim"
        ids = {a["headers"]["X-Whodid-Delivery"] for a in recv.attempts}
        assert ids == {"prod-cluster:alert:1.000"}                           # one event, three attempts
        assert recv.attempts[0]["headers"]["Content-Type"] == "application/json"


def test_a_receiver_checks_the_signature_and_the_timestamp(secret_file):
    body, ts = b'{"x":1}', "1000000000"
    sig = outputs.signature(SECRET, ts, body)
    assert outputs.verify(SECRET, ts, body, sig, now=1000000100)
    assert not outputs.verify(SECRET, ts, b'{"x":2}', sig, now=1000000100)      # body changed
    assert not outputs.verify(SECRET, "1000000200", body, sig, now=1000000200)   # timestamp swapped
    assert not outputs.verify(SECRET, ts, body, sig, now=1000000000 + 3600)     # replayed an hour later
    assert not outputs.verify(b"other", ts, body, sig, now=1000000100)
    with WebhookReceiver(b"not-the-secret") as recv:           # a receiver with another secret refuses (401)
        with pytest.raises(DeliveryError) as exc:
            Webhook(hook(recv.url, secret_file)).send(an_alert())
        assert exc.value.refused and "HTTP 401" in str(exc.value)
        assert len(recv.attempts) == 1                          # a 4xx is not retried


def test_a_webhook_that_stays_down_is_said_in_one_line(secret_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                               # bound, never listening: refused
        with pytest.raises(DeliveryError) as exc:
            Webhook(hook(f"http://127.0.0.1:{port}/x", secret_file, retries=2)).send(an_alert())
    assert str(exc.value).startswith(f"cannot reach http://127.0.0.1:{port}/x: ") and "(3 attempts)" in str(exc.value)
    assert not exc.value.refused


def test_a_secret_others_can_read_is_refused(secret_file, tmp_path):
    os.chmod(secret_file, 0o644)
    with pytest.raises(DeliveryError, match="chmod 600"):
        Webhook(hook("http://127.0.0.1:9/", secret_file)).send(an_alert())


def test_syslog_gets_one_rfc5424_line(tmp_path):
    with SyslogReceiver() as recv:
        spec = parse_outputs([{"name": "siem", "type": "syslog", "address": recv.address, "facility": "local3"}])["siem"]
        Syslog(spec).send(an_alert())
        spec_text = parse_outputs([{"name": "t", "type": "syslog", "address": recv.address, "format": "text"}])["t"]
        Syslog(spec_text).send(event("recovered", 'x"]\\y', "Canary prod-cluster recovered\n after 5m", 1e9,
                                     canary="prod-cluster"))
        (line, m), (line2, m2) = recv.lines(2)
    assert m, line
    assert int(m["pri"]) == 19 * 8 + 3                      # local3.err
    assert m["host"] == socket.gethostname() and m["app"] == "whodid" and m["procid"] == str(os.getpid())
    assert m["msgid"] == "alert"
    assert m["sd"] == '[whodid@32473 event="alert" id="prod-cluster:alert:1.000" canary="prod-cluster"]'
    assert json.loads(m["msg"])["suspects"][0]["command"] == "delete-cluster prod"
    assert m2, line2
    assert int(m2["pri"]) == 1 * 8 + 5 and m2["msgid"] == "recovered"       # user.notice
    assert 'id="x\\"\\]\\\\y"' in m2["sd"]                                # SD escapes " ] \
    assert m2["msg"] == "Canary prod-cluster recovered after 5m"           # one line


def test_syslog_to_a_local_socket_like_dev_log(tmp_path):
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        spec = parse_outputs([{"name": "local", "type": "syslog", "address": path, "facility": "daemon"}])["local"]
        Syslog(spec).send(an_alert())
        from hookrecv import RFC5424
        m = RFC5424.match(sock.recv(65535).decode())
    assert m and int(m["pri"]) == 3 * 8 + 3 and json.loads(m["msg"])["canary"] == "prod-cluster"
    with pytest.raises(DeliveryError, match=f"cannot send to syslog at {path}"):
        Syslog(spec).send(an_alert())                            # nobody listening any more


def test_the_outbox_delivers_at_least_once_across_a_restart_and_never_waits(secret_file, tmp_path):
    spool = tmp_path / "outbox"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        spec = hook(f"http://127.0.0.1:{port}/hooks/whodid", secret_file, retries=0)
        box = Outbox({"oncall": spec}, spool)
        box.put(["oncall"], an_alert(1))
        box.put(["oncall"], an_alert(1))                        # offered again: spooled once
        box.put(["oncall"], an_alert(2))
        assert box.deliver("oncall") == 2                        # down: both kept, in order
    files = sorted((spool / "oncall").glob("*.json"))
    assert len(files) == 2 and all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    with WebhookReceiver(SECRET) as recv:                       # "restarted", the receiver up
        spec = hook(recv.url, secret_file)
        box = Outbox({"oncall": spec}, spool).start()
        try:
            got = recv.wait_for(2)
            assert [e["id"] for e in got] == ["prod-cluster:alert:1.000", "prod-cluster:alert:2.000"]
            assert box.wait_idle("oncall", 30)
            box.put(["oncall"], an_alert(2))                     # offered again once sent: not sent again
            assert not list((spool / "oncall").glob("*.json"))
        finally:
            box.stop()
    assert len(recv.delivered) == 2


def test_a_hanging_webhook_holds_up_neither_the_caller_nor_syslog(secret_file, tmp_path):
    release = threading.Event()
    hung = threading.Event()

    class Hanging:
        def send(self, ev):
            hung.set()
            release.wait(30)

    with SyslogReceiver() as recv:
        specs = parse_outputs([{"name": "oncall", "type": "webhook", "url": "http://x/", "secret_file": secret_file},
                               {"name": "siem", "type": "syslog", "address": recv.address}])
        box = Outbox(specs, tmp_path / "outbox", senders={"oncall": Hanging(), "siem": Syslog(specs["siem"])}).start()
        try:
            box.put(["oncall", "siem"], an_alert())              # returns: nothing is sent on this thread
            assert hung.wait(30)
            ((_, m),) = recv.lines(1)                            # syslog delivered while the webhook hangs
            assert m and m["msgid"] == "alert"
        finally:
            release.set()
            box.stop()


def test_a_redirect_is_not_taken_for_delivery(secret_file):
    """urllib follows a 302 with a GET and no body; the 200 at its end would count as delivered."""
    import http.server

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DeliveryError) as exc:
            Webhook(hook(f"http://127.0.0.1:{httpd.server_address[1]}/", secret_file)).send(an_alert())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert exc.value.refused and "HTTP 302" in str(exc.value) and "not followed" in str(exc.value)


def test_a_command_line_cannot_forge_a_syslog_line_over_tcp():
    """TCP syslog is newline framed: a recorded command holding a newline and a fake header
    must stay inside its one line, in both formats."""
    forged = "rm -rf /srv\n<10>1 2026-01-01T00:00:00Z host whodid 1 alert - all clear"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        srv.settimeout(30)
        address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
        for fmt in ("json", "text"):
            spec = parse_outputs([{"name": "s", "type": "syslog", "address": address, "format": fmt}])["s"]
            ev = event("alert", "c:alert:1.000", f"Canary c is failing\n  1. jim ran `{forged}`", 1e9, canary="c",
                       suspects=[{"command": forged}])
            Syslog(spec).send(ev)
            conn, _ = srv.accept()
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            lines = data.decode().split("\n")
            assert len(lines) == 2 and lines[1] == "", lines          # one line, then the frame's newline
            assert "<10>1" in lines[0] and lines[0].startswith("<11>1 ")


@pytest.mark.parametrize("raw, words", [
    ([{"name": "x", "type": "pager"}], "output x.type is one of webhook, syslog"),
    ([{"name": "x", "type": "webhook", "url": "ftp://x", "secret_file": "/s"}], "output x.url is the http(s) URL"),
    ([{"name": "x", "type": "webhook", "url": "https://x"}], "output x.secret_file is required"),
    ([{"name": "x", "type": "syslog", "facility": "local9"}], "output x.facility is one of kern"),
    ([{"name": "x", "type": "syslog", "address": "smtp://h"}], "is /dev/log (a path), udp://host:514"),
    ([{"name": "x", "type": "syslog", "url": "https://x"}], "unknown key `url` for a syslog output"),
    ([{"name": "x", "type": "syslog"}, {"name": "x", "type": "syslog"}], "two outputs are named 'x'"),
])
def test_bad_outputs_are_explained(raw, words):
    with pytest.raises(OutputError) as exc:
        parse_outputs(raw)
    assert words in str(exc.value)


def test_canaries_and_the_digest_name_outputs_the_config_defines():
    base = {"outputs": [{"name": "siem", "type": "syslog", "address": "udp://127.0.0.1:514"}]}
    canary = {"name": "c", "every": "1m", "check": {"type": "tcp", "host": "h", "port": 1}}
    cfg = config_mod.from_dict({**base, "canaries": [{**canary, "outputs": ["siem"]}],
                                "changes": {"digest": {"outputs": ["siem"]}}})       # no channel: outputs only
    assert cfg.canaries[0].outputs == ("siem",) and cfg.changes.digest.outputs == ("siem",)
    with pytest.raises(config_mod.ConfigError, match="canary c.outputs names 'oncall', which is not an output; known: siem"):
        config_mod.from_dict({**base, "canaries": [{**canary, "outputs": ["oncall"]}]})
    with pytest.raises(config_mod.ConfigError, match="changes.digest.outputs names 'pager'"):
        config_mod.from_dict({**base, "changes": {"digest": {"channel": "#c", "outputs": ["pager"]}}})
    with pytest.raises(config_mod.ConfigError, match="changes.digest.channel` is required"):
        config_mod.from_dict({"changes": {"digest": {}}})


def test_a_webhook_urls_secret_path_and_query_stay_out_of_errors(secret_file):
    """Teams, PagerDuty and Azure Functions put the webhook's secret in its path or query; an
    error (logged, shown) names the receiver by scheme and host alone (adversarial review, issue 22)."""
    with WebhookReceiver(SECRET, fail_first=99) as recv:
        url = recv.url.rstrip("/") + "/IncomingWebhook/0123456789abcdefPATHSECRET/x?code=QUERYSECRET"
        with pytest.raises(DeliveryError) as exc:
            Webhook(hook(url, secret_file, retries=1)).send(an_alert())
    assert "PATHSECRET" not in str(exc.value) and "QUERYSECRET" not in str(exc.value)
    assert "HTTP 503 from http://127.0.0.1:" in str(exc.value)


def test_a_receiver_down_for_days_cannot_fill_the_disk(secret_file, tmp_path, monkeypatch):
    """A flapping canary offers events for as long as the receiver is down: the spool keeps the
    newest MAX_PENDING per output, drops the oldest and says so (adversarial review, issue 22)."""
    monkeypatch.setattr(outputs, "MAX_PENDING", 5)
    said = []
    box = Outbox({"oncall": hook("http://127.0.0.1:9/x", secret_file)}, tmp_path / "outbox", log=said.append)
    for n in range(8):
        box.put(["oncall"], an_alert(n))
    kept = sorted(p.name for p in (tmp_path / "outbox" / "oncall").glob("*.json"))
    assert len(kept) == 5 and kept[0].endswith("alert_3.000.json") and kept[-1].endswith("alert_7.000.json"), kept
    assert len(said) == 3 and "dropped" in said[0] and "oldest" in said[0], said
