"""The collector's HTTP(S) server: POST /v1/events, GET /healthz, GET /metrics.

Standard library HTTP (ThreadingHTTPServer): a request thread authenticates the agent,
reads a bounded body, decodes and validates it, and hands the events to the one Writer;
docs/collector.md is the API's reference.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from whodid import __version__
from whodid.tracer.store import Store

from .batch import BatchError, decompress, parse_batch, parse_clock
from .metrics import Metrics
from .redaction import redact_batch
from .writer import Writer, WriterBusy

READ_CHUNK = 1 << 16
REFUSALS_LISTED = 100        # refused lines named in a response; the count covers all
REQUEST_TIMEOUT = 30.0       # a client that stalls mid-request gives up its thread after this
WRITE_TIMEOUT = 120.0


@dataclass
class Limits:
    max_body: int = 16 << 20          # bytes on the wire
    max_batch: int = 64 << 20         # bytes once inflated


class Collector:
    """Owns the server, its writer and its metrics. start() returns once listening."""

    def __init__(self, store_path: str, host: str = "127.0.0.1", port: int = 8470, *, limits: Limits | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, log=None):
        self.store_path = store_path
        self.limits = limits or Limits()
        self.metrics = Metrics()
        self.log = log or (lambda msg: print(f"whodid serve: {msg}", file=sys.stderr, flush=True))
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
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="whodid-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> "Collector":
        self.writer.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop taking requests, let the ones in flight finish, write what is queued."""
        if self.thread.is_alive():            # shutdown() would wait forever for a loop never started
            self.httpd.shutdown()
        self.httpd.server_close()
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


class _Server(ThreadingHTTPServer):
    # stop() waits for requests in flight (each bounded by REQUEST_TIMEOUT), so a batch
    # being read when SIGTERM came is still written and answered
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, collector: Collector):
        self.collector = collector
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, on the request's own thread, so a slow or broken
        # client cannot hold up the accept loop.
        request.settimeout(REQUEST_TIMEOUT)
        if self.collector.tls:
            try:
                request = self.collector.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                request.close()
                return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"whodid-collector/{__version__}"
    server: _Server

    def log_message(self, fmt, *args):          # requests are counted in /metrics, not logged one by one
        pass

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
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise BatchError(411, "send the batch with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise BatchError(411, "a Content-Length header is required") from None
        if length > c.limits.max_body:
            # not read: the connection is closed instead, so a huge body costs no memory
            self.close_connection = True
            raise BatchError(413, f"the body is {length} bytes; the limit is {c.limits.max_body} "
                                  "(collector.max_body): send smaller batches")
        body = self._read(length)
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

    def _read(self, length: int) -> bytes:
        chunks, left = [], length
        while left > 0:
            chunk = self.rfile.read(min(READ_CHUNK, left))
            if not chunk:
                self.close_connection = True
                raise BatchError(400, f"the body ended after {length - left} of {length} bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

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


_REASONS = {400: "bad_request", 401: "unauthorized", 411: "length_required", 413: "too_large",
            415: "unsupported_encoding"}
