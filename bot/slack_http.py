"""HTTP mode: Slack POSTs slash commands and button clicks to us; Bolt checks the signature
and runs the listeners. A plain threaded server, like the collector's, with a size limit."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slack_bolt import App, BoltRequest

MAX_BODY = 1 << 20           # Slack's payloads are a few KB


class SlackHTTPServer:
    def __init__(self, app: App, host: str, port: int, path: str):
        self.app, self.path = app, path
        self.httpd = _Server((host, port), _Handler)
        self.httpd.bolt = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="whodid-slack-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> "SlackHTTPServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        bolt = self.server.bolt
        if self.path.split("?", 1)[0] != bolt.path:
            return self._send(404, b"not found", "text/plain")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._send(411, b"Content-Length required", "text/plain")
        if length > MAX_BODY:
            self.close_connection = True
            return self._send(413, b"too large", "text/plain")
        body = self.rfile.read(length).decode("utf-8", "replace")
        headers = {k.lower(): [v] for k, v in self.headers.items()}
        resp = bolt.app.dispatch(BoltRequest(body=body, headers=headers, query=self.path.partition("?")[2]))
        self._send(resp.status, resp.body.encode(), resp.headers.get("content-type", ["text/plain"])[0])

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
