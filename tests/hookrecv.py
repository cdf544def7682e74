"""Receivers for whodid's outputs, on loopback, for the tests: a webhook endpoint that checks each
POST's signature as a receiver would (bot/outputs.py's verify) and can be told to fail the first
N attempts, and a syslog UDP socket that parses each datagram as an RFC 5424 line."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from whodid.bot.outputs import verify

RFC5424 = re.compile(r"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)) "
                     r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
                     r"(?P<sd>-|(\[[^ \]=\"]+( [^ \]=\"]+=\"(\\.|[^\"\\])*\")*\])+)(?: (?P<msg>.*))?$", re.S)


class WebhookReceiver:
    def __init__(self, secret: bytes, fail_first: int = 0, status: int = 503):
        self.secret = secret
        self.fail_first = fail_first
        self.status = status
        self.attempts: list[dict] = []        # every POST: headers, body, verified
        self.delivered: list[dict] = []       # the events accepted (signature good, not failed on purpose)
        self.got = threading.Condition()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        self.httpd.daemon_threads = True
        self.httpd.recv = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/whodid"

    def wait_for(self, n: int, timeout: float = 30.0) -> list[dict]:
        """The first n delivered events, once there are n (a bounded wait, not a timing claim)."""
        with self.got:
            self.got.wait_for(lambda: len(self.delivered) >= n, timeout)
        return self.delivered[:n]

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Hook(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        recv: WebhookReceiver = self.server.recv
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ok = verify(recv.secret, self.headers.get("X-Whodid-Timestamp", ""), body,
                    self.headers.get("X-Whodid-Signature", ""), time.time())
        with recv.got:
            recv.attempts.append({"headers": dict(self.headers), "body": body, "verified": ok})
            failing = len(recv.attempts) <= recv.fail_first
            if ok and not failing:
                recv.delivered.append(json.loads(body))
                recv.got.notify_all()
        status = 401 if not ok else recv.status if failing else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class SyslogReceiver:
    """A UDP socket; `lines(n)` reads n datagrams and parses each as RFC 5424 (None if not)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(30)

    @property
    def address(self) -> str:
        return f"udp://127.0.0.1:{self.sock.getsockname()[1]}"

    def lines(self, n: int) -> list[tuple[str, re.Match | None]]:
        out = []
        for _ in range(n):
            data, _ = self.sock.recvfrom(65535)
            text = data.decode("utf-8")
            out.append((text, RFC5424.match(text)))
        return out

    def __enter__(self) -> "SyslogReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
