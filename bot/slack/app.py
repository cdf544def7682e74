"""The Slack app, on Bolt: `/whodid`, its buttons, and answers posted in threads.

Every question is acknowledged at once (Bolt answers Slack as soon as `ack` is called and
runs the rest on a worker thread), then answered in the channel: a summary with buttons,
and in its thread the trace picture and the chain as text. Buttons carry signed state
(bot/slack/buttons.py) and are authorised again on every click. Everything asked is logged.

Rules of access:
- No Web API call happens before the ack: Slack gives up after 3 s. The allowed user groups'
  members are read at start and remembered for GROUP_CACHE seconds; when a question needs
  them read again (usergroups.users.list), it is acked first, and the refusal or the
  "Tracing..." that the ack would have carried comes as an ephemeral response.
- Channels are allowed by ID. Names in slack.allowed_channels are resolved to IDs once, at
  start (conversations.list), so a channel renamed to an allowed name is not allowed.
- Someone allowed as a person (a user group, allowed_users) but asking outside the allowed
  channels gets the answer privately (ephemeral): the others in that channel are not allowed
  to see it.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from slack_bolt import App
from slack_bolt.error import BoltError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from whodid import config as config_mod
from whodid import logs
from whodid.tracer import Store, Tracer

from whodid.tracer.changes import review
from whodid.tracer.render.confidence import confidence
from whodid.tracer.render.text import printable

from . import blocks
from .. import changes as changes_mod
from .ask import AskError, parse
from .buttons import StateError, View, decode, encode, store_key

from dataclasses import dataclass
from ..drawing import Painter
from ..tracing import tracer_for

ANSWERING = 32                     # questions answered at once (see Bot.__init__)
GROUP_CACHE = 300.0                # seconds a user group's members are remembered
MAX_RETRY_AFTER = 120.0            # the longest a 429's Retry-After is waited, per try
PRIVATE_MESSAGES = 4               # Slack takes a response_url five times; one may carry the ack's words


@dataclass(frozen=True)
class Access:
    ok: bool
    why: str = ""                  # why not, for the asker
    private: bool = False          # allowed as a person outside the allowed channels: answer ephemerally


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
        self.log = logs.get("bot", log)
        self.tokens = check_tokens(self.s)
        self.client = WebClient(token=self.tokens["bot_token"], base_url=self.s.api_base_url, timeout=30)
        # Slack's 429s carry Retry-After: wait that long and try again - unless the bot is stopping
        self.stopping = threading.Event()
        self.client.retry_handlers.append(_RateLimitWait(self.stopping, max_retry_count=5))
        try:
            me = self.client.auth_test()
        except SlackApiError as exc:
            raise SlackSetupError(f"Slack refused the bot token ({exc.response.get('error')}): check $SLACK_BOT_TOKEN "
                                  "or slack.bot_token") from None
        except (SlackClientError, OSError) as exc:
            raise SlackSetupError(f"cannot reach Slack at {self.s.api_base_url} ({exc})") from None
        self.identity = f"{me.get('user')} in {me.get('team')}"
        # Bolt runs each listener - which acks first - on this pool: a question that finds every
        # worker busy answering is not even acked, and Slack gives up on it after 3 s. So more
        # workers than people asking at once in an incident (they mostly wait: on Slack, on
        # the drawing process); threads are made only as needed.
        self.executor = ThreadPoolExecutor(max_workers=ANSWERING, thread_name_prefix="whodid-slack")
        try:
            # token_verification_enabled: Bolt asks auth.test now, at start; without it, its
            # authorization middleware asks on the first request - before the listener's ack
            self.app = App(client=self.client, signing_secret=self.tokens["signing_secret"] or None,
                           request_verification_enabled=self.s.mode == "http", token_verification_enabled=True,
                           process_before_response=False, listener_executor=self.executor)
        except (BoltError, SlackClientError, OSError) as exc:
            self.executor.shutdown(wait=False)
            raise SlackSetupError(f"Slack did not confirm the bot token at start ({exc}); try again") from None
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
        # pictures are drawn in a process of their own (bot/drawing.py), started with the bot
        self.painter = Painter()
        self.channel_ids = self._resolve_channels()
        self._warm_groups()

    # --- running -------------------------------------------------------------------------

    def start(self) -> str:
        """Connect (Socket Mode) or listen (HTTP mode). Returns where, for the log."""
        self.painter.start()
        if self.s.mode == "socket":
            from slack_bolt.adapter.socket_mode import SocketModeHandler
            self._server = SocketModeHandler(self.app, self.tokens["app_token"],
                                             web_client=WebClient(base_url=self.s.api_base_url))
            self._server.connect()
            return f"Slack bot {self.identity} connected in Socket Mode"
        from .http_mode import SlackHTTPServer
        host, port = config_mod.CollectorConfig(listen=self.s.listen).address()
        self._server = SlackHTTPServer(self.app, host, port, self.s.path).start()
        return f"Slack bot {self.identity} listening on {self._server.url}"

    def stop(self) -> None:
        """Stop taking questions; finish the answers being worked on (without waiting out a 429)."""
        self.stopping.set()
        if self._server is not None:
            self._server.close()
        self.executor.shutdown(wait=True)
        self.painter.close()

    def health(self) -> str | None:
        """For /healthz: None when the bot can hear Slack (Socket Mode connected, HTTP mode serving)."""
        if self._server is None:
            return "not started"
        if self.s.mode == "socket":
            link = self._server.client                # the Socket Mode client (not a Web API call)
            return None if link.is_connected() else "Socket Mode is not connected to Slack"
        from ..health import probe
        return probe(self._server.url)

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
        access, ack = self.access_after_ack(ack, respond, who)
        if self.refused(ack, access, who, "command", text, now):
            return
        ack(text=f"Tracing {blocks.code(ask.subject)} over {blocks.escape(ask.window())}...")
        outcome = self.answer(View(ask), who[2], None, respond, access.private)
        self.record(now, *who, "command", text, outcome)

    def on_changes(self, ack, text: str, who: tuple, respond, now: float) -> None:
        """/whodid changes [since:] [until:] [host:] [user:]"""
        try:
            ask = changes_mod.parse(text, now, self.cfg.changes.since)
        except AskError as exc:
            return self.bad_question(ack, who, "changes", text, now, exc)
        access, ack = self.access_after_ack(ack, respond, who)
        if self.refused(ack, access, who, "changes", text, now):
            return
        ack(text=f"Reviewing changes from {blocks.escape(ask.window())}...")
        with self.tracer() as tracer:
            result = review(tracer, self.cfg.changes, ask.since, ask.until, host=ask.host, user=ask.user)
        pages = changes_mod.render_blocks(result, self.value, max_messages=PRIVATE_MESSAGES if access.private
                                          else changes_mod.MAX_MESSAGES)
        self.post_pages(pages, who[2], respond, access.private)
        self.record(now, *who, "changes", text, f"answered: {result.headline()}")

    def bad_question(self, ack, who: tuple, action: str, text: str, now: float, exc: AskError) -> None:
        ack(text=f"whodid: {blocks.escape(str(exc))}. `{self.s.command} help` shows the syntax.")
        self.record(now, *who, action, text, f"bad question: {exc}")

    def access_after_ack(self, ack, respond, who: tuple):
        """(Access, ack): decided without Slack when the user or the channel settles it; else acked
        at once - the user-group lookup is a Web API call, and Slack waits 3 s for the ack -
        and what would have gone in the ack goes to the asker as an ephemeral response."""
        access = self.access(who[0], who[2], lookup=False)
        if access is not None:
            return access, ack
        ack()
        return self.access(who[0], who[2]), _Late(respond)

    def refused(self, ack, access: Access, who: tuple, action: str, text: str, now: float) -> bool:
        """Whether the asker may not ask here; if so they are told why, and it is logged."""
        if not access.ok:
            ack(text=blocks.refusal(access.why))
            self.record(now, *who, action, text, f"refused: {access.why}")
        return not access.ok

    def post_pages(self, pages: list[tuple[str, list[dict]]], channel: str, respond=None,
                   private: bool = False) -> str | None:
        """The first page in the channel, the rest in its thread. Returns the first's ts."""
        first = None
        for text, bl in pages:
            ts = self.post(channel, text, bl, first, respond, private)
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
        access = self.access(who[0], who[2])
        if not access.ok:
            respond(text=blocks.refusal(access.why), replace_original=False, response_type="ephemeral")
            self.record(now, *who, kind, view.ask.pattern, f"refused: {access.why}")
            return
        message = body.get("message") or {}
        thread = message.get("thread_ts") or message.get("ts")
        if kind == "wider":
            # the value already carries the wider window (no_match made it): ask it, do not widen again
            outcome = self.answer(View(view.ask), who[2], None, respond, access.private)
        else:
            outcome = self.follow_up(kind, view, who[2], thread, respond, access.private)
        self.record(now, *who, kind, view.ask.pattern, outcome)

    # --- answers -------------------------------------------------------------------------

    def answer(self, view: View, channel: str, thread: str | None, respond, private: bool = False) -> str:
        """Trace and post: the summary in the channel (or thread), the picture and the chain under it.
        A pinned view shows its match whatever else matches now; a question shows its index-th match."""
        now = time.time()
        traces = self.find(View(view.ask, view.index))
        if view.pin is None and not traces:
            wider = None if view.ask.since <= now - 89 * 86400 else self.value(View(view.ask.wider(now)))
            text, bl = blocks.no_match(view.ask, wider, traces)
            self.post(channel, text, bl, thread, respond, private)
            return "no match"
        tr, view, total = self.resolve(view, traces)
        if tr is None:
            return self.gone(view, channel, thread, respond, private)
        text, bl = blocks.summary(tr, view, total, now, self.value, self.link)
        if getattr(traces, "looked_at", None):          # a user: question that stopped looking
            said, block = blocks.stopped_looking(view.ask, traces)
            text, bl = f"{text} {said}", [*bl, block]     # one line: the text's newlines are escaped
        ts = self.post(channel, text, bl, thread, respond, private)
        if ts:
            self.picture(tr, view, total, channel, thread or ts, respond, with_buttons=False, private=private)
        return f"answered: {total} matches, showed {view.index + 1}: {tr.summary}"

    def follow_up(self, kind: str, view: View, channel: str, thread: str | None, respond,
                  private: bool = False) -> str:
        now = time.time()
        if kind == "show":
            return self.answer(view, channel, thread, respond, private)
        traces = self.find(View(view.ask, view.index))
        tr, view, total = self.resolve(view, traces, started=kind == "started")
        if tr is None:
            return self.gone(view, channel, thread, respond, private)
        if kind in ("widen", "started"):
            self.picture(tr, view, total, channel, thread, respond, with_buttons=kind == "widen", private=private)
            return f"{kind}: scope {view.scope}, {tr.graph.number_of_nodes()} processes"
        if kind == "earlier":
            if not tr.attributed.known:         # nobody's activity to list: blocks.earlier says so
                text, bl = blocks.earlier(tr, [], now)
                self.post(channel, text, bl, thread, respond, private)
                return "earlier: person unknown"
            with self.tracer() as tracer:
                steps = tracer.earlier(tr)
            text, bl = blocks.earlier(tr, steps, now)
            self.post(channel, text, bl, thread, respond, private)
            return f"earlier: {len(steps)} commands"
        if kind == "others":
            text, bl = blocks.others(traces, view, now, self.value)
            self.post(channel, text, bl, thread, respond, private)
            return f"others: {len(traces)} matches"
        return f"unknown action {kind}"

    def resolve(self, view: View, traces: list, started: bool = False):
        """(trace, view pinned to it, matches) for what a view shows: its pinned match (None when no
        longer stored), or - a question - its index-th match now, pinned from here on."""
        if view.pin is None:
            if view.index >= len(traces):
                return None, view, len(traces)
            view = View(view.ask, view.index, view.scope, traces[view.index].target)
        index = next((i for i, t in enumerate(traces) if t.target == view.pin), view.index)
        view = View(view.ask, index, view.scope, view.pin)
        with self.tracer() as tracer:
            tr = tracer.pinned(view.pin, scope=view.scope, started=started)
        return tr, view, max(len(traces), index + 1)

    def gone(self, view: View, channel: str, thread: str | None, respond, private: bool) -> str:
        self.post(channel, f"Match {view.index + 1} is no longer in the store (retention?); ask again.", None,
                  thread, respond, private)
        return "match gone"

    def picture(self, tr, view: View, total: int, channel: str, thread: str | None, respond,
                with_buttons: bool, private: bool = False) -> None:
        """The trace image, uploaded into the thread, then the chain as text. A private answer has
        no picture: Slack has no ephemeral files (its Open full trace link has the picture)."""
        now = time.time()
        png = None
        if not private:
            try:
                png = self.painter.draw(tr, now)
            except Exception as exc:             # a drawing bug must not cost the chain (or repost an alert)
                self.log.warning(f"could not draw the trace picture: {exc!r}")
                self.post(channel, "(The picture could not be drawn; the chain follows as text, and whodid's log "
                          "says why.)", None, thread, respond)
        if png is not None:
            try:
                # the name, title and alt text are recorded data too: escaped like a message
                self.client.files_upload_v2(channel=channel, thread_ts=thread, content=png,
                                            filename=f"whodid-{_file_safe(tr.poi.host)}-{tr.poi.pid}.png",
                                            title=blocks.escape(blocks.headline(tr, now))[:250],
                                            # the badge is drawn: a screen reader needs it said
                                            alt_txt=blocks.escape(f"How: {tr.summary} (confidence: "
                                                                  f"{confidence(tr)})")[:1000])
            except (SlackApiError, SlackClientError) as exc:
                self.log.warning(f"could not upload the trace picture: {_why(exc)}")
                self.post(channel, f"(The picture could not be uploaded: {_why(exc)}. Missing the files:write "
                          "scope?)", None, thread, respond)
        text, bl = blocks.chain(tr, view, total, now, self.value if with_buttons else None, self.link)
        self.post(channel, text, bl, thread, respond, private)

    def post(self, channel: str, text: str, bl: list[dict] | None, thread: str | None, respond,
             private: bool = False) -> str | None:
        """chat.postMessage; where the bot may not post, the asker alone gets the answer (and why).
        A private answer goes to the asker alone (ephemeral). `text` is plain: it is escaped here,
        the one place it leaves, so recorded data cannot mention @channel or forge a link."""
        text = blocks.escape(text)[:blocks.MAX_TEXT]
        if private:
            if respond is None:
                return None
            respond(text=text, blocks=bl, response_type="ephemeral", replace_original=False)
            return "ephemeral"
        try:
            resp = self.client.chat_postMessage(channel=channel, text=text, blocks=bl,
                                                thread_ts=thread, unfurl_links=False, unfurl_media=False)
            return resp["ts"]
        except SlackApiError as exc:
            error = exc.response.get("error")
            self.log.error(f"chat.postMessage to {channel} failed: {error}", channel=channel)
            hint = (" Invite me to this channel (`/invite @whodid`) to get the picture and the buttons."
                    if error in ("not_in_channel", "channel_not_found") else "")
            if respond is not None:
                respond(text=f"{text}\n_(whodid could not post here: {error}.{hint})_", blocks=None,
                        response_type="ephemeral", replace_original=False)
            return None
        except (SlackClientError, OSError) as exc:        # Slack unreachable mid-answer: say so, go on
            self.log.error(f"chat.postMessage to {channel} failed: {exc}", channel=channel)
            return None

    # --- helpers -------------------------------------------------------------------------

    def find(self, view: View):
        """The question's matches, newest first, at scope 0: for the count and "Other matches",
        with `more` saying whether older ones exist (a list exactly as long as the limit may be
        all there is). The tracer finds that out from one more row of the store; a `user:`
        search only by tracing one more match, which it does for each match it looks at anyway."""
        limit = max(self.s.matches, view.index + 1)
        with self.tracer() as tracer:
            if not view.ask.user:
                return tracer.find(view.ask.query(limit=limit))
            found = tracer.find(view.ask.query(limit=limit + 1))
        found.more = len(found) > limit
        del found[limit:]                       # in place: a slice would lose looked_at and looked_to
        return found

    def tracer(self):
        return _TracerSession(self)

    def value(self, view: View) -> str:
        return encode(view, self.key)

    def link(self, view: View) -> str | None:
        """The signed trace page URL for this view, when whodid serve runs the pages."""
        if self.pages is None or view.pin is None:
            return None
        return self.pages.link(view.ask, view.index, view.scope, target=view.pin)

    def access(self, user: str | None, channel_id: str | None, lookup: bool = True) -> Access | None:
        """May this user ask in this channel, and may the answer be seen there? With lookup=False,
        None when only asking Slack about user groups could tell (nothing cached)."""
        s = self.s
        if not (s.allowed_channels or s.allowed_usergroups or s.allowed_users):
            return Access(False, "nobody may ask whodid yet: its admin has to name the channels, user groups or "
                          "users allowed (slack.allowed_channels, allowed_usergroups, allowed_users in whodid's config)")
        if channel_id and channel_id in self.channel_ids:
            return Access(True)
        if user and user in s.allowed_users:
            return Access(True, private=True)
        for group in s.allowed_usergroups:
            members = self._members(group, lookup)
            if members is None:
                return None
            if user and user in members:
                return Access(True, private=True)
        where = ", ".join(f"<#{c}>" if _is_id(c) else c for c in s.allowed_channels)
        return Access(False, "you may not ask whodid here." + (f" Ask in {where}," if where else "")
                      + " or ask whodid's admin to add you (slack.allowed_users or allowed_usergroups).")

    def _resolve_channels(self) -> frozenset[str]:
        """slack.allowed_channels as channel IDs: IDs as given, names looked up once (conversations.list).
        A name that cannot be resolved allows nothing, and the log says so."""
        ids = {c for c in self.s.allowed_channels if _is_id(c)}
        names = {c.lstrip("#") for c in self.s.allowed_channels if not _is_id(c)}
        if not names:
            return frozenset(ids)
        found: dict[str, str] = {}
        cursor = None
        try:
            while True:
                resp = self.client.conversations_list(types="public_channel", exclude_archived=True, limit=1000,
                                                      cursor=cursor)
                found.update({c.get("name"): c.get("id") for c in resp.get("channels") or [] if c.get("name") in names})
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if not cursor or len(found) == len(names):
                    break
        except SlackApiError as exc:
            self.log.warning(f"cannot list channels to resolve slack.allowed_channels ({exc.response.get('error')}; "
                             f"the app needs channels:read): questions from {', '.join(sorted(names))} are refused; "
                             "give channel IDs (C0123...) instead")
        except (SlackClientError, OSError) as exc:        # Slack unreachable: refuse, never guess
            self.log.warning(f"cannot reach Slack to resolve slack.allowed_channels ({exc}): questions from "
                             f"{', '.join(sorted(names))} are refused until whodid serve is restarted; give "
                             "channel IDs (C0123...) to need no lookup")
            return frozenset(ids)
        for name in sorted(names - set(found)):
            self.log.warning(f"slack.allowed_channels: no public channel named #{name}; questions from it are "
                             "refused (give a private channel by its ID)")
        return frozenset(ids | set(found.values()))

    def _warm_groups(self) -> None:
        """Read the allowed user groups at start, so the first questions are decided without
        waiting for Slack (after GROUP_CACHE seconds they are read again, after the ack)."""
        for group in self.s.allowed_usergroups:
            self._members(group)

    def _members(self, group: str, lookup: bool = True) -> set[str] | None:
        hit = self._groups.get(group)
        if hit and time.monotonic() - hit[0] < GROUP_CACHE:
            return hit[1]
        if not lookup:
            return None
        members: set[str] = set()
        try:
            gid = group if group[:1] == "S" and group.isupper() else self._group_id(group)
            if gid:
                members = set(self.client.usergroups_users_list(usergroup=gid).get("users") or [])
        except SlackApiError as exc:
            self.log.warning(f"cannot read user group {group}: {exc.response.get('error')} (the app needs "
                             "usergroups:read)")
        except (SlackClientError, OSError) as exc:   # Slack unreachable: no one via this group, for now only
            self.log.warning(f"cannot read user group {group}: {exc}; its members are refused until Slack answers")
            return members
        self._groups[group] = (time.monotonic(), members)
        return members

    def _group_id(self, handle: str) -> str | None:
        if handle not in self._group_ids:
            groups = self.client.usergroups_list().get("usergroups") or []
            self._group_ids.update({g.get("handle"): g.get("id") for g in groups})
        return self._group_ids.get(handle.lstrip("@"))

    def record(self, at: float, user_id, user_name, channel_id, channel_name, action: str, text, outcome: str) -> None:
        """Every question is logged: here, and in the store's `queries` table."""
        self.log(printable(f"{user_name or user_id} in #{channel_name or channel_id}: {action} {text or ''!s} "
                           f"-> {outcome}"), user=user_id, channel=channel_id, action=action, outcome=outcome)
        try:
            store = Store.open(self.store_path, create=True)
            try:
                store.log_query(at, user_id, user_name, channel_id, channel_name, action, text, outcome)
            finally:
                store.close()
        except Exception as exc:               # the answer went out; say the log entry did not
            self.log.error(f"could not record the question in the store: {exc}")


