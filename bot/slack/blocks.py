"""Slack messages as Block Kit: pure functions from traces to blocks, within Slack's limits
(3,000 characters a section, 50 blocks a message, 2,000 a button value).

Every message also has a plain `text`, for notifications and screen readers; it is escaped
like the blocks where it leaves (Bot.post, the canary poster), never here, so never twice.
"""

from __future__ import annotations

from typing import Callable

from whodid.tracer.render.confidence import (OBSERVED, account_said, candidate_head, candidates_count, confidence, earlier_refused,
                                             person, person_in_a_line, reason)
from whodid.tracer.render import shared
from whodid.tracer.render.text import connection_lines, printable, render_trace
from whodid.tracer.stitch import Step
from whodid.tracer.trace import Trace, further_back
from whodid.tracer.when import ago, clock

from .ask import HELP, Ask
from .buttons import View

MAX_SECTION = 3000
MAX_BLOCKS = 50
MAX_TEXT = 40000             # chat.postMessage's own limit on `text`
MAX_CANDIDATES = 5           # the answer lists this many; the chain in the thread lists them all
MAX_SHARED = 3               # shared sessions the answer shows; the chain in the thread shows them all
MAX_CLIENTS = 5              # clients shown per shared session, likewise
MAX_COMMAND = 80             # a client's command, shortened in the answer

ACTIONS = ("widen", "started", "earlier", "others", "show", "wider")
OPEN = "open"               # the link button to the trace page: Slack opens the URL, we only ack
SCOPES = {0: "the chain", 1: "what it started and its shells' other commands", 2: "the whole login sessions",
          3: "the person's other sessions"}

Value = Callable[[View], str]
Link = Callable[[View], "str | None"]       # a signed trace page URL, or None when pages are off


def cut(text: str, limit: int = MAX_SECTION) -> str:
    """Shorten to `limit` characters at a line (or word) boundary, saying so."""
    if len(text) <= limit:
        return text
    note = "\n… (cut to fit Slack)"
    room = limit - len(note)
    head = text[:room]
    at = head.rfind("\n")
    if at < room // 2:
        at = head.rfind(" ")
    return (head[:at] if at > 0 else head) + note


def escape(text: str, keep_newlines: bool = False) -> str:
    """Slack treats & < > specially (`<!channel>`, `<@U123>`, `<#C1>`, `<https://x|label>` are
    mentions and links): they are escaped as Slack asks, in blocks and in every message's `text`
    (Bot.post). Control and bidi characters become visible escapes (printable), and so does a
    newline - a recorded value with one would otherwise show a made-up line of its own - unless
    the text is known to be lines whose values were made printable already (keep_newlines)."""
    return printable(text, keep_newlines).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(text: str) -> str:
    return "`" + escape(text).replace("`", "'") + "`"


def code_sections(text: str, max_blocks: int = MAX_BLOCKS - 2) -> list[dict]:
    """Preformatted text split into sections of whole lines, each within Slack's limit. Its
    lines are taken as lines: recorded values in them must have been made printable."""
    room = MAX_SECTION - 8                               # the ``` fences
    blocks, chunk = [], []
    size = 0
    lines = escape(text, keep_newlines=True).replace("```", "'''").splitlines()      # lines made printable
    for i, line in enumerate(lines):
        line = line if len(line) <= room else line[: room - 1] + "…"
        if size + len(line) + 1 > room:
            blocks.append(chunk)
            chunk, size = [], 0
            if len(blocks) == max_blocks:
                left = len(lines) - i
                return [_pre(c) for c in blocks[:-1]] + [_pre(blocks[-1] + [f"… {left} more lines (cut to fit Slack)"])]
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(chunk)
    return [_pre(c) for c in blocks]


def _pre(lines: list[str]) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": "```" + "\n".join(lines) + "```"}}


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cut(text)}}


def context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(text)}]}


def button(label: str, action: str, value: str, style: str | None = None) -> dict:
    b = {"type": "button", "text": {"type": "plain_text", "text": label[:75]}, "action_id": f"whodid.{action}",
         "value": value}
    if style:
        b["style"] = style
    return b


# --- the answers ------------------------------------------------------------------------

