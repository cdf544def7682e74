"""The collector's HTTP(S) server: POST /v1/events, GET /healthz, GET /metrics.

whodid.guarded_http's server (the standard library's, with connection limits and total
header, body, idle and write deadlines): a request thread authenticates the agent, reads a
bounded body, decodes and validates it, and hands the events to the one Writer;
docs/collector.md is the API's reference.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from whodid import __version__, logs
from whodid.guarded_http import Deadlines, GuardedHandler, GuardedServer, Refused
from whodid.tracer.store import Store

from .batch import BatchError, decompress, parse_batch, parse_clock
from .metrics import Metrics
from .redaction import redact_batch
from .writer import Writer, WriterBusy

REFUSALS_LISTED = 100        # refused lines named in a response; the count covers all
WRITE_TIMEOUT = 120.0


@dataclass
class Limits:
    max_body: int = 16 << 20          # bytes on the wire
    max_batch: int = 64 << 20         # bytes once inflated
    max_connections: int = 256        # one thread each; one more gets 503 at once
    # header/idle/write as guarded_http; a 16 MiB body gets 120 s (about 140 KB/s)
    deadlines: Deadlines = field(default_factory=lambda: Deadlines(header=10, body=120, idle=30, write=30, grace=5))


class Collector:
    """Owns the server, its writer and its metrics. start() returns once listening."""

    def __init__(self, store_path: str, host: str = "127.0.0.1", port: int = 8470, *, limits: Limits | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, log=None):
        self.store_path = store_path
        self.limits = limits or Limits()
        self.metrics = Metrics()
        self.log = logs.get("collector", log)
        self.writer = Writer(store_path)
        self._reader = Store.open(store_path)
        self._reader_lock = threading.Lock()
        self._tokens: dict[str, tuple[str | None, float]] = {}
        # named checks of what runs beside the collector (bot/health.py): None or a problem
        self.checks: dict[str, Any] = {}
        self.tls = None
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise ValueError("TLS needs both collector.tls_cert and collector.tls_key")
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                self.tls.load_cert_chain(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load the TLS certificate {tls_cert} / key {tls_key}: {exc}") from None
        self.httpd = _Server((host, port), _Handler, self)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> "Collector":
        self.writer.start()
        self.httpd.start()
        return self

    def stop(self) -> None:
        """Stop taking requests, let the ones in flight finish (for the grace deadline), write
        what is queued - a batch answered 200 is always written."""
        self.httpd.stop()
        self.writer.stop()
        with self._reader_lock:
            self._reader.close()

    def read(self, fn):
        with self._reader_lock:
            return fn(self._reader)

    def host_for_token(self, token: str) -> str | None:
        # Cached for a few seconds: a token added or revoked with `whodid token` takes effect
        # without a restart, without a query per request.
        hit = self._tokens.get(token)
        now = time.monotonic()
        if hit and now - hit[1] < 5:
            return hit[0]
        host = self.read(lambda s: s.agent_for_token(token))
        if len(self._tokens) > 10000:
            self._tokens.clear()
        self._tokens[token] = (host, now)
        return host


class _Server(GuardedServer):
    def __init__(self, address, handler, collector: Collector):
        self.collector = collector
        super().__init__(address, handler, deadlines=collector.limits.deadlines,
                         max_connections=collector.limits.max_connections, tls=collector.tls,
                         name="whodid-http")


class _Handler(GuardedHandler):
    server_version = f"whodid-collector/{__version__}"
    server: _Server

    # requests are counted in /metrics, not logged one by one (GuardedHandler logs nothing)

    def refuse(self, exc: Refused) -> None:
        """The server's own refusals (malformed, too large, too slow): JSON like every answer."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        self.server.collector.metrics.refused(_REASONS.get(exc.status, "bad_request"))
        self._error(exc.status, exc.message)

    # --- routing -------------------------------------------------------------------------

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self._healthz()
        if path == "/metrics":
            body = self.server.collector.metrics.render(self.server.collector.read)
            return self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        if path == "/v1/events":
            return self._error(405, "POST event batches here", allow="POST")
        return self._error(404, f"no such endpoint {path}; the collector serves POST /v1/events, "
                                "GET /healthz and GET /metrics")

    def do_POST(self):
        self.received_at = time.time()
        path = self.path.split("?", 1)[0]
        if path != "/v1/events":
            self.close_connection = True
            return self._error(404, f"no such endpoint {path}; agents POST to /v1/events")
        try:
            self._events()
        except BatchError as exc:
            self.server.collector.metrics.refused(_REASONS.get(exc.status, "bad_request"))
            self._error(exc.status, exc.message)
        except Refused as exc:                # the body was not read whole: close after answering
            self.refuse(exc)

    # --- endpoints -----------------------------------------------------------------------

    def _events(self) -> None:
        c = self.server.collector
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        host = c.host_for_token(token) if token else None
        if host is None:
            self.close_connection = True
            raise BatchError(401, "missing or unknown agent token (send `Authorization: Bearer <token>`; "
                                  "make one with `whodid token add HOST` on the collector)")
        # one plain Content-Length, at most max_body (413 unread: a huge body costs no memory),
        # read whole within the body deadline - else Refused, answered, connection closed
        body = self.read_body(c.limits.max_body, "the body",
                              " (collector.max_body): send smaller batches")
        data = decompress(body, self.headers.get("Content-Encoding"), c.limits.max_batch)
        del body
        batch = parse_batch(data, host)
        redact_batch(batch)                     # defence in depth: whatever the agent sent
        del data
        at = time.time()
        if batch.received == 0:
            raise BatchError(400, "the batch holds no events (send schema-v1 JSON lines, one event per line)")
        clock = parse_clock(self.headers.get("X-Whodid-Clock"))
        try:
            written = c.writer.submit(host, batch.events, at, clock, batch.refused, batch.lines).result(WRITE_TIMEOUT)
        except WriterBusy:
            c.metrics.refused("busy")
            return self._json(503, {"error": "the collector is busy writing; retry shortly"}, retry_after=1)
        except Exception as exc:  # the write failed (disk full...): nothing was stored, the agent retries
            c.metrics.refused("store_error")
            return self._json(503, {"error": f"the store could not be written ({exc}); the batch was not "
                                             "stored: send it again later (a resend stores nothing twice)"},
                              retry_after=5)
        # refusals: the lines that failed validation, and any event the store could not hold
        refused = sorted([(n, f, e) for n, f, e, _ in batch.refused]
                         + [(batch.lines[i], f, e) for i, f, e in written.refused])
        faulty = {i for i, _, _ in written.refused}
        stored = [ev for i, ev in enumerate(batch.events) if i not in faulty]
        newest = max((ev["ts"] for ev in stored), default=None)
        if newest is not None and clock:
            newest += clock[0]                       # the host's time on the collector's clock
        c.metrics.batch(host, batch.received, written.accepted, written.new, len(refused),
                        at - newest if newest is not None else None)
        answer: dict[str, Any] = {"host": host, "received": batch.received, "accepted": written.accepted,
                                  "new": written.new, "refused_count": len(refused),
                                  "refused": [{"line": n, "field": f, "error": e}
                                              for n, f, e in refused[:REFUSALS_LISTED]],
                                  "refused_lines": [n for n, _, _ in refused]}
        if not written.accepted:
            answer["error"] = (f"none of the {batch.received} events is valid; first: line {refused[0][0]}: "
                               f"{refused[0][1]}: {refused[0][2]}")
            c.metrics.refused("all_events_invalid")
            return self._json(400, answer)
        self._json(200, answer)

    def _healthz(self) -> None:
        c = self.server.collector
        problems = []
        if not c.writer.alive:
            problems.append("the writer thread has stopped")
        if c.writer.error:
            problems.append(f"the last write failed: {c.writer.error}")
        stalled = c.writer.stalled()
        if stalled is not None:
            problems.append(f"the writer has been on one write for {stalled:.0f} s (a hung disk?); "
                            f"{c.writer.queue.qsize()} batches wait")
        checks = {}
        for name, check in list(c.checks.items()):
            try:
                problem = check()
            except Exception as exc:                # a check that raises is a failing check, saying why
                problem = f"the check itself failed: {exc!r}"
            checks[name] = problem or "ok"
            if problem:
                problems.append(f"{name}: {problem}")
        body = {"status": "ok" if not problems else "failing", "problems": problems, "checks": checks,
                "queued_batches": c.writer.queue.qsize(), "version": __version__}
        self._json(200 if not problems else 503, body)

    # --- plumbing ------------------------------------------------------------------------

    def _error(self, status: int, message: str, allow: str | None = None) -> None:
        self._json(status, {"error": message}, allow=allow)

    def _json(self, status: int, obj: dict, retry_after: int | None = None, allow: str | None = None) -> None:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if allow:
            headers["Allow"] = allow
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        # the collector's clock, to the microsecond, when the request arrived and when the
        # answer left: the agent measures its offset from these as NTP does
        if getattr(self, "received_at", None):
            self.send_header("X-Whodid-Received", f"{self.received_at:.6f}")
        self.send_header("X-Whodid-Time", f"{time.time():.6f}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


_REASONS = {400: "bad_request", 401: "unauthorized", 408: "too_slow", 411: "length_required",
            413: "too_large", 415: "unsupported_encoding", 431: "headers_too_large", 501: "bad_request"}
