"""Change review for people: `/whodid changes`, `whodid changes`, and the morning digest.

    /whodid changes [since:24h] [until:WHEN] [host:GLOB] [user:NAME]

The review itself (what counts as a change, who did it, planned or not) is tracer/changes.py;
here it becomes text for the terminal and Block Kit for Slack - the same content, unplanned
changes first, each with a button that opens its trace, and the planned ones one line per
expected actor. Long days are paged into the thread, never cut off without saying how many
more there are.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from whodid import logs, private
from whodid.tracer.changes import Review, Row, by_person, planned_by_actor
from whodid.tracer.render.text import printable
from whodid.tracer.when import clock, iso

from . import query
from .slack.ask import Ask, AskError
from .slack.blocks import MAX_BLOCKS, MAX_SECTION, button, context, code, cut, escape, section
from .slack.buttons import View
from .tracing import tracer_for

ROWS_PER_MESSAGE = 40                # section blocks per message, with room for headers
MAX_MESSAGES = 6                     # the first in the channel, the rest in its thread
MAX_PATTERN = 200


@dataclass(frozen=True)
class ChangesAsk:
    since: float
    until: float
    host: str | None = None
    user: str | None = None
    since_text: str = "24h"

    def window(self) -> str:
        return f"{clock(self.since)} to {clock(self.until)}"

    def describe(self) -> str:
        parts = [f"since:{self.since_text}"]
        if self.host:
            parts.append(f"host:{self.host}")
        if self.user:
            parts.append(f"user:{self.user}")
        return " ".join(parts)


def is_changes(text: str) -> bool:
    words = (text or "").split()
    return bool(words) and words[0].lower() == "changes"


def parse(text: str, now: float, default_since: str = "24h") -> ChangesAsk:
    """`changes since:24h host:web-* user:jim` (the leading word optional), Slack's words.
    Raises AskError."""
    words = query.words_of(text)
    if words and not words[0].quoted and words[0].text.lower() == "changes":
        words = words[1:]
    return from_question(query.parse(words, "changes", now, {"since": default_since}, surface="slack"), now)


def from_question(q: query.Question, now: float) -> ChangesAsk:
    """The review a parsed `changes` question asks for: its window ends now unless until: says."""
    until = now if q.until is None else q.until
    if until <= q.since:
        raise AskError("`since:` is in the future")
    return ChangesAsk(since=q.since, until=until, host=q.host, user=q.user, since_text=q.texts["since"])


def trace_view(row: Row) -> View:
    """The row's latest change, pinned (its exec or file change: another command like it in the
    same second, or a host named like a glob, cannot take its place), with the question that
    finds it - its command (or path) on its host within a second of it - for the answer's
    count and buttons. The same `show` button /whodid uses."""
    subject = row.subject
    if row.what == "command":
        # a `[` would be read as a glob class; the command up to it still finds the exec
        subject = subject.split("[", 1)[0].strip() or subject
    subject = subject[:MAX_PATTERN]
    ask = Ask(pattern=subject, host=row.host, since=row.last - 1, until=row.last + 1,
              since_text=iso(row.last - 1))
    return View(ask, pin=row.target)


# --- text: the CLI's answer -------------------------------------------------------------------

def render_text(review: Review, now: float) -> str:
    lines = [f"Changes from {clock(review.since)} to {clock(review.until)}"
             + (f" on {review.host}" if review.host else "") + (f" by {review.user}" if review.user else "")
             + f": {review.headline()}"]
    if not review.configured:
        lines.append("(no expected actors or change windows are configured - changes.expected_actors, "
                     "changes.windows - so every change counts as unplanned)")
    if review.truncated:
        lines.append("(more changes than whodid reviews at once: narrow with host: or user:, or a shorter since:)")
    unplanned = review.unplanned
    days = review.until - review.since > 86400
    lines.append("")
    lines.append(f"UNPLANNED ({len(unplanned)})" if unplanned else "UNPLANNED: none")
    for person, hosts in by_person(unplanned):
        first = hosts[0][1][-1]
        why = common_reason(hosts)
        lines.append(f"  {person} - {first.how}")
        if why:
            lines.append(f"    why unplanned: {why}")
        for host, rows in hosts:
            lines.append(f"    {host}")
            for r in rows:
                times = _when(r.first, r.last, days)
                count = f" x{r.count}" if r.count > 1 else ""
                subject = r.subject if r.what == "command" else f"{r.kind}"
                lines.append(f"      {times}  {subject}{count}"
                             + ("" if why else f"   [{r.verdict.reason}: {r.verdict.detail}]"))
    lines.append("")
    planned = planned_by_actor(review.changes)
    lines.append(f"PLANNED ({len(review.planned)})" if planned else "PLANNED: none")
    for a in planned:
        lines.append("  " + planned_line(a, days))
    return "\n".join(printable(line) for line in lines)       # recorded data: see printable


def _when(first: float, last: float, days: bool) -> str:
    """14:05, or 14:02-14:09; with the date when the review spans more than a day."""
    cut_at = slice(5, 16) if days else slice(11, 16)
    return clock(last)[cut_at] if first == last else f"{clock(first)[cut_at]}-{clock(last)[cut_at]}"


def common_reason(hosts: list[tuple[str, list[Row]]]) -> str | None:
    """The reason, when one reason covers all of a person's unplanned rows (it usually does)."""
    reasons = {(r.verdict.reason, r.verdict.detail) for _, rows in hosts for r in rows}
    if len(reasons) != 1:
        return None
    reason, detail = reasons.pop()
    return f"{reason} ({detail})"


