"""A stand-in for a Kubernetes API server, on loopback: for `whodid demo`'s canary and the tests.

It serves objects by API path with bearer-token auth, answers 404 in Kubernetes' own Status
form for what is gone, and can be told to hang, to show a canary's timeout.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeKube:
    def __init__(self, token: str = "whodid-demo-token", tls: tuple[str, str] | None = None):
        self.token = token
        self.objects: dict[str, dict] = {}
        self.hanging = threading.Event()           # set: requests wait until it is cleared
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.kube = self
        if tls:                                    # (cert, key): HTTPS, as an in-cluster API always is
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, kind: str, name: str) -> None:
        self.objects[path] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "uid": f"uid-{name}"}}

    def delete(self, path: str) -> None:
        self.objects.pop(path, None)

    def __enter__(self) -> "FakeKube":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.hanging.clear()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        kube: FakeKube = self.server.kube
        while kube.hanging.is_set():              # until the test lets go (or the server stops)
            threading.Event().wait(0.05)
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token != kube.token:       # the scheme's case does not matter (RFC 7235)
            return self._json(401, _status(401, "Unauthorized", "Unauthorized"))
        obj = kube.objects.get(self.path.split("?", 1)[0])
        if obj is None:
            name = self.path.rstrip("/").rsplit("/", 1)[-1]
            return self._json(404, _status(404, "NotFound", f'"{name}" not found'))
        self._json(200, obj)

    def _json(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}
