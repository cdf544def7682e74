"""The trace pages: `whodid serve`'s small HTTP server behind the "Open full trace" links.

    GET /trace?t=TOKEN[&scope=0-3][&expand=GROUP,...]

The page shows the question its link carries in the query language's canonical form
(bot/query.py's format; docs/query.md) and has no search box: a link opens one trace, nothing else.
The token (bot/web/links.py) says which trace; without a valid, unexpired one the answer is 403
and no trace data. The page is tracer/render/html.py's, sent with a Content-Security-Policy
that allows only its own inline script and style (by nonce) and requests back to this server
(for expanding a group in place), no referrer (the link is the credential), and no caching.
Served by whodid.guarded_http: header, idle and write deadlines, no request bodies, at most
MAX_CONNECTIONS at once, and a stop that no client can hold up.
"""

from __future__ import annotations

import html
import secrets
import time
from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

from whodid import config as config_mod
from whodid import logs
from whodid.guarded_http import Deadlines, GuardedHandler, GuardedServer, Refused
from whodid.tracer import Store, Target
from whodid.tracer.render.text import printable

from ..slack.ask import Ask, canonical
from ..slack.buttons import store_key
from .links import LinkError, check, link_key, make
from ..tracing import tracer_for

MAX_EXPAND = 50
MAX_CONNECTIONS = 64
# pages are GETs with no body; a page is drawn in a few seconds; a browser keeps a connection
# open for expanding groups, so idle connections last a little
DEADLINES = Deadlines(header=10, body=10, idle=15, write=30, grace=2)


class TracePages:
    def __init__(self, cfg: config_mod.Config, store_path: str, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.store_path = store_path
        self.key = link_key(store_key(store_path))
        self.ttl = config_mod.parse_duration(cfg.web.link_ttl)
        self.log = logs.get("web", log)
        self._server: GuardedServer | None = None

    # --- links ---------------------------------------------------------------------------

    def link(self, ask: Ask, index: int = 0, scope: int = 0, now: float | None = None,
             target: Target | None = None) -> str:
        """A signed link to this match's page, valid for web.link_ttl. The link pins the match:
        target, or else the index-th match of the question as it stands now."""
        now = time.time() if now is None else now
        if target is None:
            target = self._current(ask, index)
        base = self.cfg.web.base_url.rstrip("/") or (self.url if self._server else self.cfg.web.url())
        return f"{base}/trace?t={make(ask, index, scope, now + self.ttl, self.key, target)}"

    def _current(self, ask: Ask, index: int) -> Target:
        store = Store.open(self.store_path)
        try:
            tracer = tracer_for(self.cfg, store)
            traces = tracer.find(ask.query(limit=index + 1))
        finally:
            store.close()
        if index >= len(traces):
            raise LinkError(f"there is no match {index + 1} to link to")
        return traces[index].target

    # --- serving -------------------------------------------------------------------------

    def start(self, listen: str | None = None, deadlines: Deadlines | None = None,
              max_connections: int = MAX_CONNECTIONS) -> str:
        host, port = config_mod.CollectorConfig(listen=listen or self.cfg.web.listen).address()
        pages = self

        class Handler(_Handler):
            site = pages

        self._server = GuardedServer((host, port), Handler, deadlines=deadlines or DEADLINES,
                                     max_connections=max_connections, name="whodid-web").start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def begin_stop(self) -> None:
        """Stop accepting now; stop() then waits at most the rest of the grace."""
        if self._server is not None:
            self._server.begin_stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def page(self, target: str, now: float | None = None) -> tuple[int, str, str]:
        """(status, body, nonce) for GET target."""
        now = time.time() if now is None else now
        url = urlsplit(target)
        nonce = secrets.token_urlsafe(16)
        if url.path != "/trace":
            return 404, _message("Nothing here", "whodid serves trace pages only through the links it gives: "
                                 "Open full trace in Slack, or whodid trace --link."), nonce
        params = parse_qs(url.query)
        token = (params.get("t") or [""])[0]
        try:
            link = check(token, self.key, now)
        except LinkError as exc:
            return 403, _message("This link cannot be used", str(exc)), nonce
        try:
            scope = int((params.get("scope") or [link.scope])[0])
            if not 0 <= scope <= 3:
                raise ValueError
        except ValueError:
            return 400, _message("Bad request", "scope is 0 to 3"), nonce
        expand = frozenset(g for g in (params.get("expand") or [""])[0].split(",") if g.startswith("group:"))
        if len(expand) > MAX_EXPAND:
            return 400, _message("Bad request", f"at most {MAX_EXPAND} groups at once"), nonce
        store = Store.open(self.store_path)
        try:
            tracer = tracer_for(self.cfg, store)
            if link.pin is None:
                return 403, _message("This link cannot be used", "it names no process; ask again in Slack (or "
                                     "run whodid trace --link)"), nonce
            tr = tracer.pinned(link.pin, scope=scope)         # the process the link was made for, only
            if tr is None:
                return 404, _message("No longer in the store", "this trace's events are gone (retention?); ask "
                                     "again, or pin an incident's traces with whodid trace --keep-for"), nonce
            from whodid.tracer.render.html import gather_details, render_html
            details = gather_details(store, tr)
        finally:
            store.close()
        base = f"/trace?t={token}"
        actions = {"expand": f"{base}&scope={scope}&expand={{groups}}"}
        if scope < 3:
            actions["widen"] = f"{base}&scope={scope + 1}" + (f"&expand={quote(','.join(sorted(expand)))}"
                                                            if expand else "")
        page = render_html(tr, now, details, expand=expand, actions=actions, nonce=nonce)
        return 200, with_question(page, canonical(link.ask)), nonce


def with_question(page: str, question: str) -> str:
    """The page with the question its link carries, in the query language's canonical form
    (docs/query.md), at the end of its header: what was asked, to ask it again. Shown, not
    editable - the link is a credential for this one trace, not a search box."""
    shown = (f'<p id="question">Asked: <code>{html.escape(question)}</code> - ask again with '
             f'<code>whodid trace {html.escape(question)}</code> or <code>/whodid {html.escape(question)}</code></p>\n')
    return page.replace("</header>", shown + "</header>", 1)


class _Handler(GuardedHandler):
    site: TracePages
    server_version = "whodid"
    sys_version = ""
    # GuardedHandler logs nothing: the site logs what matters, without tokens

    def do_GET(self) -> None:
        if self.headers.get("Transfer-Encoding") is not None or (self.headers.get("Content-Length") or "0") != "0":
            raise Refused(400, "a GET for a trace page has no body")
        try:
            status, body, nonce = self.site.page(self.path)
        except Exception as exc:                     # a store that cannot be opened, a bug: say so
            self.site.log.error(f"trace page failed: {exc!r}")
            status, body, nonce = 500, _message("whodid could not draw this trace", str(exc)), ""
        what = printable(self.path.split("?", 1)[0])     # the client's words, before any link is checked
        self.site.log(f"{self.client_address[0]} GET {what} -> {status}", client=self.client_address[0],
                      status=status)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy",
                         f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                         "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                         "frame-ancestors 'none'")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)


def _message(title: str, text: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>whodid: {html.escape(title)}</title></head>"
            f"<body><h1 id=refused>{html.escape(title)}</h1><p id=reason>{html.escape(text)}</p></body></html>")
