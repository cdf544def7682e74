"""What people type after /whodid, as a query: pure parsing, no Slack, no store.

    /whodid delete-cluster host:config-* user:jim since:24h until:2026-11-23T12:00
    /whodid "terraform destroy" since:7d
    /whodid /etc/sudoers
    /whodid help
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from whodid.tracer import Query
from whodid.tracer.destinations import parse_destination
from whodid.tracer.when import clock, iso

from .. import query
from ..query import MAX_PATTERN, Question, QueryError

AskError = QueryError          # the grammar's error, under the name the Slack app has always caught


@dataclass(frozen=True)
class Ask:
    pattern: str
    host: str | None = None
    user: str | None = None
    since: float = 0.0            # absolute times, fixed when asked: buttons pressed later see the same window
    until: float | None = None
    since_text: str = "24h"       # as typed, for people
    # connections as evidence (bot/query.py's to:, from:, listen:): kept as typed - a signed
    # value carries them as text and they are read again (tracer/destinations.py) when asked
    to: str | None = None
    from_: str | None = None
    listen: int | None = None

    def query(self, limit: int, scope: int = 0, started: bool = False) -> Query:
        """The tracer's question."""
        return Query(pattern=self.pattern, host=self.host, user=self.user, since=self.since, until=self.until,
                     scope=scope, limit=limit, started=started,
                     to=parse_destination(self.to) if self.to else None,
                     from_=parse_destination(self.from_) if self.from_ else None, listen=self.listen)

    @property
    def connection(self) -> str:
        """`connections to 10.0.5.10:6443`, or "" for a question about commands or files."""
        if self.to:
            return f"connections to {self.to}"
        if self.from_:
            return f"connections from {self.from_}"
        return f"listening on port {self.listen}" if self.listen else ""

    @property
    def subject(self) -> str:
        """What was asked about, for people: the pattern, the connections, or both."""
        if not self.connection:
            return self.pattern
        return f"{self.pattern} with {self.connection}" if self.pattern else self.connection

    def window(self) -> str:
        # with an end, both ends as times: since_text may be a duration ("3d") and until is a number
        return f"the last {self.since_text}" if not self.until else f"{clock(self.since)} to {clock(self.until)}"

    def wider(self, now: float) -> "Ask":
        """The same question over a window seven times as long (at least a week, at most 90 days)."""
        span = max((self.until or now) - self.since, 1.0)
        days = min(max(span * 7, 7 * 86400), 90 * 86400) / 86400
        return replace(self, since=(self.until or now) - days * 86400, since_text=f"{days:g}d")


def parse(text: str, now: float, default_since: str = "24h") -> Ask | None:
    """The question, or None when help was asked for. Raises AskError saying what is wrong.
    The words are the query language's (bot/query.py, docs/query.md)."""
    words = query.words_of(text)
    if not words or (not words[0].quoted and words[0].text.lower() in ("help", "-h", "--help", "?")):
        return None
    q = query.parse(words, "slack-trace", now, {"since": default_since}, surface="slack")
    return Ask(pattern=q.pattern, host=q.host, user=q.user, since=q.since, until=q.until,
               since_text=q.texts["since"], to=q.texts.get("to"), from_=q.texts.get("from"), listen=q.listen)


def question(ask: Ask) -> Question:
    """The question an Ask carries, with its window as the absolute times it was fixed to: what
    format() shows on the trace page, and what parse() reads back to the same question."""
    texts = {"since": iso(ask.since)}
    if ask.until is not None:
        texts["until"] = iso(ask.until)
    if ask.host:
        texts["host"] = ask.host
    if ask.user:
        texts["user"] = ask.user
    for key, value in (("to", ask.to), ("from", ask.from_), ("listen", ask.listen)):
        if value:
            texts[key] = str(value)
    return Question(command="slack-trace", pattern=ask.pattern, host=ask.host, user=ask.user,
                    since=ask.since, until=ask.until, texts=texts,
                    to=parse_destination(ask.to) if ask.to else None,
                    from_=parse_destination(ask.from_) if ask.from_ else None, listen=ask.listen)


def canonical(ask: Ask) -> str:
    """The question in the query language's canonical form: `delete-cluster since:... host:...`."""
    return query.format(question(ask))


_HELP = """*whodid* traces a command, or a change to a file, back to the person who did it - through ssh hops, sudo and shared accounts.

`/whodid PATTERN [host:GLOB] [user:NAME] [since:WHEN] [until:WHEN] [to:ADDR[:PORT]] [from:ADDR[:PORT]] [listen:PORT]`

- `PATTERN`: part of a command line (`delete-cluster`), a glob (`terraform*destroy`), or a file path (`/etc/sudoers`); quote it if it has spaces: `"kubectl delete"`
{keys}
- default window: the last {since}; each key can also be written `--since 3d`; quote a word with a colon to search for it (`"nginx:latest"`), or put it after `--`

Examples:
- `/whodid delete-cluster`
- `/whodid "kubectl delete" host:prod-* since:3d`
- `/whodid /etc/nginx/nginx.conf user:jim`
- `/whodid to:eks.us-east-1.amazonaws.com:443` (who connected to the API: a script, an SDK; one of `to:`, `from:`, `listen:` stands for the pattern)

Each answer has buttons: *Widen scope* (more of the sessions around it), *Show what it started*, *Earlier activity* (the person's earlier commands; not offered when the person is unknown), *Other matches*.

`/whodid changes [since:24h] [until:WHEN] [host:GLOB] [user:NAME]` reviews what was changed in the window, by whom, and what of it was not planned - each change with a *Trace* button."""


# the key lines come from the grammar's registry, so the help cannot drift from what is parsed;
# the usage line above is checked against it (tests/test_query.py)
HELP = _HELP.replace("{keys}", "\n".join(
    f"- `{k.name}:` {k.help}" + (": a duration ago (`90m`, `1h30m`, `7d`) or a time (`2026-11-23T12:00`, UTC)"
                                 if k.kind == "time"
                                 else f" (`{k.name}:{k.example}`)")
    for k in query.keys_for("slack-trace")))
