"""What people type after /whodid, as a query: pure parsing, no Slack, no store.

    /whodid delete-cluster host:config-* user:jim since:24h until:2026-11-23T12:00
    /whodid "terraform destroy" since:7d
    /whodid /etc/sudoers
    /whodid help
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from whodid.tracer.when import TimeError, parse_time

KEYS = ("host", "user", "since", "until")
MAX_PATTERN = 200


class AskError(ValueError):
    pass


@dataclass(frozen=True)
class Ask:
    pattern: str
    host: str | None = None
    user: str | None = None
    since: float = 0.0            # absolute times, fixed when asked: buttons pressed later see the same window
    until: float | None = None
    since_text: str = "24h"       # as typed, for people

    def window(self) -> str:
        return f"the last {self.since_text}" if not self.until else f"{self.since_text} to {self.until}"

    def wider(self, now: float) -> "Ask":
        """The same question over a window seven times as long (at least a week, at most 90 days)."""
        span = max((self.until or now) - self.since, 1.0)
        days = min(max(span * 7, 7 * 86400), 90 * 86400) / 86400
        return replace(self, since=(self.until or now) - days * 86400, since_text=f"{days:g}d")


def parse(text: str, now: float, default_since: str = "24h") -> Ask | None:
    """The question, or None when help was asked for. Raises AskError saying what is wrong."""
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise AskError(f"could not read that ({exc}); quote a pattern with spaces: \"terraform destroy\"") from None
    if not words or words[0].lower() in ("help", "-h", "--help", "?"):
        return None
    fields: dict[str, str] = {}
    rest = []
    for word in words:
        key, sep, value = word.partition(":")
        if sep and key.lower() in KEYS:
            if not value:
                raise AskError(f"`{key}:` needs a value, like `{key}:{_EXAMPLE[key.lower()]}`")
            fields[key.lower()] = value
        else:
            rest.append(word)
    pattern = " ".join(rest).strip()
    if not pattern:
        raise AskError("what should I trace? Give a command or a file path, like `/whodid delete-cluster`")
    if len(pattern) > MAX_PATTERN:
        raise AskError(f"that pattern is {len(pattern)} characters; keep it under {MAX_PATTERN}")
    since, until, since_text = window(fields, now, default_since)
    return Ask(pattern=pattern, host=fields.get("host"), user=fields.get("user"), since=since, until=until,
               since_text=since_text)


def window(fields: dict[str, str], now: float, default_since: str) -> tuple[float, float | None, str]:
    """(since, until or None, since as typed) from a question's since: and until:."""
    since_text = fields.get("since", default_since)
    try:
        since = parse_time(since_text, now)
        until = parse_time(fields["until"], now) if "until" in fields else None
    except TimeError as exc:
        raise AskError(str(exc)) from None
    if until is not None and until <= since:
        raise AskError("`until:` is before `since:`")
    return since, until, since_text


_EXAMPLE = {"host": "config-*", "user": "jim", "since": "24h", "until": "2026-11-23T12:00"}

HELP = """*whodid* traces a command, or a change to a file, back to the person who did it - through ssh hops, sudo and shared accounts.

`/whodid PATTERN [host:GLOB] [user:NAME] [since:WHEN] [until:WHEN]`

- `PATTERN`: part of a command line (`delete-cluster`), a glob (`terraform*destroy`), or a file path (`/etc/sudoers`); quote it if it has spaces: `"kubectl delete"`
- `host:` only on these hosts (`host:prod-*`)
- `user:` only chains involving this person, login or effective user
- `since:` / `until:` a duration ago (`90m`, `24h`, `7d`) or a time (`2026-11-23T12:00`, UTC); default: the last {since}

Examples:
- `/whodid delete-cluster`
- `/whodid "kubectl delete" host:prod-* since:3d`
- `/whodid /etc/nginx/nginx.conf user:jim`

Each answer has buttons: *Widen scope* (more of the sessions around it), *Show what it started*, *Earlier activity* (the person's earlier commands; not offered when the person is unknown), *Other matches*.

`/whodid changes [since:24h] [host:GLOB] [user:NAME]` reviews what was changed in the window, by whom, and what of it was not planned - each change with a *Trace* button."""
