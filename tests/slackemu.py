"""A small Slack emulator for the tests: the Web API methods whodid calls, the file upload
flow, response URLs, and Socket Mode's websocket - on loopback, recording everything.

It also plays Slack's other side: it sends signed slash commands and button clicks to an
app in HTTP mode, and envelopes over the websocket in Socket Mode, as Slack would.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from websockets.sync.server import serve as ws_serve

BOT_TOKEN, APP_TOKEN, SIGNING_SECRET = "xoxb-emulated", "xapp-emulated", "emulated-signing-secret"
RESPONSE_URL_USES = 5


def http_slack(emu: "SlackEmulator", **more) -> dict:
    """The config's `slack` section for a bot in this process answering in HTTP mode (on a free
    port) and calling this emulator: the tokens and signing secret the emulator expects, and
    `more` (allowed_channels, ...)."""
    return {"mode": "http", "bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET, "listen": "127.0.0.1:0",
            "api_base_url": emu.api_base_url, **more}


def no_slack_env(monkeypatch) -> None:
    """The Slack variables of the shell running the tests, if any, do not reach the bot."""
    for var in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(var, raising=False)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200
    done: float | None = None            # when the answer left


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict] | None
    thread_ts: str | None
    files: list[dict] = field(default_factory=list)


class SlackEmulator:
    def __init__(self):
        self.calls: list[Call] = []
        self.messages: list[Message] = []
        self.uploads: dict[str, dict[str, Any]] = {}
        self.responses: list[dict[str, Any]] = []             # what apps POSTed to response_urls
        self.response_uses: dict[str, int] = {}                # response_url path -> times used
        self.refused_responses: list[dict[str, Any]] = []     # posted past a response_url's uses
        self.acks: dict[str, dict] = {}                        # Socket Mode acks by envelope id
        self.failures: dict[str, list[tuple[int, int]]] = {}   # method -> [(status, retry_after)]
        self.delays: dict[str, float] = {}                     # method -> seconds before answering
        self.not_in: set[str] = set()                          # channels the bot was not invited to
        self.usergroups: dict[str, dict[str, Any]] = {}
        # the workspace's public channels, id -> name (conversations.list pages through them)
        self.channels: dict[str, str] = {"C1": "incidents", "C2": "sre-chat", "C3": "ops", "C9": "random"}
        self.page_size = 100                                  # Slack may return fewer than asked
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.http.daemon_threads = True
        self.http.emu = self
        self.ws_conn = None
        self.ws = ws_serve(self._socket, "127.0.0.1", 0, compression=None)
        self._threads = [threading.Thread(target=self.http.serve_forever, daemon=True),
                         threading.Thread(target=self.ws.serve_forever, daemon=True)]

    # --- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> "SlackEmulator":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.ws.shutdown()
        self.http.shutdown()
        self.http.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    @property
    def api_base_url(self) -> str:
        return self.base + "/api/"

    # --- what tests inspect ----------------------------------------------------------------

    def fail_after(self, method: str, ok: int, status: int = 429, times: int = 1) -> None:
        """The next `ok` calls of method go through, then `times` fail (as fail)."""
        self.failures.setdefault(method, []).extend([(None, 0)] * ok + [(status, 1)] * times)

    def fail(self, method: str, status: int = 429, retry_after: int = 1, times: int = 1) -> None:
        """The next `times` calls of method fail: with this HTTP status, or (status 0) by dropping
        the connection without an answer, as a network fault would."""
        self.failures.setdefault(method, []).extend([(status, retry_after)] * times)

    def wait(self, predicate, timeout: float = 30.0, what: str = "it"):
        deadline = time.time() + timeout
        with self.changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"gave up waiting for {what}; calls: "
                                         f"{[c.method for c in self.calls]}, messages: {[m.text for m in self.messages]}")
                self.changed.wait(min(left, 0.2))

    def top_level(self, channel: str) -> list[Message]:
        return [m for m in self.messages if m.channel == channel and m.thread_ts is None]

    def thread(self, channel: str, ts: str) -> list[Message]:
        return [m for m in self.messages if m.channel == channel and m.thread_ts == ts]

    def method_calls(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # --- Slack's side: sending what users do -------------------------------------------------

    def slash_form(self, text: str, user_id: str = "U1", user_name: str = "ana", channel_id: str = "C1",
                   channel_name: str = "incidents", command: str = "/whodid") -> dict[str, str]:
        rid = next(self._ids)
        return {"token": "legacy", "team_id": "T1", "team_domain": "emulated", "channel_id": channel_id,
                "channel_name": channel_name, "user_id": user_id, "user_name": user_name, "command": command,
                "text": text, "api_app_id": "A1", "is_enterprise_install": "false",
                "response_url": f"{self.base}/respond/{rid}", "trigger_id": f"trigger-{rid}"}

    def click_payload(self, message: Message, action_id: str, value: str, user_id: str = "U1",
                      user_name: str = "ana", channel_name: str = "incidents") -> dict[str, Any]:
        rid = next(self._ids)
        msg = {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks or []}
        if message.thread_ts:
            msg["thread_ts"] = message.thread_ts
        return {"type": "block_actions", "user": {"id": user_id, "username": user_name, "name": user_name,
                                                  "team_id": "T1"},
                "api_app_id": "A1", "token": "legacy", "trigger_id": f"trigger-{rid}",
                "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                              "is_ephemeral": False},
                "team": {"id": "T1", "domain": "emulated"}, "channel": {"id": message.channel, "name": channel_name},
                "message": msg, "response_url": f"{self.base}/respond/{rid}",
                "actions": [{"action_id": action_id, "block_id": "b", "type": "button", "value": value,
                             "text": {"type": "plain_text", "text": action_id}, "action_ts": str(time.time())}]}

    @staticmethod
    def signed_post(url: str, body: str, secret: str = SIGNING_SECRET, ts: int | None = None,
                    signature: str | None = None) -> tuple[int, str, float]:
        """POST as Slack does: form body, X-Slack-Signature over `v0:timestamp:body`.
        Returns (status, body, when the answer arrived)."""
        ts = ts or int(time.time())
        sig = signature or "v0=" + hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
        req = urllib.request.Request(url, data=body.encode(), method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sig})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode(), time.time()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), time.time()

    def slash(self, url: str, text: str, **kw) -> tuple[int, str, float]:
        return self.signed_post(url, urllib.parse.urlencode(self.slash_form(text, **kw)))

    def click(self, url: str, message: Message, action_id: str, value: str, **kw) -> tuple[int, str, float]:
        body = urllib.parse.urlencode({"payload": json.dumps(self.click_payload(message, action_id, value, **kw))})
        return self.signed_post(url, body)

    def socket_send(self, kind: str, payload: dict[str, Any], timeout: float = 10.0) -> dict:
        """Send an envelope over Socket Mode and wait for the app's ack."""
        self.wait(lambda: self.ws_conn is not None, what="the app's Socket Mode connection")
        eid = f"env-{next(self._ids)}"
        self.ws_conn.send(json.dumps({"envelope_id": eid, "type": kind, "payload": payload,
                                      "accepts_response_payload": kind == "slash_commands", "retry_attempt": 0}))
        return self.wait(lambda: self.acks.get(eid), timeout, what=f"the ack of {eid}")

    # --- the server side ---------------------------------------------------------------------

    def _socket(self, conn) -> None:
        if not conn.request.path.startswith("/link"):
            conn.close()
            return
        conn.send(json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"},
                              "debug_info": {"host": "emulated", "approximate_connection_time": 3600}}))
        with self.changed:
            self.ws_conn = conn
            self.changed.notify_all()
        try:
            for raw in conn:
                msg = json.loads(raw)
                if "envelope_id" in msg:
                    with self.changed:
                        self.acks[msg["envelope_id"]] = msg
                        self.changed.notify_all()
        except Exception:
            pass
        finally:
            with self.changed:
                if self.ws_conn is conn:
                    self.ws_conn = None

    def api(self, method: str, params: dict[str, Any], token: str | None) -> tuple[int, dict, dict]:
        with self.changed:
            failures = self.failures.get(method)
            if failures and failures[0][0] is None:       # fail_after: this call goes through
                failures.pop(0)
                failures = None
            if failures:
                status, retry_after = failures.pop(0)
                self.calls.append(Call(method, params, time.time(), status))
                self.changed.notify_all()
                return status, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
            call = Call(method, params, time.time())
            self.calls.append(call)
            self.changed.notify_all()
        if method in self.delays:
            time.sleep(self.delays[method])
        call.done = time.time()
        want = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != want:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        handler = getattr(self, "m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        with self.changed:
            out = handler(params)
            self.changed.notify_all()
        return 200, out, {}

    def m_auth_test(self, p):
        return {"ok": True, "url": "https://emulated.slack.com/", "team": "Emulated", "user": "whodid",
                "team_id": "T1", "user_id": "UBOT", "bot_id": "B1"}

    def m_apps_connections_open(self, p):
        return {"ok": True, "url": f"ws://127.0.0.1:{self.ws.socket.getsockname()[1]}/link"}

    def m_chat_postMessage(self, p):
        channel = p.get("channel")
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        blocks = p.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        problem = _check_blocks(blocks)
        if problem:
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        self.messages.append(Message(channel, ts, p.get("text") or "", blocks, p.get("thread_ts")))
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": p.get("text"), "ts": ts}}

    def m_files_getUploadURLExternal(self, p):
        fid = f"F{next(self._ids)}"
        self.uploads[fid] = {"filename": p.get("filename"), "length": int(p.get("length", 0)), "data": None,
                             "alt_txt": p.get("alt_txt")}
        return {"ok": True, "upload_url": f"{self.base}/upload/{fid}", "file_id": fid}

    def m_files_completeUploadExternal(self, p):
        files = p.get("files")
        files = json.loads(files) if isinstance(files, str) else files
        out = []
        for f in files:
            up = self.uploads.get(f["id"])
            if up is None or up["data"] is None:
                return {"ok": False, "error": "file_not_found"}
            up.update(title=f.get("title"), channel=p.get("channel_id"), thread_ts=p.get("thread_ts"))
            out.append({"id": f["id"], "title": f.get("title"), "name": up["filename"]})
        if p.get("channel_id"):
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            self.messages.append(Message(p["channel_id"], ts, p.get("initial_comment") or "", None,
                                         p.get("thread_ts"), files=out))
        return {"ok": True, "files": out}

    def m_conversations_list(self, p):
        """Pages of `limit` (Slack's default 100), with a next_cursor as Slack gives it."""
        ids = sorted(self.channels)
        start = int(p.get("cursor") or 0)
        limit = min(int(p.get("limit") or 100), self.page_size)
        page = ids[start:start + limit]
        more = start + limit < len(ids)
        return {"ok": True, "channels": [{"id": c, "name": self.channels[c], "is_channel": True} for c in page],
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def m_usergroups_list(self, p):
        return {"ok": True, "usergroups": [{"id": gid, "handle": g["handle"]} for gid, g in self.usergroups.items()]}

    def m_usergroups_users_list(self, p):
        g = self.usergroups.get(p.get("usergroup"))
        if g is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(g["users"])}


def _check_blocks(blocks) -> str | None:
    """Slack's own limits, so a message that Slack would refuse is refused here too."""
    if not blocks:
        return None
    if len(blocks) > 50:
        return f"{len(blocks)} blocks; at most 50"
    for b in blocks:
        text = (b.get("text") or {}).get("text", "")
        if b.get("type") == "section" and len(text) > 3000:
            return f"a section of {len(text)} characters; at most 3000"
        for f in b.get("fields") or []:
            if len(f.get("text", "")) > 2000:
                return "a field over 2000 characters"
        for e in b.get("elements") or []:
            if e.get("type") == "button" and len(e.get("value", "")) > 2000:
                return "a button value over 2000 characters"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        emu: SlackEmulator = self.server.emu
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        if path.startswith("/upload/"):
            fid = path.rsplit("/", 1)[1]
            with emu.changed:
                if fid in emu.uploads:
                    emu.uploads[fid]["data"] = body
                emu.changed.notify_all()
            return self._send(200 if fid in emu.uploads else 404, f"OK - {len(body)}".encode(), "text/plain", {})
        if path.startswith("/respond/"):
            with emu.changed:
                # Slack takes a response_url up to five times (within 30 minutes), then refuses it
                emu.response_uses[path] = uses = emu.response_uses.get(path, 0) + 1
                if uses > RESPONSE_URL_USES:
                    emu.refused_responses.append(json.loads(body or b"{}"))
                    emu.changed.notify_all()
                    return self._send(404, b"used_url", "text/plain", {})
                emu.responses.append(json.loads(body or b"{}"))
                emu.changed.notify_all()
            return self._send(200, b"ok", "text/plain", {})
        if not path.startswith("/api/"):
            return self._send(404, b"{}", "application/json", {})
        params: dict[str, Any] = dict(urllib.parse.parse_qsl(query))
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype and body:
            params.update(json.loads(body))
        elif body:
            params.update(urllib.parse.parse_qsl(body.decode()))
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.get("token")
        status, out, headers = emu.api(path[5:], params, token)
        if status == 0:                      # fail(method, status=0): the connection drops, no answer
            self.close_connection = True
            return
        self._send(status, json.dumps(out).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