def what(tr: Trace) -> str:
    if tr.change:
        ch = tr.change
        target = f"{ch['path']} -> {ch['path2']}" if ch.get("path2") else ch["path"]
        return f"{ch['op']} {target}"
    return tr.poi.command


def headline(tr: Trace, now: float) -> str:
    """jim ran `aws eks delete-cluster` on config-server, 3h 21m ago; "person unknown ran ..." when
    the evidence names nobody (never the account it runs as)."""
    when = tr.change["ts"] if tr.change else tr.poi.start
    verb = "changed" if tr.change else "ran"
    return f"{person_in_a_line(tr)} {verb} `{what(tr)}` on {tr.poi.host}, {ago(when, now)}"


def summary(tr: Trace, view: View, total: int, now: float, value: Value,
            link: Link | None = None) -> tuple[str, list[dict]]:
    """The channel message: who, where, when, how, and the buttons."""
    who, poi = tr.attributed, tr.poi
    name = person(who)
    when = tr.change["ts"] if tr.change else poi.start
    verb = "changed" if tr.change else "ran"
    text = f"{name} {verb} {what(tr)} on {poi.host}, {ago(when, now)}: {tr.summary}"
    level = confidence(tr)
    if not who.known:
        text += f" (confidence unknown, {candidates_count(len(who.candidates))})"
    elif level != OBSERVED:        # the notification is all a phone shows: a guess says so there
        text += f" (confidence {level})"
    if who.known:
        as_ = f" (as {escape(who.account)})" if who.account and who.account != who.user else ""
    else:
        said = account_said(tr)      # "runs as root", "logged in as ec2-user": the account in code
        as_ = f" ({said[:-len(who.account)]}{code(who.account)})" if who.account else ""
    fields = [
        f"*Who*\n{escape(name)}{as_}",
        f"*Where*\n{escape(poi.host)}, as {escape(poi.user)}"
        + (f", exit {tr.exit_code}" if tr.exit_code is not None else ""),
        f"*When*\n{clock(when)}\n{ago(when, now)}",
        f"*How*\n{escape(tr.summary)}",
        f"*Confidence*\n{level}" + ("" if level == "observed" else " :warning:") + f"\n{escape(reason(tr))}",
    ]
    mark = ":mag:" if who.known else ":grey_question:"
    blocks = [
        section(f"{mark} *{escape(name)}* {verb} {code(what(tr))} on *{escape(poi.host)}*"),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": cut(f, 2000)} for f in fields]},
    ]
    if tr.connections is not None:     # a to:/from:/listen: match: what it connected to, how often
        blocks.append(section(":link: " + escape("\n".join(connection_lines(tr)), keep_newlines=True)))
        text += f"; {connection_lines(tr)[0]}" if tr.connections.peers else ""
    if not who.known:
        blocks.append(section(candidates(tr)))
    blocks += shared_sessions(tr)
    notes = [f"{escape(who.how)}"] + [escape(c) for c in tr.notes[:3]]
    if len(tr.notes) > 3:
        notes.append(f"and {len(tr.notes) - 3} more notes in the thread")
    blocks.append(context("\n".join(notes)))
    place = f"match {view.index + 1} of {total}" + (" (newest first)" if total > 1 else "")
    blocks.append(context(f"{place} · {code(view.ask.subject)} over {escape(view.ask.window())} · "
                          f"scope {view.scope}: {SCOPES[view.scope]}"))
    blocks.append(actions(view, total, value, link, earlier=who.known))
    return text, blocks


def candidates(tr: Trace) -> str:
    """An unknown answer's candidates, each with its evidence; recorded values in code spans, so
    neither a mention nor a `*` in an account name or an evidence line can speak for the bot."""
    cands = tr.attributed.candidates
    if not cands:
        return ("*Candidates:* none - no login that was open when it began is linked to this process "
                "by its own evidence (audit session, login uid).")
    lines = [f"*Candidates* ({len(cands)}): logins this process's own evidence points at; none is an answer"]
    for i, c in enumerate(cands[:MAX_CANDIDATES], 1):
        lines.append(f"{i}. {code(candidate_head(c))}")
        # long evidence is shortened here, so five candidates fit one section; the thread has it whole
        lines.extend(f"        • {code(e if len(e) <= 200 else e[:199] + '…')}" for e in c.evidence)
    if len(cands) > MAX_CANDIDATES:
        lines.append(f"and {len(cands) - MAX_CANDIDATES} more in the chain in the thread")
    return "\n".join(lines)


