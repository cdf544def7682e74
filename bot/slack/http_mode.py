"""HTTP mode: Slack POSTs slash commands and button clicks to us; Bolt checks the signature
and runs the listeners.

Everything before the signature check is bounded (whodid.guarded_http): the body is read
only with one plain Content-Length of at most MAX_BODY - a larger one is refused with 413
before a byte of it is read - within the body deadline, and slow or idle clients lose their
connection at the header, body and idle deadlines. At most MAX_CONNECTIONS at once.
"""

from __future__ import annotations

from slack_bolt import App, BoltRequest

from whodid.guarded_http import Deadlines, GuardedHandler, GuardedServer

MAX_BODY = 1 << 20           # Slack's payloads are a few KB; a 1 MiB cap leaves room and bounds memory
MAX_CONNECTIONS = 64
# Slack wants an answer within 3 s, so nothing legitimate is slower than these
DEADLINES = Deadlines(header=10, body=10, idle=30, write=10, grace=2)


class SlackHTTPServer:
    def __init__(self, app: App, host: str, port: int, path: str, deadlines: Deadlines | None = None,
                 max_connections: int = MAX_CONNECTIONS):
        self.app, self.path = app, path
        self.httpd = GuardedServer((host, port), _Handler, deadlines=deadlines or DEADLINES,
                                   max_connections=max_connections, name="whodid-slack-http")
        self.httpd.bolt = self

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> "SlackHTTPServer":
        self.httpd.start()
        return self

    def close(self) -> None:
        self.httpd.stop()


class _Handler(GuardedHandler):
    def do_POST(self):
        bolt = self.server.bolt
        body = self.read_body(MAX_BODY, "the request").decode("utf-8", "replace")
        if self.path.split("?", 1)[0] != bolt.path:
            return self.send_plain(404, "not found\n")
        headers = {k.lower(): [v] for k, v in self.headers.items()}
        resp = bolt.app.dispatch(BoltRequest(body=body, headers=headers, query=self.path.partition("?")[2]))
        self.send_plain(resp.status, resp.body, resp.headers.get("content-type", ["text/plain"])[0])