class _TracerSession:
    """A store connection and a tracer for one answer, closed afterwards."""

    def __init__(self, bot: Bot):
        self.bot = bot

    def __enter__(self) -> Tracer:
        self.store = Store.open(self.bot.store_path, create=True)
        return tracer_for(self.bot.cfg, self.store)

    def __exit__(self, *exc) -> None:
        self.store.close()


class _RateLimitWait(RateLimitErrorRetryHandler):
    """The SDK's 429 handler, but its wait (Retry-After, at most MAX_RETRY_AFTER) ends when the
    bot stops, and then no retry is made: the call fails as rate limited, an answer gives up on
    Slack and a canary's message stays queued - `whodid serve` stops in seconds, not minutes."""

    def __init__(self, stopping: threading.Event, max_retry_count: int = 5):
        super().__init__(max_retry_count=max_retry_count)
        self.stopping = stopping

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        return not self.stopping.is_set() and super()._can_retry(state=state, request=request, response=response,
                                                                  error=error)

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
        if response is None:
            raise error
        value = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), None)
        try:
            wait = float(value[0] if isinstance(value, list) else value)
        except (TypeError, ValueError):
            wait = 1.0
        if self.stopping.wait(min(max(wait, 0.0), MAX_RETRY_AFTER) + random.random()):
            return                                  # stopping: next_attempt_requested stays False
        state.next_attempt_requested = True
        state.increment_current_attempt()


class _Late:
    """Stands in for `ack` once the request has been acked: says the same, ephemerally."""

    def __init__(self, respond):
        self.respond = respond

    def __call__(self, text: str = "", blocks=None, **_) -> None:
        if text or blocks:
            self.respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)


def _is_id(name: str) -> bool:
    """C0123ABC (public), G0123ABC (private), as opposed to a channel's name."""
    return name[:1] in "CG" and name.isupper() and name.isalnum()


def _file_safe(name: str) -> str:
    """A host name as part of a file name: letters, digits, dot, dash and underscore only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "host"


def _why(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error"))
    return str(exc)
