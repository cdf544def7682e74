"""From a failing canary to an alert that already holds the answer.

`step` is the state machine (pure): ok -> failing (alert once, after N failures in a row)
-> recovered (said once, in the alert's thread). What it says is delivered at least once: a
message that could not be posted (not_in_channel, 5xx, 429 past the retries) stays in the
state's `undelivered` queue, persisted, and is tried again (`pending`, `after_delivery`) until
it is posted - an alert nobody saw is the worst outcome a canary has. A canary that fails again soon after
recovering re-opens its old thread instead of starting a new alert, so flapping never
floods the channel. `find_suspects` ranks the commands matching the canary's suspect
patterns: the latest one before the first failure first. Posters deliver: to Slack, or -
when no Slack is configured - to the log and files; and, through WithOutputs, to the canary's
outputs (a signed webhook, syslog: bot/outputs.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from whodid import logs, private
from whodid.tracer import Query, Tracer
from whodid.tracer.render import shared
from whodid.tracer.render.confidence import candidate_person, who_can
from whodid.tracer.render.jsonout import shared_json
from whodid.tracer.render.text import printable, render_trace
from whodid.tracer.trace import Trace
from whodid.tracer.changes import WRAPPERS, Rules, parse_rules
from whodid.tracer.destinations import endpoint, parse_destination
from whodid.tracer.stitch import program_name
from whodid.tracer.when import clock, format_duration, iso

from ..outputs import event as output_event
from ..slack import blocks
from ..slack.ask import MAX_PATTERN, Ask
from ..slack.buttons import View
from .checks import Canary, Result

REOPEN_WITHIN = 3600.0           # a failure this soon after recovering continues the old thread
PIN_FOR = 90 * 86400.0           # suspects' traces are kept past retention this long


@dataclass(frozen=True)
class State:
    name: str
    status: str = "ok"
    since: float | None = None
    failures: int = 0
    last_run: float | None = None
    last_summary: str = ""
    alert_channel: str | None = None
    alert_ts: str | None = None
    alerted_at: float | None = None
    recovered_at: float | None = None
    undelivered: str | None = None      # messages not posted yet, oldest first: "alert,recovered"


def pending(state: State, action: str | None) -> list[str]:
    """What to deliver now, in order: what could not be posted before, then this run's action,
    folded (see fold) - so the queue has at most two messages however long Slack refuses."""
    queue = [k for k in (state.undelivered or "").split(",") if k]
    if action:
        queue.append(action)
    return fold(queue)


def fold(queue: list[str]) -> list[str]:
    """A backlog as worth delivering. Every message is made from the canary's state at delivery,
    so only the newest says something true: a flapping canary's backlog of alert, recovered,
    alert, ... would post the same alert again and again, and a 'failing again' delivered after
    the recovery has no failure to show. An alert nobody saw goes first, once (late, if the
    canary has recovered since: alerts.late), then - in its thread - the newest news."""
    if "alert" in queue:
        return ["alert"] + (["recovered"] if queue[-1] == "recovered" else [])
    return queue[-1:]


def after_delivery(state: State, queue: list[str], delivered: int) -> State:
    """The state once the first `delivered` messages of `queue` went out and the rest did not."""
    return replace(state, undelivered=",".join(queue[delivered:]) or None)


def late(state: State, canary: Canary) -> tuple[State, Result]:
    """An alert that could not be posted until after its canary recovered: recovery wiped the
    failure's start and the check now says all is well, so the alert is about the failure as the
    state still knows it - failing from `alerted_at` to `recovered_at` - and says it is late."""
    since = state.alerted_at or state.recovered_at or state.last_run or 0.0
    until = f" to {clock(state.recovered_at)} (it has recovered)" if state.recovered_at else ""
    return (replace(state, since=since, failures=max(state.failures, canary.failures_before_alert)),
            Result(False, f"from {clock(since)}{until}; this alert could not be posted until now"))


def _verb(state: State) -> str:
    """'is failing', or - an alert posted late, after the canary recovered - 'failed'."""
    return "failed" if state.status == "ok" else "is failing"


def step(state: State, result: Result, now: float, canary: Canary) -> tuple[State, str | None]:
    """The next state, and what to say: "alert", "again", "recovered" or None."""
    state = replace(state, last_run=now, last_summary=result.summary)
    if result.ok:
        if state.status == "failing":
            return replace(state, status="ok", since=None, failures=0, recovered_at=now), "recovered"
        return replace(state, since=None, failures=0), None
    state = replace(state, failures=state.failures + 1, since=state.since or now)
    if state.status == "ok" and state.failures >= canary.failures_before_alert:
        if state.alert_ts and state.recovered_at and now - state.recovered_at < REOPEN_WITHIN:
            return replace(state, status="failing", alerted_at=now), "again"
        return replace(state, status="failing", alerted_at=now), "alert"
    return state, None


@dataclass
class Suspect:
    trace: Trace
    view: View                   # the question that finds it, for the same buttons as /whodid
    before: float                # seconds before the first failure
    why: str


def find_suspects(tracer: Tracer, canary: Canary, first_failure: float, limit: int = 5,
                  rules: Rules | None = None) -> list[Suspect]:
    """The commands (and, with issue 21's connections, the connections) that could have broken
    what the canary watches, latest before the first failure first. A canary without suspect
    patterns suspects what the change review counts as a change (`rules`, else its built-in
    patterns: cluster, deployment, package, service changes...), not every root command."""
    s = canary.suspects
    since = first_failure - s.lookback
    found: dict[str, Suspect] = {}

    def keep(tr: Trace, view: View, why: str, at: float | None = None) -> None:
        before = first_failure - (tr.poi.start if at is None else at)
        key = tr.poi.node
        if key not in found or found[key].before > before:
            found[key] = Suspect(tr, view, before, f"{why}, {format_duration(before)} before the first failure")

    for pattern in s.commands:
        for host in s.hosts or (None,):
            ask = Ask(pattern=pattern, host=host, since=since, until=first_failure,
                      since_text=format_duration(s.lookback).replace(" ", ""))
            for i, tr in enumerate(tracer.find(Query(pattern=pattern, host=host, since=since, until=first_failure,
                                                     limit=10))):
                keep(tr, View(ask, i, 0, tr.target), f"matches `{pattern}`" + (f" on {host}" if host else ""))
    if not s.commands:
        for tr, label in change_suspects(tracer, rules or parse_rules(), s.hosts, since, first_failure):
            keep(tr, pinned_view(tr), f"a change ({label})")
    for spec in s.connections:
        for tr in connection_suspects(tracer, spec, s.hosts, since, first_failure):
            c = tr.connections
            keep(tr, pinned_view(tr), f"connected to {connection_said(c)} "
                 + ("once" if c.count == 1 else f"{c.count:,} times"), at=c.last)
    return sorted(found.values(), key=lambda x: (x.before, x.trace.poi.node))[:limit]


def change_suspects(tracer: Tracer, rules: Rules, hosts: tuple[str, ...], since: float, until: float,
                    per_host: int = 10) -> list[tuple[Trace, str]]:
    """The newest commands matching the change patterns on the suspect hosts, traced. Wrappers
    (sudo, ssh, shells) are never the change: what they ran is its own exec."""
    out = []
    for host in hosts or (None,):
        for proc, image in tracer.store.execs_of_commands(rules.any_pattern, since=since, until=until,
                                                          host_glob=host, limit=per_host * 4):
            if program_name(image.argv) in WRAPPERS:
                continue
            out.append((tracer.trace(proc, image=image), rules.pattern_of(image.cmd) or "change"))
            if len(out) >= per_host * len(hosts or (None,)):
                break
    return out


def connection_suspects(tracer: Tracer, spec: str, hosts: tuple[str, ...], since: float,
                        until: float, limit: int = 10) -> list[Trace]:
    """The processes that connected to `spec` (as `to:` takes it) in the window, newest first,
    each traced to a person. A spec that cannot be read was refused when the config loaded.
    The canaries' own checks run in this process (and a command check's children below it): on
    a watched host they connect to what they check every minute, the last just before the
    failure, and would be the first suspect - named after whoever started `whodid serve`."""
    out: list[Trace] = []
    me = this_process()
    for host in hosts or (None,):
        found = tracer.find(Query(pattern="", to=parse_destination(spec), host=host, since=since, until=until,
                                  limit=limit + 1))
        out += [tr for tr in found if not (me and _runs_in(tracer, tr, me))][:limit]
    return out


def this_process(proc: str = "/proc") -> tuple[str, int, int] | None:
    """(boot id, pid, start tick in ns) of this process, as an agent on this host names it; None
    when /proc cannot say (then no suspect is taken for the canaries' own)."""
    try:
        with open(f"{proc}/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        with open(f"{proc}/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return boot, os.getpid(), ticks * 10_000_000


def _runs_in(tracer: Tracer, tr: Trace, me: tuple[str, int, int]) -> bool:
    """Is this process (or a process it started) the trace's? An agent names a process by its
    fork record's time (just after /proc's 10 ms tick) or, if already running, by that tick: a
    start within a second of the tick, with the same pid and boot, is this process - its pid is
    taken while it runs, so no other process can look like it."""
    boot, pid, tick = me
    for step in tr.chain:
        if step.pid != pid:
            continue
        p = tracer.store.proc(step.proc)
        if tick <= p.start < tick + 1_000_000_000 and tracer.store.boot_name(p.boot) == boot:
            return True
    return False


def connection_said(c) -> str:
    """`k8s.internal:6443 (10.0.5.10)`: what was asked, and where it went when that differs."""
    peers = sorted({endpoint(p.addr, p.port) for p in c.peers})
    where = ", ".join(peers[:3]) + (f" and {len(peers) - 3} more" if len(peers) > 3 else "")
    return c.asked if where in ("", c.asked) else f"{c.asked} ({where})"


def pinned_view(tr: Trace) -> View:
    """The question that shows this very match (its command on its host within a second of it),
    pinned to it, for the same buttons as /whodid - as a change review's Trace button does."""
    subject = (tr.poi.command.split("[", 1)[0].strip() or tr.poi.command)[:MAX_PATTERN]
    ask = Ask(pattern=subject, host=tr.poi.host, since=tr.poi.start - 1, until=tr.poi.start + 1,
              since_text=iso(tr.poi.start - 1))
    return View(ask, pin=tr.target)


def recent_changes(store, canary: Canary, first_failure: float, limit: int = 10):
    """When nothing matches: what people ran as root on the suspect hosts in the window."""
    return store.privileged_commands(list(canary.suspects.hosts), first_failure - canary.suspects.lookback,
                                     first_failure, limit)


# --- what an alert says ------------------------------------------------------------------------

def alert_text(canary: Canary, state: State, result: Result, suspects: list[Suspect], changes, now: float) -> str:
    lines = [f"Canary {canary.name} {_verb(state)}: {result.summary}",
             f"  since {clock(state.since)} ({state.failures} failed check{'s' if state.failures > 1 else ''} "
             f"in a row; {canary.kind} check, {canary.schedule()})"]
    if result.detail:
        lines.append(f"  detail: {result.detail.strip()[:200]}")
    lines.append("")
    window = f"in the {format_duration(canary.suspects.lookback)} before the first failure"
    if suspects:
        lines.append(f"Top suspects ({window}, latest first):")
        for i, s in enumerate(suspects, 1):
            lines.append(f"  {i}. {blocks.headline(s.trace, now)} - {s.why}")
            lines.append(f"     {s.trace.summary}")
            if not s.trace.attributed.known:
                lines.append(f"     {candidates_said(s.trace)}")
            lines.extend(f"     {said}" for said in shared_said(s.trace))
    else:
        pats = (f"matching {', '.join(f'`{p}`' for p in canary.suspects.commands)}" if canary.suspects.commands
                else "the change review counts as a change (changes.patterns)")
        hosts = ", ".join(canary.suspects.hosts) or "any host"
        lines.append(f"No command {pats} ran on {hosts} {window}.")
        if changes:
            lines.append("The most recent commands run as root there:")
            for proc, im in changes:
                lines.append(f"  {clock(im.ts)}  {proc.host}  {im.cmd}")
        else:
            lines.append("Nothing was run as root there either.")
    return "\n".join(printable(line) for line in lines)


def alert_blocks(canary: Canary, state: State, result: Result, suspects: list[Suspect], changes, now: float,
                 value, link=None) -> tuple[str, list[dict]]:
    text = f"Canary {canary.name} {_verb(state)}: {result.summary}"
    out = [blocks.section(f":rotating_light: Canary *{blocks.escape(canary.name)}* {_verb(state)}\n"
                          f"*What failed:* {blocks.escape(result.summary)}\n"
                          f"*Since:* {clock(state.since)} ({state.failures} failed check"
                          f"{'s' if state.failures > 1 else ''} in a row; {canary.kind} check, {canary.schedule()})")]
    window = f"in the {format_duration(canary.suspects.lookback)} before the first failure"
    if suspects:
        out.append(blocks.section(f"*Top suspects* ({window}, latest first):"))
        for i, s in enumerate(suspects, 1):
            unknown = "" if s.trace.attributed.known else f"\n{blocks.escape(candidates_said(s.trace))}"
            unknown += "".join(f"\n{blocks.escape(said)}" for said in shared_said(s.trace))
            out.append({"type": "section", "text": {"type": "mrkdwn", "text": blocks.cut(
                f"{i}. {blocks.escape(blocks.headline(s.trace, now))}\n_{blocks.escape(s.why)}_ · "
                f"{blocks.escape(s.trace.summary)}{unknown}")}, "accessory": blocks.button("Show", "show", value(s.view))})
        top = suspects[0]
        total = len(suspects)
        out.append(blocks.actions(top.view, max(total, 1), value, link, earlier=top.trace.attributed.known))
    else:
        text_lines = alert_text(canary, state, result, [], changes, now).split("\n\n", 1)[1]
        out += blocks.code_sections(text_lines, max_blocks=blocks.MAX_BLOCKS - 2)
    return text, out[:blocks.MAX_BLOCKS]


def candidates_said(tr: Trace) -> str:
    """A suspect whose person is unknown, in one line: who it could be (the trace has why)."""
    cands = tr.attributed.candidates
    if not cands:
        return "person unknown, and no login is linked to it by its own evidence"
    return "person unknown; candidates: " + "; ".join(
        f"{who_can(c)} ({', '.join(c.evidence[:2]) or 'no evidence given'})" for c in cands[:5]) + (
        f"; and {len(cands) - 5} more" if len(cands) > 5 else "")


def shared_said(tr: Trace) -> list[str]:
    """A suspect's shared sessions (a tmux/screen server, an ssh master), one line each: who
    started it and who used it when the command ran (the trace's chain says more)."""
    return ["shared session: " + (line if len(line) <= 400 else line[:399] + "…")
            for line in map(shared.line, tr.shared[:3])]


def suspect_json(s: Suspect) -> dict[str, Any]:
    """A suspect in the alert's JSON file: `person` is null when unknown (as in whodid.trace/2)."""
    who = s.trace.attributed
    return {"command": s.trace.poi.command, "host": s.trace.poi.host, "at": s.trace.poi.start,
            "person": who.user if who.known else None, "account": who.account, "confidence": who.confidence,
            "candidates": [{"person": candidate_person(c), "account": c.account, "host": c.host, "login_time": c.login_time,
                            "source": c.source, "key_fp": c.key_fp, "evidence": list(c.evidence)}
                           for c in (who.candidates if not who.known else [])],     # as every view
            "how": s.trace.summary, "why": s.why,
            "shared_sessions": [shared_json(ss) for ss in s.trace.shared]}     # as whodid.trace/2


def alert_json(canary: Canary, state: State, result: Result, suspects: list[Suspect]) -> dict[str, Any]:
    """The alert as JSON: the file poster's .json, and the body of a webhook's or syslog's event."""
    return {"canary": canary.name, "failing_since": state.since, "result": result.summary,
            "suspects": [suspect_json(s) for s in suspects]}


def event_id(canary: Canary, kind: str, state: State) -> str:
    """The same for every delivery of one message (a retried alert, a restart): receivers
    drop duplicates by it. An alert and its 'again' are keyed by when the failure was alerted,
    a recovery by when it recovered."""
    at = state.recovered_at if kind == "recovered" else state.alerted_at or state.since or state.last_run
    return f"{canary.name}:{kind}:{(at or 0):.3f}"


class Poster(Protocol):
    def alert(self, canary: Canary, state: State, result: Result, suspects: list[Suspect], changes) -> tuple[str, str] | None: ...
    def again(self, canary: Canary, state: State, result: Result) -> None: ...
    def recovered(self, canary: Canary, state: State, result: Result) -> None: ...


def recovered_text(canary: Canary, state: State, result: Result) -> str:
    took = f" after {format_duration(state.recovered_at - state.alerted_at)}" if state.alerted_at else ""
    return printable(f"Canary {canary.name} recovered{took}: {result.summary}")


def again_text(canary: Canary, state: State, result: Result) -> str:
    return printable(f"Canary {canary.name} is failing again: {result.summary} (since {clock(state.since)})")


class SlackPoster:
    """Alerts in Slack: the channel message, then in its thread the top suspect's picture and chain."""

    def __init__(self, bot):
        self.bot = bot

    def alert(self, canary, state, result, suspects, changes):
        now = time.time()
        text, bl = alert_blocks(canary, state, result, suspects, changes, now, self.bot.value, self.bot.link)
        resp = self.bot.client.chat_postMessage(channel=canary.channel, text=blocks.escape(text), blocks=bl,
                                                unfurl_links=False)
        channel, ts = resp["channel"], resp["ts"]
        if suspects:
            top = suspects[0]
            self.bot.picture(top.trace, top.view, len(suspects), channel, ts, _no_respond, with_buttons=False)
        return channel, ts

    def again(self, canary, state, result):
        if state.alert_channel and state.alert_ts:
            self.bot.client.chat_postMessage(channel=state.alert_channel, thread_ts=state.alert_ts, reply_broadcast=True,
                                             text=":rotating_light: " + blocks.escape(again_text(canary, state, result)))

    def recovered(self, canary, state, result):
        if state.alert_channel and state.alert_ts:
            self.bot.client.chat_postMessage(channel=state.alert_channel, thread_ts=state.alert_ts,
                                             text=":white_check_mark: " + blocks.escape(recovered_text(canary, state,
                                                                                                       result)))


class FilePoster:
    """No Slack: alerts go to the log and, with their pictures, to files in a directory. With
    `out` (the demo), they are printed there instead of logged."""

    def __init__(self, directory: Path, out=None):
        self.dir = Path(directory)
        self.out = out
        self.log = logs.get("canary")

    def _say(self, level: str, text: str, canary) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)
        else:
            getattr(self.log, level)(text, canary=canary.name)

    def alert(self, canary, state, result, suspects, changes):
        from whodid.tracer.render.image import render_png
        now = time.time()
        private.make_dirs(self.dir)                # alerts name people and commands: owner only
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        base = self.dir / f"{canary.name}-{stamp}"
        text = alert_text(canary, state, result, suspects, changes, now)
        full = text + ("\n\n" + render_trace(suspects[0].trace, now, 1, len(suspects)) if suspects else "")
        private.write_file(base.with_suffix(".txt"), full + "\n")
        files = [str(base.with_suffix(".txt"))]
        for i, s in enumerate(suspects[:3], 1):
            path = self.dir / f"{canary.name}-{stamp}-suspect-{i}.png"
            private.write_file(path, render_png(s.trace, now))
            files.append(str(path))
        private.write_file(base.with_suffix(".json"), json.dumps(alert_json(canary, state, result, suspects),
                                                                 indent=2) + "\n")
        files.append(str(base.with_suffix(".json")))
        self._say("warning", text, canary)
        self._say("info", "alert written to: " + ", ".join(files), canary)
        return "files", str(base)

    def again(self, canary, state, result):
        self._say("warning", again_text(canary, state, result), canary)

    def recovered(self, canary, state, result):
        self._say("info", recovered_text(canary, state, result), canary)


def _no_respond(**_: Any) -> None:
    """Alerts have no response_url; a post that fails is logged by the bot."""


class WithOutputs:
    """A poster that also hands each message to the canary's `outputs` (webhook, syslog) - put in
    their outbox first, which never waits on a receiver - then to the poster it wraps (Slack,
    or the log and files). A canary with outputs and no Slack channel is not posted to Slack. A
    message the wrapped poster could not deliver is offered again by the runner; the outbox
    keeps its one copy while it is pending, and its id lets a receiver drop a later one."""

    def __init__(self, poster, outbox, needs_channel: bool, log=None):
        self.poster = poster
        self.outbox = outbox
        self.needs_channel = needs_channel      # Slack: a canary without a channel is not posted there
        self.log = log if isinstance(log, logs.Log) else logs.get("canary", log)

    def _put(self, canary: Canary, ev: dict[str, Any]) -> None:
        """Spool for the outputs. A spool that cannot be written (the disk full) must not keep the
        alert from Slack, and posting it again later would post Slack twice: said, and given up."""
        try:
            self.outbox.put(canary.outputs, ev)
        except OSError as exc:
            self.log.error(f"{canary.name}: could not spool the {ev['event']} for {', '.join(canary.outputs)} "
                     f"({private.trouble(exc, self.outbox.spool) or exc.strerror or exc}); they will not get it")

    def _only_outputs(self, canary: Canary) -> bool:
        return self.needs_channel and not canary.channel

    def alert(self, canary, state, result, suspects, changes):
        if canary.outputs:
            now = time.time()
            self._put(canary, output_event("alert", event_id(canary, "alert", state),
                                           alert_text(canary, state, result, suspects, changes, now), now,
                                           **alert_json(canary, state, result, suspects)))
        if self._only_outputs(canary):
            return "outputs", event_id(canary, "alert", state)
        return self.poster.alert(canary, state, result, suspects, changes)

    def again(self, canary, state, result):
        self._said(canary, state, result, "again", again_text(canary, state, result))
        if not self._only_outputs(canary):
            self.poster.again(canary, state, result)

    def recovered(self, canary, state, result):
        self._said(canary, state, result, "recovered", recovered_text(canary, state, result))
        if not self._only_outputs(canary):
            self.poster.recovered(canary, state, result)

    def _said(self, canary, state, result, kind, text):
        if canary.outputs:
            self._put(canary, output_event(kind, event_id(canary, kind, state), text, time.time(),
                                           canary=canary.name, failing_since=state.since, result=result.summary))
