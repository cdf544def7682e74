"""Change review: what was done to the fleet in a window, by whom, and was it planned.

A change is a command matching a change pattern (`kubectl apply`, `terraform destroy`, package
installs, service restarts...), a command run as root in a session someone logged in to, or a
file written under the change paths (/etc) from such a session. Each is attributed by the
tracer - through ssh hops, sudo and shared accounts - so it is grouped by the person behind it,
then by host.

Planned: done by an expected actor (a pipeline's account, from its automation hosts) on a host
in its scope, inside a change window that covers that host. Anything else is unplanned, and
says why: a person rather than a pipeline, an actor outside its hosts, no window for the host,
or outside the window.

The rules and the classification are pure; `review()` reads the store through a Tracer.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .events import AUID_UNSET
from .stitch import OBSERVED, PERSON_UNKNOWN, UNKNOWN, program_name
from .trace import Target
from .when import TimeError, parse_duration

# Each (label, regex over the command line). A program may be named by path; the verb must be
# a word of its own, so `kubectl get pod delete-me` is not a delete.
_V = r"(?:\s+\S+)*?\s+"
_END = r"(?=\s|$)"
_PROG = r"(?:^|/|\s)"
BUILTIN_PATTERNS: tuple[tuple[str, str], ...] = (
    ("kubectl", _PROG + r"kubectl" + _V + r"(?:apply|delete|create|replace|patch|scale|edit|drain|cordon|uncordon|"
     r"annotate|label|set|rollout\s+(?:restart|undo|resume))" + _END),
    ("terraform", _PROG + r"(?:terraform|tofu)" + _V + r"(?:apply|destroy|import|taint|untaint|state\s+(?:rm|mv|push))" + _END),
    ("helm", _PROG + r"helm" + _V + r"(?:install|upgrade|uninstall|delete|rollback)" + _END),
    ("aws", _PROG + r"aws" + _V + r"[a-z0-9-]*(?:create|delete|update|put|terminate|modify|remove|attach|detach|"
     r"run-instances|stop|start|reboot|restore|deregister|register)[a-z0-9-]*" + _END),
    ("gcloud", _PROG + r"gcloud" + _V + r"(?:create|delete|update|deploy|resize|set-iam-policy)" + _END),
    ("package", _PROG + r"(?:apt|apt-get|aptitude|yum|dnf|zypper|apk|rpm|dpkg)" + _V
     + r"(?:install|remove|purge|upgrade|dist-upgrade|full-upgrade|erase|reinstall|downgrade|add|del|-i|-e|-U)" + _END),
    ("pip install", _PROG + r"pip[0-9.]*" + _V + r"(?:install|uninstall)" + _END),
    ("systemctl", _PROG + r"systemctl" + _V + r"(?:start|stop|restart|reload|try-restart|reload-or-restart|enable|"
     r"disable|mask|unmask|daemon-reload|kill|isolate)" + _END),
    ("service", _PROG + r"service\s+\S+\s+(?:start|stop|restart|reload|force-reload)" + _END),
    ("docker", _PROG + r"(?:docker|podman|nerdctl)" + _V + r"(?:run|rm|stop|kill|restart|compose\s+(?:up|down)|"
     r"service\s+update|stack\s+deploy)" + _END),
    ("ansible", _PROG + r"ansible-playbook" + _END),
    ("iptables", _PROG + r"(?:iptables|ip6tables|nft|ufw)\s+(?:-[ADIRFNXP]|add|delete|insert|flush|allow|deny|"
     r"enable|disable)"),
    ("users", _PROG + r"(?:useradd|userdel|usermod|groupadd|groupdel|passwd|chpasswd|visudo)" + _END),
    ("reboot", _PROG + r"(?:reboot|shutdown|poweroff|halt)" + _END),
)
# Run as root, these are looking, not changing. Wrappers (sudo, su, shells, ssh) are never the
# change: what they run is recorded as its own exec and counted there.
READ_ONLY = ("ls", "cat", "less", "more", "head", "tail", "grep", "egrep", "zgrep", "find", "stat", "file",
             "ps", "top", "htop", "id", "whoami", "pwd", "echo", "printf", "df", "du", "free", "uptime",
             "journalctl", "dmesg", "w", "who", "last", "date", "hostname", "uname", "true", "false", "test",
             "[", "sleep", "clear", "history", "man", "which", "env", "printenv", "lsof", "ss", "netstat", "ip",
             "ping", "dig", "nslookup", "curl", "wget", "diff", "md5sum", "sha256sum", "wc", "sort", "uniq",
             "awk", "sed", "cut", "tr", "xargs", "tee", "vmstat", "iostat", "lsblk", "mount", "crictl", "psql",
             "mysql", "redis-cli", "git", "tmux", "screen", "vim", "vi", "nano", "emacs", "view")
# Named as stitch.program_name names them: `-bash` is bash.
WRAPPERS = ("sudo", "su", "doas", "runuser", "ssh", "bash", "sh", "dash", "zsh", "fish", "ksh", "nohup", "timeout",
            "time", "nice", "ionice", "setsid", "script", "login", "sshd")
DEFAULT_PATHS = ("/etc/*",)


class RulesError(ValueError):
    pass


@dataclass(frozen=True)
class Actor:
    """Who is expected to make changes: a pipeline's account, or an automation host."""
    name: str
    users: tuple[str, ...] = ()          # globs on the person or account a change is attributed to
    from_hosts: tuple[str, ...] = ()     # globs on the host its chains start at (empty: anywhere)
    hosts: tuple[str, ...] = ()          # globs on the hosts it may change (empty: any)

    def matches(self, person: str, account: str | None, origin: str | None) -> bool:
        if self.users and not any(fnmatch.fnmatchcase(n, g) for g in self.users for n in (person, account) if n):
            return False
        if self.from_hosts and not (origin and any(fnmatch.fnmatchcase(origin, g) for g in self.from_hosts)):
            return False
        return bool(self.users or self.from_hosts)