def shared_sessions(tr: Trace) -> list[dict]:
    """A context line per shared session (a tmux/screen server, an ssh master): who started it
    and each client that used it, with what it did and when. Recorded values (hosts, accounts,
    commands) in code spans, as candidates are: a mention or a `*` in them cannot speak for the
    bot. A client whose chain names nobody is "person unknown (account ubuntu, ...)", never the
    account as the person."""
    out = []
    for ss in tr.shared[:MAX_SHARED]:
        lines = [f":busts_in_silhouette: *Shared session:* {code(shared.title(ss))}, "
                 f"started by {code(shared.who_said(ss.starter))}"]
        shown = 0
        for role, clients in shared.by_role(ss):
            room = clients[:max(0, MAX_CLIENTS - shown)]
            shown += len(room)
            if room:
                lines.append(f"*{shared.ROLE_SAID.get(role, role)}:* " + ", ".join(
                    f"{code(shared.client_said(c))} via {code(_short(c.command, MAX_COMMAND))}" for c in room))
        if not ss.clients:
            lines.append(shared.no_client(ss))
        elif shown < len(ss.clients):
            lines.append(f"and {len(ss.clients) - shown} more clients in the chain in the thread")
        out.append(context("\n".join(lines)))
    if len(tr.shared) > MAX_SHARED:
        out.append(context(f"and {len(tr.shared) - MAX_SHARED} more shared sessions in the chain in the thread"))
    return out


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def actions(view: View, total: int, value: Value, link: Link | None = None, earlier: bool = True) -> dict:
    """The answer's buttons. `earlier` is False when the person is unknown: there is nobody whose
    earlier activity to show (the account's would be everyone who used it)."""
    elements = []
    url = link(view) if link else None
    if url:
        elements.append({"type": "button", "action_id": f"whodid.{OPEN}", "url": url,
                         "text": {"type": "plain_text", "text": "Open full trace"}})
    if view.scope < 3:
        elements.append(button("Widen scope", "widen", value(View(view.ask, view.index, view.scope + 1, view.pin)), "primary"))
    elements.append(button("Show what it started", "started", value(view)))
    if earlier:
        elements.append(button("Earlier activity", "earlier", value(view)))
    if total > 1:
        elements.append(button(f"Other matches ({total - 1})", "others", value(view)))
    return {"type": "actions", "elements": elements}


def chain(tr: Trace, view: View, total: int, now: float, value: Value | None = None,
          link: Link | None = None) -> tuple[str, list[dict]]:
    """The thread message under the picture: the whole chain as text, for screen readers and
    copy-paste (what `whodid trace` prints)."""
    text = render_trace(tr, now, view.index + 1, total)
    blocks = code_sections(text, max_blocks=MAX_BLOCKS - (1 if value else 0))
    url = link(view) if link else None
    if value and view.scope < 3:
        blocks.append(actions(view, total, value, link, earlier=tr.attributed.known))
    elif url:
        blocks = blocks[:MAX_BLOCKS - 1] + [{"type": "actions", "elements": [
            {"type": "button", "action_id": f"whodid.{OPEN}", "url": url,
             "text": {"type": "plain_text", "text": "Open full trace"}}]}]
    return f"How: {tr.summary}", blocks


def no_match(ask: Ask, wider: str | None, found=None) -> tuple[str, list[dict]]:
    """`found`: find()'s answer - when a `user:` question stopped before the oldest match
    (Found.looked_at), it is not "none", and a wider window would only look further away."""
    # the plain text is escaped where it leaves (Bot.post), the blocks here: each once
    where = f" on hosts {ask.host}" if ask.host else ""
    who = f" involving {ask.user}" if ask.user else ""
    kind = ("" if ask.connection else "changes to " if ask.pattern.startswith("/") else "commands matching ")
    head = (f":shrug: No {kind}{code(ask.subject)}" + (f" on hosts {code(ask.host)}" if ask.host else "")
            + (f" involving {code(ask.user)}" if ask.user else ""))
    if getattr(found, "looked_at", None):
        text, block = stopped_looking(ask, found)
        return f"No {kind}{ask.subject}{where}{who} found. {text}", [section(f"{head} found."), block]
    text = f"No {kind}{ask.subject}{where}{who} over {ask.window()}."
    blocks = [section(f"{head} over {escape(ask.window())}.")]
    if wider:
        blocks.append({"type": "actions", "elements": [button("Search a wider window", "wider", wider, "primary")]})
    return text, blocks


