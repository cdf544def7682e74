"""The Slack app, on Bolt: `/whodid`, its buttons, and answers posted in threads.

Every question is acknowledged at once (Bolt answers Slack as soon as `ack` is called and
runs the rest on a worker thread), then answered in the channel: a summary with buttons,
and in its thread the trace picture and the chain as text. Buttons carry signed state
(bot/buttons.py) and are authorised again on every click. Everything asked is logged.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from whodid import config as config_mod
from whodid.tracer import Query, Store, Tracer

from whodid.tracer.changes import review

from . import blocks
from . import changes as changes_mod
from .ask import AskError, parse
from .buttons import StateError, View, decode, encode, store_key

RENDER = threading.Lock()          # matplotlib's Agg is not safe for concurrent drawing
GROUP_CACHE = 300.0                # seconds a user group's members are remembered


class SlackSetupError(Exception):
    """Slack cannot be used as configured: which token is missing, and where to get it."""


def check_tokens(s: config_mod.SlackConfig) -> dict[str, str]:
    got = {name: s.secret(name) for name in ("bot_token", "app_token", "signing_secret")}
    if not got["bot_token"]:
        raise SlackSetupError("no Slack bot token: set $SLACK_BOT_TOKEN (or slack.bot_token) to the app's "
                              "Bot User OAuth Token (xoxb-...), from api.slack.com/apps -> your app -> OAuth & "
                              "Permissions; or set slack.mode: off")
    if s.mode == "socket" and not got["app_token"]:
        raise SlackSetupError("Socket Mode needs an app-level token: set $SLACK_APP_TOKEN (or slack.app_token) to an "
                              "xapp-... token from api.slack.com/apps -> your app -> Basic Information -> App-Level "
                              "Tokens (scope connections:write); or use slack.mode: http")
    if s.mode == "http" and not got["signing_secret"]:
        raise SlackSetupError("HTTP mode needs the signing secret: set $SLACK_SIGNING_SECRET (or slack.signing_secret) "
                              "from api.slack.com/apps -> your app -> Basic Information -> App Credentials")
    return got


class Bot:
    def __init__(self, cfg: config_mod.Config, store_path: str, log: Callable[[str], None] | None = None):
        self.cfg, self.s = cfg, cfg.slack
        self.store_path = store_path
        self.log = log or (lambda msg: print(f"whodid bot: {msg}", file=sys.stderr, flush=True))
        self.tokens = check_tokens(self.s)
        self.client = WebClient(token=self.tokens["bot_token"], base_url=self.s.api_base_url, timeout=30)
        # Slack's 429s carry Retry-After; the SDK's handler waits that long and tries again
        self.client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))
        try:
            me = self.client.auth_test()
        except SlackApiError as exc:
            raise SlackSetupError(f"Slack refused the bot token ({exc.response.get('error')}): check $SLACK_BOT_TOKEN "
                                  "or slack.bot_token") from None
        except (SlackClientError, OSError) as exc:
            raise SlackSetupError(f"cannot reach Slack at {self.s.api_base_url} ({exc})") from None
        self.identity = f"{me.get('user')} in {me.get('team')}"
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="whodid-slack")
        self.app = App(client=self.client, signing_secret=self.tokens["signing_secret"] or None,
                       request_verification_enabled=self.s.mode == "http", token_verification_enabled=False,
                       process_before_response=False, listener_executor=self.executor)
        self.app.command(self.s.command)(self.on_command)
        for name in blocks.ACTIONS:
            self.app.action(f"whodid.{name}")(self.on_action)
        # a link button: Slack opens the page itself and tells us about the click, which needs an ack
        self.app.action(f"whodid.{blocks.OPEN}")(lambda ack: ack())
        self.key = store_key(store_path)
        self.pages = None                  # web.TracePages links, when serve runs them
        self._groups: dict[str, tuple[float, set[str]]] = {}
        self._group_ids: dict[str, str] = {}
        self._server = None

    # --- running -------------------------------------------------------------------------

    def start(self) -> str:
        """Connect (Socket Mode) or listen (HTTP mode). Returns where, for the log."""
        if self.s.mode == "socket":
            from slack_bolt.adapter.socket_mode import SocketModeHandler
            self._server = SocketModeHandler(self.app, self.tokens["app_token"],
                                             web_client=WebClient(base_url=self.s.api_base_url))
            self._server.connect()
            return f"Slack bot {self.identity} connected in Socket Mode"
        from .slack_http import SlackHTTPServer
        host, port = config_mod.CollectorConfig(listen=self.s.listen).address()
        self._server = SlackHTTPServer(self.app, host, port, self.s.path).start()
        return f"Slack bot {self.identity} listening on {self._server.url}"

    def stop(self) -> None:
        """Stop taking questions; finish the answers being worked on."""
        if self._server is not None:
            self._server.close()
        self.executor.shutdown(wait=True)

    # --- listeners -----------------------------------------------------------------------

    def on_command(self, ack, command: dict[str, Any], respond) -> None:
        now = time.time()
        text = (command.get("text") or "").strip()
        who = (command.get("user_id"), command.get("user_name"), command.get("channel_id"), command.get("channel_name"))
        if changes_mod.is_changes(text):
            self.on_changes(ack, text, who, respond, now)
            return
        try:
            ask = parse(text, now, self.s.default_since)
        except AskError as exc:
            return self.bad_question(ack, who, "command", text, now, exc)
        if ask is None:
            t, b = blocks.help_message(self.s.default_since)
            ack(text=t, blocks=b)
            return
        if self.refused(ack, who, "command", text, now):
            return
        ack(text=f"Tracing `{ask.pattern}` over {ask.window()}...")
        outcome = self.answer(View(ask), who[2], None, respond)
        self.record(now, *who, "command", text, outcome)

    def on_changes(self, ack, text: str, who: tuple, respond, now: float) -> None:
        """/whodid changes [since:] [until:] [host:] [user:]"""
        try:
            ask = changes_mod.parse(text, now, self.cfg.changes.since)
        except AskError as exc:
            return self.bad_question(ack, who, "changes", text, now, exc)
        if self.refused(ack, who, "changes", text, now):
            return
        ack(text=f"Reviewing changes from {ask.window()}...")
        with self.tracer() as tracer:
            result = review(tracer, self.cfg.changes, ask.since, ask.until, host=ask.host, user=ask.user)
        self.post_pages(changes_mod.render_blocks(result, self.value), who[2], respond)
        self.record(now, *who, "changes", text, f"answered: {result.headline()}")

    def bad_question(self, ack, who: tuple, action: str, text: str, now: float, exc: AskError) -> None:
        ack(text=f"whodid: {exc}. `{self.s.command} help` shows the syntax.")
        self.record(now, *who, action, text, f"bad question: {exc}")

    def refused(self, ack, who: tuple, action: str, text: str, now: float) -> bool:
        """Whether the asker may not ask here; if so they are told why, and it is logged."""
        ok, why = self.allowed(who[0], who[2], who[3])
        if not ok:
            ack(text=blocks.refusal(why))
            self.record(now, *who, action, text, f"refused: {why}")
        return not ok

    def post_pages(self, pages: list[tuple[str, list[dict]]], channel: str, respond=None) -> str | None:
        """The first page in the channel, the rest in its thread. Returns the first's ts."""
        first = None
        for text, bl in pages:
            ts = self.post(channel, text, bl, first, respond)
            if first is None:
                if ts is None:
                    return None
                first = ts
        return first

    def on_action(self, ack, body: dict[str, Any], action: dict[str, Any], respond) -> None:
        ack()
        now = time.time()
        user, channel = body.get("user") or {}, body.get("channel") or {}
        who = (user.get("id"), user.get("username") or user.get("name"), channel.get("id"), channel.get("name"))
        kind = str(action.get("action_id", "")).removeprefix("whodid.")
        try:
            view = decode(str(action.get("value", "")), self.key)
        except StateError as exc:
            respond(text=blocks.refusal(f"that button cannot be used: {exc}"), replace_original=False,
                    response_type="ephemeral")
            self.record(now, *who, kind, None, f"refused: {exc}")
            return
        ok, why = self.allowed(who[0], who[2], who[3])
        if not ok:
            respond(text=blocks.refusal(why), replace_original=False, response_type="ephemeral")
            self.record(now, *who, kind, view.ask.pattern, f"refused: {why}")
            return
        message = body.get("message") or {}
        thread = message.get("thread_ts") or message.get("ts")
        if kind == "wider":
            outcome = self.answer(View(view.ask.wider(now)), who[2], None, respond)
        else:
            outcome = self.follow_up(kind, view, who[2], thread, respond)
        self.record(now, *who, kind, view.ask.pattern, outcome)

    # --- answers -------------------------------------------------------------------------

    def answer(self, view: View, channel: str, thread: str | None, respond) -> str:
        """Trace and post: the summary in the channel (or thread), the picture and the chain under it."""
        now = time.time()
        traces = self.find(view)
        if not traces:
            wider = None if view.ask.since <= now - 89 * 86400 else self.value(View(view.ask.wider(now)))
            text, bl = blocks.no_match(view.ask, wider)
            self.post(channel, text, bl, thread, respond)
            return "no match"
        index = min(view.index, len(traces) - 1)
        view = View(view.ask, index, view.scope)
        tr = traces[index]
        text, bl = blocks.summary(tr, view, len(traces), now, self.value, self.link)
        ts = self.post(channel, text, bl, thread, respond)
        if ts:
            self.picture(tr, view, len(traces), channel, thread or ts, respond, with_buttons=False)
        return f"answered: {len(traces)} matches, showed {index + 1}: {tr.summary}"

    def follow_up(self, kind: str, view: View, channel: str, thread: str | None, respond) -> str:
        now = time.time()
        if kind == "show":
            return self.answer(view, channel, thread, respond)
        traces = self.find(view, started=kind == "started")
        if view.index >= len(traces):
            self.post(channel, f"Match {view.index + 1} is no longer in the store (retention?); ask again.", None,
                      thread, respond)
            return "match gone"
        tr = traces[view.index]
        if kind in ("widen", "started"):
            self.picture(tr, view, len(traces), channel, thread, respond, with_buttons=kind == "widen")
            return f"{kind}: scope {view.scope}, {tr.graph.number_of_nodes()} processes"
        if kind == "earlier":
            with self.tracer() as tracer:
                steps = tracer.earlier(tr)
            text, bl = blocks.earlier(tr, steps, now)
            self.post(channel, text, bl, thread, respond)
            return f"earlier: {len(steps)} commands"
        if kind == "others":
            text, bl = blocks.others(traces, view, now, self.value)
            self.post(channel, text, bl, thread, respond)
            return f"others: {len(traces)} matches"
        return f"unknown action {kind}"

    def picture(self, tr, view: View, total: int, channel: str, thread: str | None, respond,
                with_buttons: bool) -> None:
        """The trace image, uploaded into the thread, then the chain as text."""
        from whodid.tracer.render.image import render_png
        now = time.time()
        with RENDER:
            png = render_png(tr, now)
        try:
            self.client.files_upload_v2(channel=channel, thread_ts=thread, content=png,
                                        filename=f"whodid-{tr.poi.host}-{tr.poi.pid}.png",
                                        title=blocks.headline(tr, now)[:250], alt_txt=f"How: {tr.summary}"[:1000])
        except (SlackApiError, SlackClientError) as exc:
            self.log(f"could not upload the trace picture: {_why(exc)}")
            self.post(channel, f"(The picture could not be uploaded: {_why(exc)}. Missing the files:write scope?)",
                      None, thread, respond)
        text, bl = blocks.chain(tr, view, total, now, self.value if with_buttons else None, self.link)
        self.post(channel, text, bl, thread, respond)

    def post(self, channel: str, text: str, bl: list[dict] | None, thread: str | None, respond) -> str | None:
        """chat.postMessage; where the bot may not post, the asker alone gets the answer (and why)."""
        try:
            resp = self.client.chat_postMessage(channel=channel, text=text[:blocks.MAX_TEXT], blocks=bl,
                                                thread_ts=thread, unfurl_links=False, unfurl_media=False)
            return resp["ts"]
        except SlackApiError as exc:
            error = exc.response.get("error")
            self.log(f"chat.postMessage to {channel} failed: {error}")
            hint = (" Invite me to this channel (`/invite @whodid`) to get the picture and the buttons."
                    if error in ("not_in_channel", "channel_not_found") else "")
            if respond is not None:
                respond(text=f"{text}\n_(whodid could not post here: {error}.{hint})_", blocks=None,
                        response_type="ephemeral", replace_original=False)
            return None

    # --- helpers -------------------------------------------------------------------------

    def find(self, view: View, started: bool = False):
        a = view.ask
        with self.tracer() as tracer:
            return tracer.find(Query(pattern=a.pattern, host=a.host, user=a.user, since=a.since, until=a.until,
                                     scope=view.scope, limit=max(self.s.matches, view.index + 1), started=started))

    def tracer(self):
        return _TracerSession(self)

    def value(self, view: View) -> str:
        return encode(view, self.key)

    def link(self, view: View) -> str | None:
        """The signed trace page URL for this view, when whodid serve runs the pages."""
        return self.pages.link(view.ask, view.index, view.scope) if self.pages is not None else None

    def allowed(self, user: str | None, channel_id: str | None, channel_name: str | None) -> tuple[bool, str]:
        s = self.s
        if not (s.allowed_channels or s.allowed_usergroups or s.allowed_users):
            return False, ("nobody may ask whodid yet: its admin has to name the channels, user groups or users "
                           "allowed (slack.allowed_channels, allowed_usergroups, allowed_users in whodid's config)")
        if user and user in s.allowed_users:
            return True, ""
        names = {channel_id, channel_name, f"#{channel_name}"} - {None, "#None"}
        if names & set(s.allowed_channels):
            return True, ""
        for group in s.allowed_usergroups:
            if user and user in self._members(group):
                return True, ""
        where = ", ".join(f"<#{c}>" if c[:1] in "CG" and c.isupper() else c for c in s.allowed_channels)
        return False, ("you may not ask whodid here." + (f" Ask in {where}," if where else "")
                       + " or ask whodid's admin to add you (slack.allowed_users or allowed_usergroups).")

    def _members(self, group: str) -> set[str]:
        hit = self._groups.get(group)
        if hit and time.monotonic() - hit[0] < GROUP_CACHE:
            return hit[1]
        members: set[str] = set()
        try:
            gid = group if group[:1] == "S" and group.isupper() else self._group_id(group)
            if gid:
                members = set(self.client.usergroups_users_list(usergroup=gid).get("users") or [])
        except SlackApiError as exc:
            self.log(f"cannot read user group {group}: {exc.response.get('error')} (the app needs usergroups:read)")
        self._groups[group] = (time.monotonic(), members)
        return members

    def _group_id(self, handle: str) -> str | None:
        if handle not in self._group_ids:
            groups = self.client.usergroups_list().get("usergroups") or []
            self._group_ids.update({g.get("handle"): g.get("id") for g in groups})
        return self._group_ids.get(handle.lstrip("@"))

    def record(self, at: float, user_id, user_name, channel_id, channel_name, action: str, text, outcome: str) -> None:
        """Every question is logged: here, and in the store's `queries` table."""
        self.log(f"{user_name or user_id} in #{channel_name or channel_id}: {action} {text or ''!s} -> {outcome}")
        try:
            store = Store.open(self.store_path, create=True)
            try:
                store.log_query(at, user_id, user_name, channel_id, channel_name, action, text, outcome)
            finally:
                store.close()
        except Exception as exc:               # the answer went out; say the log entry did not
            self.log(f"could not record the question in the store: {exc}")


class _TracerSession:
    """A store connection and a tracer for one answer, closed afterwards."""

    def __init__(self, bot: Bot):
        self.bot = bot

    def __enter__(self) -> Tracer:
        self.store = Store.open(self.bot.store_path, create=True)
        return Tracer(self.store, self.bot.cfg.identity.identity(), self.bot.cfg.trace_settings())

    def __exit__(self, *exc) -> None:
        self.store.close()


def _why(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error"))
    return str(exc)