def planned_line(a: dict[str, Any], days: bool = False) -> str:
    kinds = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in a["kinds"].most_common(4))
    more = len(a["kinds"]) - 4
    return (f"{a['actor']}: {a['count']} change{'s' if a['count'] != 1 else ''} on {len(a['hosts'])} "
            f"host{'s' if len(a['hosts']) != 1 else ''}, {_when(a['first'], a['last'], days)} "
            f"({kinds}{f', and {more} more kinds' if more > 0 else ''})"
            + (f" in {', '.join(sorted(w for w in a['windows'] if w))}" if any(a["windows"]) else ""))


# --- Slack: pages of blocks -------------------------------------------------------------------

def render_blocks(review: Review, value: Callable[[View], str], title: str = "Changes",
                  max_messages: int = MAX_MESSAGES) -> list[tuple[str, list[dict]]]:
    """[(text, blocks)] - the first message for the channel, the rest for its thread. Each within
    Slack's limits (50 blocks, 3,000 characters a section); past MAX_MESSAGES the rest is
    counted, not shown."""
    where = (f" on {code(review.host)}" if review.host else "") + (f" by {escape(review.user)}" if review.user else "")
    head = [section(f":clipboard: *{escape(title)}* from {clock(review.since)} to {clock(review.until)}{where}: "
                    f"*{escape(review.headline())}*")]
    if not review.configured:
        head.append(context("No expected actors or change windows are configured (`changes.expected_actors`, "
                            "`changes.windows`), so every change counts as unplanned."))
    if review.truncated:
        head.append(context("More changes than whodid reviews at once: narrow with `host:` or `user:`, or a "
                            "shorter `since:`."))
    items: list[dict] = []                       # the unplanned rows, with a header per person
    unplanned = review.unplanned
    days = review.until - review.since > 86400
    if unplanned:
        items.append(section(f"*Unplanned ({len(unplanned)})*, newest hosts first:"))
    else:
        items.append(section("*Unplanned:* none :white_check_mark:"))
    for person, hosts in by_person(unplanned):
        first = hosts[0][1][-1]
        why = common_reason(hosts)
        items.append(context(cut(f"*{escape(person)}* - {escape(first.how)}"
                                 + (f"\n_unplanned: {escape(why)}_" if why else ""), 2000)))
        for host, rows in hosts:
            for r in rows:
                items.append({"type": "section", "text": {"type": "mrkdwn",
                                                          "text": cut(_row_text(r, not why, days), MAX_SECTION)},
                              "accessory": button("Trace", "show", value(trace_view(r)))})
    planned = planned_by_actor(review.changes)
    tail = [section(cut(f"*Planned ({len(review.planned)})*\n" + "\n".join(
        "• " + escape(planned_line(a, days)) for a in planned), MAX_SECTION))] if planned else \
        [section("*Planned:* none")]
    text = f"{title}: {review.headline()}"
    return paginate(text, head, items, tail, max_messages)


def _row_text(r: Row, with_reason: bool, days: bool) -> str:
    when = _when(r.first, r.last, days)
    subject = code(r.subject) if r.what == "command" else f"{escape(r.kind.split(' ', 1)[0])} {code(r.subject)}"
    count = f" ×{r.count}" if r.count > 1 else ""
    text = f"{code(r.host)} {when} UTC  {subject}{count}"
    return text + (f"\n_{escape(r.verdict.reason)}: {escape(r.verdict.detail)}_" if with_reason else "")


