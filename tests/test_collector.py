"""The collector over real HTTP on loopback: authentication, bounded bodies, partial
acceptance, metrics, TLS, clock offsets, many agents at once - and the agent's shipper."""

import gzip
import http.client
import json
import subprocess
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from whodid.agent.ship import Shipper
from whodid.agent.spool import Spool
from whodid.collector.batch import BatchError, decompress, parse_batch, parse_clock
from whodid.collector.server import Collector, Limits
from whodid.tracer import Store

from kit import collector_on


def ev(i, host="web-1", ts=None):
    return {"v": 1, "kind": "exec", "host": host, "boot": "b1", "ts": ts or 1_700_000_000.0 + i, "pid": 1000 + i,
            "start": i, "argv": ["echo", str(i)], "uid": 0, "euid": 0}


def lines(events):
    return "".join(json.dumps(e) + "\n" for e in events).encode()


@pytest.fixture
def collector(tmp_path):
    c, c.tokens = collector_on(str(tmp_path / "c.db"), limits=Limits(max_body=1 << 20, max_batch=4 << 20))
    yield c
    c.stop()


def post(c, body: bytes, token=None, headers=None, gz=True):
    h = {"Content-Type": "application/x-ndjson", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if gz:
        body = gzip.compress(body)
        h["Content-Encoding"] = "gzip"
    conn = http.client.HTTPConnection(*c.httpd.server_address[:2], timeout=30)
    conn.request("POST", "/v1/events", body=body, headers=h)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
    conn.close()
    return out


def count(c, sql="SELECT count(*) FROM execs"):
    return Store.open(c.store_path).db.execute(sql).fetchone()[0]


def metrics(c):
    text = urllib.request.urlopen(c.url + "/metrics").read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# --- batch decoding (pure) -----------------------------------------------------------------

def test_a_gzip_bomb_is_stopped_at_the_limit_without_inflating_it():
    bomb = gzip.compress(b"\n" * (200 << 20))            # 200 MiB of newlines, ~200 KB compressed
    with pytest.raises(BatchError) as exc:
        decompress(bomb, "gzip", 1 << 20)
    assert exc.value.status == 413 and "inflates to more than" in exc.value.message
    with pytest.raises(BatchError, match="not valid gzip"):
        decompress(b"plain text", "gzip", 1 << 20)
    with pytest.raises(BatchError, match="'br' is not supported"):
        decompress(b"x", "br", 1 << 20)


def test_parse_batch_refuses_line_by_line_and_other_hosts_events():
    data = lines([ev(1)]) + b"{not json\n" + lines([ev(2, host="db-1"), {**ev(3), "uid": -1}])
    batch = parse_batch(data, "web-1")
    assert [e["pid"] for e in batch.events] == [1001] and batch.received == 4
    assert [(n, f) for n, f, _, _ in batch.refused] == [(2, "json"), (3, "host"), (4, "uid")]
    assert "token is for host 'web-1', not 'db-1'" in batch.refused[1][2]


def test_clock_header_parsing():
    assert parse_clock("offset=12.5 error=0.002") == (12.5, 0.002)
    assert parse_clock("offset=x error=1") is None and parse_clock(None) is None
    assert parse_clock("offset=1e20 error=0") is None


# --- the HTTP API ------------------------------------------------------------------------------

def test_events_are_stored_and_a_resend_stores_nothing_twice(collector):
    status, body, headers = post(collector, lines([ev(i) for i in range(100)]), collector.tokens["web-1"])
    assert status == 200 and body["accepted"] == 100 and body["new"] == 100 and body["refused_count"] == 0
    assert float(headers["X-Whodid-Time"]) >= float(headers["X-Whodid-Received"])
    status, body, _ = post(collector, lines([ev(i) for i in range(100)]), collector.tokens["web-1"])
    assert status == 200 and body["accepted"] == 100 and body["new"] == 0
    assert count(collector) == 100


def test_a_wrong_or_missing_token_is_refused(collector):
    for token in (None, "wdt_not-a-real-token"):
        status, body, _ = post(collector, lines([ev(1)]), token)
        assert status == 401 and "whodid token add HOST" in body["error"]
    assert count(collector) == 0
    assert metrics(collector)[("whodid_requests_refused_total", (("reason", "unauthorized"),))] == 2


def test_a_revoked_token_stops_working(collector):
    Store.open(collector.store_path).revoke_agent("web-2")
    collector._tokens.clear()                     # the 5 s cache, skipped for the test
    assert post(collector, lines([ev(1, host="web-2")]), collector.tokens["web-2"])[0] == 401


def test_a_partly_bad_batch_keeps_the_good_events_and_names_the_bad(collector):
    data = lines([ev(1), ev(2)]) + b"garbage\n" + lines([ev(3, host="web-2")])
    status, body, _ = post(collector, data, collector.tokens["web-1"])
    assert status == 200 and body["accepted"] == 2 and body["refused_count"] == 2
    assert [(r["line"], r["field"]) for r in body["refused"]] == [(3, "json"), (4, "host")]
    assert count(collector) == 2
    kept = Store.open(collector.store_path).rejects()
    assert {r["field"] for r in kept} == {"json", "host"} and any(r["raw"] == "garbage" for r in kept)


def test_a_wholly_malformed_batch_gets_a_400_naming_the_problem(collector):
    status, body, _ = post(collector, b"garbage\n", collector.tokens["web-1"])
    assert status == 400 and body["error"].startswith("none of the 1 events is valid; first: line 1: json")
    status, body, _ = post(collector, b"\n\n", collector.tokens["web-1"])
    assert status == 400 and "holds no events" in body["error"]
    status, body, _ = post(collector, b"not gzip", collector.tokens["web-1"], headers={"Content-Encoding": "gzip"},
                           gz=False)
    assert status == 400 and "not valid gzip" in body["error"]


def test_a_body_over_the_limit_is_refused_unread(collector):
    conn = http.client.HTTPConnection(*collector.httpd.server_address[:2], timeout=30)
    conn.putrequest("POST", "/v1/events")
    conn.putheader("Authorization", f"Bearer {collector.tokens['web-1']}")
    conn.putheader("Content-Length", str(50 << 20))
    conn.endheaders()
    try:
        conn.send(b"x" * (1 << 20))               # the server answers without waiting for the rest
    except OSError:
        pass
    resp = conn.getresponse()
    assert resp.status == 413 and "the limit is 1048576" in json.loads(resp.read())["error"]
    assert resp.headers["Connection"] == "close"


def test_other_paths_and_methods(collector):
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(collector.url + "/v1/events")
    assert exc.value.code == 405 and exc.value.headers["Allow"] == "POST"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(collector.url + "/v2/nothing")
    assert exc.value.code == 404


def test_healthz_and_metrics(collector):
    health = json.loads(urllib.request.urlopen(collector.url + "/healthz").read())
    assert health["status"] == "ok" and health["problems"] == []
    now = time.time()
    post(collector, lines([ev(i, ts=now - 5 + i * 0.001) for i in range(10)]) + b"bad\n", collector.tokens["web-1"])
    post(collector, lines([{"v": 1, "kind": "loss", "host": "web-1", "boot": "b1", "ts": now, "since": now - 60,
                            "count": 42, "what": "ring buffer full"}]), collector.tokens["web-1"])
    m = metrics(collector)
    web1 = (("host", "web-1"),)
    assert m[("whodid_events_received_total", web1)] == 12
    assert m[("whodid_events_accepted_total", web1)] == 11
    assert m[("whodid_events_rejected_total", web1)] == 1
    assert m[("whodid_agent_lost_events_total", web1)] == 42
    assert 0 <= m[("whodid_host_lag_seconds", web1)] < 60
    assert m[("whodid_host_last_seen_seconds", web1)] < 60
    assert m[("whodid_store_bytes", ())] > 0


def test_a_failing_store_answers_503_and_the_agent_keeps_its_spool(collector, tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(i) for i in range(200)])
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=lambda m: None)
    collector.writer.store.db.execute("PRAGMA max_page_count = 1")     # the collector's disk is "full"
    wait = shipper.ship_once()
    assert wait and wait > 0 and spool.pending() == 200
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(collector.url + "/healthz")
    assert exc.value.code == 503 and "full" in json.loads(exc.value.read())["problems"][0]
    collector.writer.store.db.execute("PRAGMA max_page_count = 1073741823")
    assert shipper.ship_once() == 0 and spool.pending() == 0
    assert count(collector) == 200
    assert json.loads(urllib.request.urlopen(collector.url + "/healthz").read())["status"] == "ok"