def stopped_looking(ask: Ask, found) -> tuple[str, dict]:
    """What a `user:` question that stopped before the oldest match (tracer Found) says: how far
    it looked, that older matches may involve the user, and how to look further back."""
    window = further_back(ask.since, found.looked_to)
    narrow = "" if ask.host else ", or narrow it with host:"
    text = (f"Not known beyond the newest {found.looked_at:,} matches over {ask.window()}, back to "
            f"{clock(found.looked_to)}: older ones were not looked at, and may involve {ask.user}. To look further "
            f"back, ask again with {window}{narrow}.")
    block = section(f":warning: *Not known beyond the newest {found.looked_at:,} matches* over {escape(ask.window())}, "
                    f"back to {escape(clock(found.looked_to))}: older ones were not looked at, and may involve "
                    f"{code(ask.user)}. To look further back, ask again with `{window}`"
                    + ("" if ask.host else ", or narrow it with `host:`") + ".")
    return text, block


def others(traces: list[Trace], view: View, now: float, value: Value) -> tuple[str, list[dict]]:
    """The other matches, one line and a button each. Like the answer, the list says when it is not
    all there is: a `user:` question that stopped looking (Found.looked_at) carries the same
    warning, and one that found older matches than it lists (Found.more, Bot.find) says so."""
    ask = view.ask
    more = getattr(traces, "more", False)
    head = f"The newest {len(traces)} matches" if more else f"{len(traces)} matches"
    text = f"{head} for {ask.subject}"
    blocks = [section(f"*{head}* for {code(ask.subject)} over {escape(ask.window())}, newest first"
                      + (" (there are older ones: ask again with an earlier `until:`, or narrow it with `host:`, "
                         "to see them)" if more else "") + ":")]
    if getattr(traces, "looked_at", None):
        said, block = stopped_looking(ask, traces)
        text, blocks = f"{text}. {said}", [*blocks, block]
    listed = [(i, tr) for i, tr in enumerate(traces) if not (tr.target == view.pin if view.pin else i == view.index)]
    room = MAX_BLOCKS - len(blocks)
    shown = listed if len(listed) <= room else listed[:room - 1]
    for i, tr in shown:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": cut(f"{i + 1}. {escape(headline(tr, now))}"
                                                                                 f"\n_{escape(tr.summary)}_")},
                       "accessory": button("Show", "show", value(View(ask, i, 0, tr.target)))})
    if len(shown) < len(listed):       # Slack takes 50 blocks a message
        unlisted = f"{len(listed) - len(shown)} more not listed here"
        blocks.append(section(f"_{unlisted}: narrow the question to see them._"))
        text = f"{text} ({unlisted})"
    return text, blocks


def earlier(tr: Trace, steps: list[Step], now: float) -> tuple[str, list[dict]]:
    if not tr.attributed.known:     # a button from before the answer changed, or made by hand
        why = earlier_refused(tr)
        return why, [section(f"{escape(why)} ({code(what(tr))})")]
    who = tr.attributed.user
    if not steps:
        return (f"Nothing earlier by {who}", [section(f"No earlier commands by *{escape(who)}* in the day before "
                                                      f"{code(what(tr))}.")])
    lines = [printable(f"{clock(s.start)[11:19]}  {s.host:<16} {s.user:<10} {s.command}") for s in steps]
    head = section(f"*{escape(who)}*'s commands in the {len(steps)} steps before {code(what(tr))} "
                   f"(the day before, newest last):")
    return f"{who}'s earlier activity", [head] + code_sections("\n".join(lines), max_blocks=MAX_BLOCKS - 1)


def help_message(default_since: str) -> tuple[str, list[dict]]:
    text = HELP.format(since=default_since)
    return text, [section(text)]


def refusal(reason: str) -> str:
    return f":no_entry: Sorry - {reason}"