@dataclass(frozen=True)
class Window:
    """When changes are expected: opens on a cron schedule, for `duration`, on some hosts."""
    name: str
    cron: str
    duration: float
    tz: str = "UTC"
    hosts: tuple[str, ...] = ()          # globs (empty: every host)
    actors: tuple[str, ...] = ()         # actor names it is for (empty: every expected actor)
    trigger: Any = field(default=None, compare=False, repr=False)

    def covers(self, host: str, actor: str) -> bool:
        return ((not self.hosts or any(fnmatch.fnmatchcase(host, g) for g in self.hosts))
                and (not self.actors or actor in self.actors))

    def opened(self, t: float) -> float | None:
        """When the window that contains t opened; None when t is outside every opening.
        [opening, opening + duration): the start is in, the end is out."""
        start = datetime.fromtimestamp(t - self.duration, timezone.utc) + timedelta(microseconds=1)
        fire = self.trigger.get_next_fire_time(None, start)
        return fire.timestamp() if fire is not None and fire.timestamp() <= t else None

    def describe(self) -> str:
        return f"{self.name} ({self.cron} {self.tz}, {_span(self.duration)})"


@dataclass(frozen=True)
class Digest:
    channel: str = ""
    cron: str = "0 8 * * *"
    tz: str = "UTC"
    since: str = "24h"
    outputs: tuple[str, ...] = ()       # named top-level outputs (webhook, syslog) it also goes to


@dataclass(frozen=True)
class Rules:
    patterns: tuple[tuple[str, re.Pattern], ...] = ()
    paths: tuple[str, ...] = DEFAULT_PATHS
    ignore: frozenset[str] = frozenset(READ_ONLY)
    actors: tuple[Actor, ...] = ()
    windows: tuple[Window, ...] = ()
    digest: Digest | None = None
    since: str = "24h"
    # every pattern as one regex (None when one cannot be combined: then they are tried in turn)
    combined: re.Pattern | None = field(default=None, compare=False, repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.actors or self.windows)

    def any_pattern(self, cmd: str) -> bool:
        """Does any change pattern match? This runs on every distinct command line in the store."""
        if self.combined is not None:
            return self.combined.search(cmd) is not None
        return self.pattern_of(cmd) is not None

    def pattern_of(self, cmd: str) -> str | None:
        """The label of the first change pattern the command line matches."""
        for label, rx in self.patterns:
            if rx.search(cmd):
                return label
        return None