# --- the shipper against the collector -----------------------------------------------------------

def test_the_shipper_measures_a_skewed_clock_and_the_collector_keeps_it(collector, tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    skewed = lambda: time.time() - 300.0                                   # this host is 5 minutes slow
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], clock=skewed, log=lambda m: None)
    for i in range(3):                                                      # the offset travels with the next batch
        spool.put([ev(i)])
        assert shipper.ship_once() == 0
    assert shipper.offset[0] == pytest.approx(300.0, abs=0.5)
    (host,) = [h for h in Store.open(collector.store_path).inventory() if h["host"] == "web-1"]
    assert host["clock_offset"] == pytest.approx(300.0, abs=0.5) and host["clock_error"] < 0.5


def test_the_shipper_retries_with_backoff_when_the_collector_is_down(tmp_path):
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(1)])
    said = []
    shipper = Shipper(spool, "http://127.0.0.1:9", "t", backoff_base=1.0, backoff_max=8.0, log=said.append)
    waits = [shipper.ship_once() for _ in range(6)]
    assert all(0 <= w <= 8.0 for w in waits) and spool.pending() == 1
    assert len(said) == 1 and "cannot reach the collector" in said[0] and "1 events wait in the spool" in said[0]


def test_the_shipper_halves_batches_on_413(collector, tmp_path):
    collector.limits.max_batch = 50_000
    spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
    spool.put([ev(i) for i in range(2000)])
    shipper = Shipper(spool, collector.url, collector.tokens["web-1"], log=lambda m: None)
    for _ in range(40):
        if shipper.ship_once() is None:
            break
    assert spool.pending() == 0 and count(collector) == 2000 and shipper.batch_events < 2000