def paginate(text: str, head: list[dict], items: list[dict], tail: list[dict],
             max_messages: int = MAX_MESSAGES) -> list[tuple[str, list[dict]]]:
    """Head, then items, then tail, cut into messages of at most ROWS_PER_MESSAGE items and
    MAX_BLOCKS blocks; at most max_messages, the items left over counted in the last."""
    pages: list[list[dict]] = []
    current, rows_here, shown = list(head), 0, 0
    for block in items:
        if len(current) >= MAX_BLOCKS - 3 or rows_here >= ROWS_PER_MESSAGE:
            if len(pages) + 1 >= max_messages:
                break
            pages.append(current)
            current, rows_here = [], 0
        current.append(block)
        rows_here += 1
        shown += 1
    left = sum(1 for b in items[shown:] if b.get("accessory"))
    if left:
        current.append(context(f"… and {left} more unplanned rows not shown: narrow with `host:` or `user:`, "
                               "or a shorter `since:`"))
    if len(current) + len(tail) < MAX_BLOCKS:
        pages.append(current + tail)
    else:
        pages += [current, list(tail)]
    out = []
    for n, blocks in enumerate(pages):
        if n:
            blocks = [context(f"(continued, {n + 1} of {len(pages)})")] + blocks
        out.append((text if n == 0 else f"{text} (continued, {n + 1} of {len(pages)})", blocks))
    return out


def review_json(review: Review) -> dict[str, Any]:
    return {
        "since": iso(review.since), "until": iso(review.until), "host": review.host, "user": review.user,
        "configured": review.configured, "truncated": review.truncated, "summary": review.headline(),
        "changes": [{
            "ts": iso(c.ts), "host": c.host, "pid": c.pid, "what": c.what, "subject": c.subject, "kind": c.kind,
            "person": c.person if c.known else None, "confidence": c.confidence, "account": c.account, "origin": c.origin, "by_login": c.by_login, "how": c.how,
            "chain": c.chain, "planned": c.verdict.planned, "reason": c.verdict.reason, "detail": c.verdict.detail,
            "actor": c.verdict.actor, "window": c.verdict.window,
        } for c in review.changes],
    }


class DigestJob:
    """The scheduled digest (`changes.digest`), run by `whodid serve` on APScheduler: the review
    of the `since` window ending now, posted to the channel - or, without Slack, written to the
    log and to a file - and, with `changes.digest.outputs`, to those outputs (a signed webhook,
    syslog) through the outbox, which never waits on them."""

    def __init__(self, cfg, store_path: str, bot=None, out_dir: str | None = None, log=None,
                 clock: Callable[[], float] = time.time, outbox=None):
        self.cfg = cfg
        self.outbox = outbox
        self.clock = clock
        self.digest = cfg.changes.digest
        self.store_path = store_path
        self.bot = bot
        self.out_dir = out_dir
        self.log = logs.get("digest", log)

    def schedule(self, scheduler) -> str:
        from whodid.tracer.changes import cron_trigger
        d = self.digest
        # one digest per tick: a slow one is not started twice, and ticks that fell due while one
        # ran late (within the hour) are folded into one run
        scheduler.add_job(self.tick, cron_trigger(d.cron, d.tz), id="changes-digest", name="changes digest",
                          max_instances=1, coalesce=True, misfire_grace_time=3600)
        where = ", ".join(([d.channel] if d.channel else []) + [f"output {o}" for o in d.outputs])
        return f"{d.cron} {d.tz} to {where}, reviewing the last {d.since}"

    def tick(self) -> None:
        """One scheduled digest. A failure (the store, Slack) is said in the log, and the next
        tick tries again: nothing is owed to APScheduler's own logging."""
        try:
            self.run()
        except Exception as exc:
            self.log.error(f"could not make or post the digest ({exc!r}); the next one is due on schedule")

    def run(self, now: float | None = None) -> Review:
        from whodid.tracer import Store
        from whodid.tracer.changes import review
        from whodid.tracer.when import parse_duration
        now = self.clock() if now is None else now
        store = Store.open(self.store_path)           # a digest of a store that is not there says so
        try:
            tracer = tracer_for(self.cfg, store)
            result = review(tracer, self.cfg.changes, now - parse_duration(self.digest.since), now)
        finally:
            store.close()
        if self.outbox is not None and self.digest.outputs:
            from .outputs import event
            self.outbox.put(self.digest.outputs, event(
                "digest", f"digest:{iso(result.since)}:{iso(result.until)}", render_text(result, now), now,
                review=review_json(result)))
            self.log(f"handed to {', '.join(self.digest.outputs)}: {result.headline()}")
        if self.bot is not None and self.digest.channel:
            pages = render_blocks(result, self.bot.value, title="Change digest")
            ts = self.bot.post_pages(pages, self.digest.channel)
            if ts:
                self.log(f"posted to {self.digest.channel}" + (f" ({len(pages)} messages)" if len(pages) > 1 else "")
                         + f": {result.headline()}", channel=self.digest.channel)
            else:
                self.log.error(f"could not post to {self.digest.channel}", channel=self.digest.channel)
        elif self.bot is None:
            text = render_text(result, now)
            self.log(f"{result.headline()}\n{text}")
            if self.out_dir:
                private.make_dirs(self.out_dir)          # who changed what: owner only, as alerts
                path = os.path.join(self.out_dir, time.strftime("changes-%Y%m%d-%H%M.txt", time.gmtime(now)))
                private.write_file(path, text + "\n")
        return result