def cron_trigger(spec: str, tz: str):
    """A CronTrigger from five crontab fields (minute hour day month weekday), or six with
    seconds first. APScheduler's, so windows and the digest keep the same calendar rules."""
    from apscheduler.triggers.cron import CronTrigger
    fields = str(spec).split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(spec, timezone=tz)
    if len(fields) == 6:
        s, m, h, d, mo, dow = fields
        return CronTrigger(second=s, minute=m, hour=h, day=d, month=mo, day_of_week=dow, timezone=tz)
    raise ValueError(f"{spec!r} has {len(fields)} fields; a crontab line has five (minute hour day month weekday)")


# every key of the `changes` section, and of its actors, windows and digest (config.example.yaml
# documents each; a test holds it to that)
KEYS = {
    "changes": {"patterns", "builtin_patterns", "paths", "ignore", "expected_actors", "windows", "digest", "since"},
    "expected_actors": {"name", "users", "from_hosts", "hosts"},
    "windows": {"name", "cron", "duration", "timezone", "hosts", "actors"},
    "digest": {"channel", "cron", "timezone", "since", "outputs"},
}


def parse_rules(raw: Any = None) -> Rules:
    """The `changes` config section. Raises RulesError naming the key at fault."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RulesError("`changes` must be a mapping (`whodid config example` shows one)")
    _known_keys(raw, KEYS["changes"], "changes")
    patterns = list(BUILTIN_PATTERNS) if raw.get("builtin_patterns", True) else []
    if not isinstance(raw.get("builtin_patterns", True), bool):
        raise RulesError("`changes.builtin_patterns` is true or false")
    for i, p in enumerate(_strings(raw, "patterns", "changes")):
        patterns.append((f"pattern {i + 1}", p))
    compiled = []
    for label, p in patterns:
        try:
            compiled.append((label, re.compile(p)))
        except re.error as exc:
            raise RulesError(f"`changes.patterns`: {p!r} is not a regex ({exc})") from None
    actors = []
    for i, a in enumerate(_list(raw, "expected_actors", "changes")):
        where, name = _named_entry(a, "expected_actors", i)
        actor = Actor(name, tuple(_strings(a, "users", where)), tuple(_strings(a, "from_hosts", where)),
                      tuple(_strings(a, "hosts", where)))
        if not actor.users and not actor.from_hosts:
            raise RulesError(f"`{where}` ({name}) needs `users` or `from_hosts`: how else is it recognised?")
        actors.append(actor)
    names = {a.name for a in actors}
    windows = []
    for i, w in enumerate(_list(raw, "windows", "changes")):
        where, name = _named_entry(w, "windows", i)
        cron, tz = w.get("cron"), w.get("timezone", "UTC")
        if not isinstance(cron, str):
            raise RulesError(f"`{where}.cron` is required: when the window opens, like \"0 9 * * mon-fri\"")
        try:
            duration = parse_duration(str(w.get("duration", "")))
        except TimeError as exc:
            raise RulesError(f"`{where}.duration`: {exc}") from None
        try:
            trigger = cron_trigger(cron, tz)
        except Exception as exc:                        # APScheduler's ValueError, an unknown time zone
            raise RulesError(f"`{where}`: {exc}") from None
        actors_of = tuple(_strings(w, "actors", where))
        unknown = [n for n in actors_of if n not in names]
        if unknown:
            raise RulesError(f"`{where}.actors` names {unknown[0]!r}, which is not in changes.expected_actors")
        windows.append(Window(name, cron, duration, tz, tuple(_strings(w, "hosts", where)), actors_of, trigger))
    digest = None
    if raw.get("digest") is not None:
        d = raw["digest"]
        if not isinstance(d, dict):
            raise RulesError("`changes.digest` is a mapping with channel, cron, timezone, since")
        _known_keys(d, KEYS["digest"], "changes.digest")
        digest = Digest(channel=str(d.get("channel", "")), cron=str(d.get("cron", "0 8 * * *")),
                        tz=str(d.get("timezone", "UTC")), since=str(d.get("since", "24h")),
                        outputs=tuple(_strings(d, "outputs", "changes.digest")))
        if not digest.channel and not digest.outputs:
            raise RulesError("`changes.digest.channel` is required: where the digest is posted (or `outputs`, "
                             "the names of top-level outputs it goes to instead)")
        try:
            cron_trigger(digest.cron, digest.tz)
            parse_duration(digest.since)
        except Exception as exc:
            raise RulesError(f"`changes.digest`: {exc}") from None
    since = str(raw.get("since", "24h"))
    try:
        parse_duration(since)
    except TimeError as exc:
        raise RulesError(f"`changes.since`: {exc}") from None
    try:
        combined = re.compile("|".join(f"(?:{rx.pattern})" for _, rx in compiled) or r"(?!)")
    except re.error:                # a configured regex with global flags, or a group name used twice
        combined = None
    return Rules(patterns=tuple(compiled), combined=combined, paths=tuple(_strings(raw, "paths", "changes", DEFAULT_PATHS)),
                 ignore=frozenset(_strings(raw, "ignore", "changes", READ_ONLY)), actors=tuple(actors),
                 windows=tuple(windows), digest=digest, since=since)


def _named_entry(item: Any, part: str, i: int) -> tuple[str, str]:
    """(where, name) of the i-th entry of changes.<part>: a mapping of known keys with a name."""
    where = f"changes.{part}[{i}]"
    if not isinstance(item, dict):
        raise RulesError(f"`{where}` is a mapping with {', '.join(sorted(KEYS[part]))}")
    _known_keys(item, KEYS[part], where)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise RulesError(f"`{where}.name` is required")
    return where, name


def _known_keys(raw: dict, known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            raise RulesError(f"unknown key `{where}.{key}`; expected one of {', '.join(sorted(known))}")


def _list(raw: dict, key: str, where: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise RulesError(f"`{where}.{key}` must be a list")
    return value


def _strings(raw: dict, key: str, where: str, default: tuple[str, ...] = ()) -> list[str]:
    if key not in raw:
        return list(default)
    value = _list(raw, key, where)
    if not all(isinstance(v, str) for v in value):
        raise RulesError(f"`{where}.{key}` must be a list of strings")
    return value


# --- classification (pure) ------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    planned: bool
    reason: str              # short: "human, not a pipeline", "outside window", "host not in scope", ...
    detail: str              # for people: which actor, which window, what is missing
    actor: str | None = None
    window: str | None = None


def classify(t: float, host: str, person: str | None, account: str | None, origin: str | None, by_login: bool,
             rules: Rules) -> Verdict:
    """Planned or not, and why. `person` is None when the evidence names no one (a shared
    account, root, a service): then only the account and origin can match an expected actor."""
    actor = next((a for a in rules.actors if a.matches(person, account, origin)), None)
    if actor is None:
        if not rules.configured:
            return Verdict(False, "no plan configured", "no expected actors or change windows are configured "
                           "(changes.expected_actors, changes.windows)")
        if by_login:
            someone = f"{person} logged in" if person else f"someone logged in as {account or '?'} (person unknown)"
            return Verdict(False, "human, not a pipeline", f"{someone} and did it by hand; no expected actor matches")
        return Verdict(False, "not an expected actor", f"{person or 'an unknown person'} (account {account or '?'}) "
                       "is not among changes.expected_actors")
    if actor.hosts and not any(fnmatch.fnmatchcase(host, g) for g in actor.hosts):
        return Verdict(False, "host not in scope", f"{host} is not among {actor.name}'s hosts "
                       f"({', '.join(actor.hosts)})", actor=actor.name)
    windows = [w for w in rules.windows if w.covers(host, actor.name)]
    if not windows:
        return Verdict(False, "host not in scope", f"no change window covers {host} for {actor.name}",
                       actor=actor.name)
    for w in windows:
        if w.opened(t) is not None:
            return Verdict(True, "planned", f"{actor.name} in {w.name}", actor=actor.name, window=w.name)
    return Verdict(False, "outside window", f"{actor.name} acted outside "
                   + "; ".join(w.describe() for w in windows), actor=actor.name)


# --- gathering (reads the store through the tracer) -----------------------------------------

@dataclass
class Change:
    ts: float
    host: str
    proc: int
    pid: int
    what: str                # "command" or "file"
    subject: str             # the command line, or the path changed
    kind: str                # why it counts: a pattern's label, "as root", "edited /etc/..."
    person: str              # the person, or "person unknown": an account is never the person
    account: str | None
    origin: str | None       # the host the chain starts at
    by_login: bool           # someone logged in (rather than a scheduler or service)
    how: str
    chain: str               # the trace's one-line summary
    verdict: Verdict
    target: Target | None = None     # the exact exec or file change, for a button that shows it
    confidence: str = OBSERVED       # the trace's: observed, inferred or unknown (docs/trace-json.md)

    @property
    def known(self) -> bool:
        """Whether the evidence names a person (else `person` only says whose account it ran as)."""
        return self.confidence != UNKNOWN

    @property
    def who(self) -> str:
        """Whom the review groups it under: the person, or "person unknown (as root)" - the
        unknowns of different accounts are not one person, and each keeps its own how."""
        return self.person if self.known else f"{PERSON_UNKNOWN} (as {self.account or '?'})"

    def key(self) -> tuple[str, str, str]:
        return self.person, self.host, self.subject


@dataclass
class Review:
    since: float
    until: float
    host: str | None
    user: str | None
    changes: list[Change]            # oldest first
    configured: bool
    truncated: bool = False

    @property
    def unplanned(self) -> list[Change]:
        return [c for c in self.changes if not c.verdict.planned]

    @property
    def planned(self) -> list[Change]:
        return [c for c in self.changes if c.verdict.planned]

    def headline(self) -> str:
        # "person unknown" is no one: counted apart, never as one more person
        people = len({c.person for c in self.changes if c.known})
        unknown = sum(1 for c in self.changes if not c.known)
        hosts = len({c.host for c in self.changes})
        u = len(self.unplanned)
        by = f" by {people} {'person' if people == 1 else 'people'}" if people or not unknown else ""
        if unknown:
            by += f", the person unknown for {unknown},"
        return (f"{len(self.changes)} change{'s' if len(self.changes) != 1 else ''} ({u} unplanned){by} "
                f"on {hosts} host{'s' if hosts != 1 else ''}")


@dataclass
class Row:
    """Identical changes by one person on one host: a line in the review, with a trace to open."""
    person: str
    host: str
    subject: str
    what: str
    kind: str
    count: int
    first: float
    last: float
    verdict: Verdict
    how: str
    chain: str
    target: Target | None = None     # the latest change's exec or file change (what its Trace button pins)


def rows(changes: list[Change]) -> list[Row]:
    """Group by (person, host, subject, verdict reason); newest last within each."""
    out: dict[tuple, Row] = {}
    for c in changes:
        key = (c.who, c.host, c.subject, c.verdict.planned, c.verdict.reason)
        r = out.get(key)
        if r is None:
            out[key] = Row(c.who, c.host, c.subject, c.what, c.kind, 1, c.ts, c.ts, c.verdict, c.how, c.chain,
                           c.target)
        else:
            r.count += 1
            r.first, r.last = min(r.first, c.ts), max(r.last, c.ts)
            if c.ts >= r.last:
                r.verdict, r.how, r.chain, r.target = c.verdict, c.how, c.chain, c.target
    return list(out.values())


def by_person(changes: list[Change]) -> list[tuple[str, list[tuple[str, list[Row]]]]]:
    """[(person, [(host, rows)])]: people with the most unplanned changes first, then the most
    changes; hosts by their latest change; rows oldest first."""
    grouped: dict[str, dict[str, list[Row]]] = {}
    for r in rows(changes):
        grouped.setdefault(r.person, {}).setdefault(r.host, []).append(r)
    weight = Counter()
    for c in changes:
        weight[c.who] += 1 + (10**6 if not c.verdict.planned else 0)
    out = []
    for person in sorted(grouped, key=lambda p: (-weight[p], p)):
        hosts = sorted(grouped[person].items(), key=lambda kv: -max(r.last for r in kv[1]))
        out.append((person, [(h, sorted(rs, key=lambda r: r.first)) for h, rs in hosts]))
    return out


def planned_by_actor(changes: list[Change]) -> list[dict[str, Any]]:
    """One line per expected actor: how many changes, on how many hosts, of what, when."""
    out: dict[str, dict[str, Any]] = {}
    for c in changes:
        if not c.verdict.planned:
            continue
        a = out.setdefault(c.verdict.actor or c.who, {"actor": c.verdict.actor or c.who, "count": 0,
                                                          "hosts": set(), "kinds": Counter(), "first": c.ts,
                                                          "last": c.ts, "windows": set()})
        a["count"] += 1
        a["hosts"].add(c.host)
        a["kinds"][_short(c.subject)] += 1
        a["first"], a["last"] = min(a["first"], c.ts), max(a["last"], c.ts)
        a["windows"].add(c.verdict.window)
    return sorted(out.values(), key=lambda a: -a["count"])


def _short(subject: str, words: int = 3) -> str:
    parts = subject.split()
    if parts and "/" in parts[0]:
        parts[0] = parts[0].rsplit("/", 1)[-1]
    return " ".join(parts[:words])


def review(tracer, rules: Rules, since: float, until: float, host: str | None = None, user: str | None = None,
           limit: int = 5000, progress: Callable[[int, int], None] | None = None) -> Review:
    """The changes in [since, until], attributed and classified, oldest first."""
    store = tracer.store
    # (proc, ts) -> (proc, "command" or "file", subject, kind, the exec's Image or the file change)
    found: dict[tuple[int, float], tuple[Any, str, str, str, Any]] = {}
    truncated = False

    hits = store.execs_of_commands(rules.any_pattern, since=since, until=until, host_glob=host, limit=limit + 1)
    truncated |= len(hits) > limit
    for proc, image in hits[:limit]:
        if program_name(image.argv) in WRAPPERS:
            continue
        found[(proc.id, image.ts)] = (proc, "command", image.cmd, rules.pattern_of(image.cmd) or "change", image)
    root = store.privileged_commands([host] if host else [], since, until, limit=limit + 1)
    truncated |= len(root) > limit
    for proc, image in root[:limit]:
        prog = program_name(image.argv)
        if prog in WRAPPERS or prog in rules.ignore or (proc.id, image.ts) in found:
            continue
        found[(proc.id, image.ts)] = (proc, "command", image.cmd, "as root", image)
    for glob in rules.paths:
        files = store.search_files(glob, glob=True, since=since, until=until, host_glob=host, limit=limit + 1)
        truncated |= len(files) > limit
        for proc, ch in files[:limit]:
            path = ch["path2"] or ch["path"] if ch["op"] == "rename" else ch["path"]
            found[(proc.id, ch["ts"])] = (proc, "file", path, f"{ch['op']} {path}", ch)
    changes: list[Change] = []
    memo: dict[tuple, Any] = {}
    items = sorted(found.items(), key=lambda kv: kv[0][1])
    for n, ((_, ts), (proc, what, subject, kind, detail)) in enumerate(items, 1):
        if progress and n % 200 == 0:
            progress(n, len(items))
        ses = detail.ses if what == "command" else None
        # one audit session, one attribution - where a session id names one session: on a boot
        # whose ids may repeat (auditd's, across a reboot it did not see) two people's share one
        key = ("ses", proc.boot, ses) if ses is not None and ses != AUID_UNSET \
            and not tracer.session_ids_may_repeat(proc.boot) else ("proc", proc.id)
        hit = memo.get(key)
        if hit is None:
            if what == "command":
                tr = tracer.trace(proc, image=detail)
            else:
                tr = tracer.trace(proc, change=detail)
            who = tr.attributed
            hit = memo[key] = (who, tr.summary)
        who, chain = hit
        # an unknown person is no one: never matched by the words "person unknown"
        person = who.user if who.known else None
        if what == "file" and who.login_time is None:
            # a service rewriting its own file under /etc (resolv.conf, a cache) is not a change
            # anyone made; files count when a person's session or an expected actor wrote them
            if not any(a.matches(person, who.account, who.host) for a in rules.actors):
                continue
        if user and user not in (person, who.account):
            continue
        verdict = classify(ts, proc.host, person, who.account, who.host, who.login_time is not None, rules)
        changes.append(Change(ts=ts, host=proc.host, proc=proc.id, pid=proc.pid, what=what, subject=subject,
                              kind=kind, person=who.user if who.known else PERSON_UNKNOWN, account=who.account, origin=who.host, confidence=who.confidence,
                              by_login=who.login_time is not None, how=who.how, chain=chain, verdict=verdict,
                              target=tracer.target(proc, detail if what == "command" else None,
                                                   detail if what == "file" else None)))
    return Review(since=since, until=until, host=host, user=user, changes=changes, configured=rules.configured,
                  truncated=truncated)


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