def test_many_agents_at_once_neither_block_nor_corrupt(collector, tmp_path):
    store = Store.open(collector.store_path)
    tokens = {f"host-{i}": store.add_agent(f"host-{i}") for i in range(8)}
    errors = []

    def agent(host, token):
        try:
            spool = Spool(tmp_path / f"{host}.db", host=host, boot="b1")
            spool.put([ev(i, host=host) for i in range(3000)])
            shipper = Shipper(spool, collector.url, token, batch_events=250, log=errors.append)
            while (w := shipper.ship_once()) is not None:
                time.sleep(w or 0)
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=agent, args=item) for item in tokens.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    rows = dict(store.db.execute("SELECT h.name, count(*) FROM execs e JOIN procs p ON p.id = e.proc "
                                 "JOIN boots b ON b.id = p.boot JOIN hosts h ON h.id = b.host GROUP BY 1"))
    assert rows == {host: 3000 for host in tokens}
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    db = str(tmp_path / "c.db")
    token = Store.open(db, create=True).add_agent("web-1")
    c = Collector(db, "127.0.0.1", 0, tls_cert=str(cert), tls_key=str(key)).start()
    try:
        assert c.url.startswith("https://")
        spool = Spool(tmp_path / "spool.db", host="web-1", boot="b1")
        spool.put([ev(i) for i in range(5)])
        said = []
        untrusting = Shipper(spool, c.url, token, log=said.append)     # the system CAs do not know this cert
        assert untrusting.ship_once() > 0 and "CERTIFICATE_VERIFY_FAILED" in said[0]
        assert Shipper(spool, c.url, token, ca_file=str(cert), log=said.append).ship_once() == 0
        assert count(c) == 5
        with pytest.raises(Exception):                                  # plain HTTP to the TLS port
            urllib.request.urlopen(c.url.replace("https", "http") + "/healthz", timeout=5).read()
    finally:
        c.stop()
