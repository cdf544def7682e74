"""The query language: what people type after `whodid trace`, `whodid changes` and `/whodid`,
parsed in one place (docs/query.md). Pure: words in, a Question out, no store, no Slack.

    delete-cluster host:config-* since:3d          the words form
    delete-cluster --host 'config-*' --since 3d    the flag form (also --since=3d); mixed is fine

Rules:
- KEYS is the registry: one row per key (its kind, the field of Question it fills, an example,
  a help line, the commands it applies to). Parsing, errors, the CLI's and Slack's help and
  docs/query.md's keys table all come from it; a new key is one row plus its Question field.
- A key is given at most once; the same key twice is an error naming both values.
- A word that looks like `name:value` (a letter first, no `//` after the colon) is a key; when
  no key has that name it is an error with a did-you-mean, never silently a pattern. Paths
  (`/etc/a:b`), URLs (`https://x`) and times (`12:30`) stay pattern words. After `--`, every
  word is a pattern word; in Slack, a quoted word is too (the shell takes the CLI's quotes away).
- Bad values are one line naming the key as it was typed, the value, and the accepted forms.
- format(question) is the canonical text of a question, and parse reads it back to the same one.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from whodid.tracer.destinations import Destination, DestinationError, parse_destination
from whodid.tracer.when import TIME_FORMS, TimeError, iso, parse_duration, parse_time

MAX_PATTERN = 200
MAX_VALUE = {"glob": 200, "name": 100, "text": 200}
# a word is a key's if it reads name:value with a name like a key's, and is not a URL (x://)
_KEYLIKE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(?!//)(.*)$", re.S)
_FLAG = re.compile(r"^--([A-Za-z][A-Za-z0-9_-]*)(?:=(.*))?$", re.S)
# punctuation that looks like `:` or `-` (CJK keyboards, "smart dashes" that turn -- into an em
# dash, text pasted from documents): before a key's name it is a typo for the key, which as a
# pattern word would silently drop the filter (docs/query.md)
_COLONS = "\uff1a\ua789\u2236\ufe55\ufe13\u02d0"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_LOOKS_KEY = re.compile(rf"^(?:([{_DASHES}]+|-[{_DASHES}]|[{_DASHES}]-)([A-Za-z][A-Za-z0-9_-]*)(?:=.*)?"
                        rf"|([A-Za-z][A-Za-z0-9_-]*)([{_COLONS}]).*)$", re.S)
# spaces the shell and shlex do not split on (no-break, ideographic, zero-width)
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]")
# Slack's clients and phones turn quotes curly; the shell-like reading wants them straight
_CURLY = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


class QueryError(ValueError):
    """A question that cannot be read; its text is one line for the person who asked."""


@dataclass(frozen=True)
class Key:
    name: str                     # as typed: `name:` or `--name`
    kind: str                     # time | duration | glob | name | int | bool | text | destination
    metavar: str                  # for usage lines: host:GLOB, --host GLOB
    example: str
    help: str
    commands: frozenset[str]      # the commands it applies to (COMMANDS)
    field: str = ""               # the Question field it fills (default: its name)
    lo: int | None = None         # int kinds: the accepted range
    hi: int | None = None
    why: str = ""                 # int kinds: what the number counts, for its range error
    stands_for_pattern: bool = False   # given, the command needs no pattern (`to:`: the connection is the match)
    group: str = ""               # keys of one group are asked one at a time (to:, from:, listen:)

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def word(self) -> str:
        return f"{self.name}:"

    @property
    def attr(self) -> str:
        return self.field or self.name


TRACES = frozenset({"trace", "slack-trace"})
ALL = frozenset({"trace", "slack-trace", "changes"})

KEYS: tuple[Key, ...] = (
    Key("since", "time", "WHEN", "3d", "start of the window", ALL),
    Key("until", "time", "WHEN", "2026-11-23T12:00", "end of the window (default: now)", ALL),
    Key("host", "glob", "GLOB", "config-*", "only on hosts matching this glob", ALL),
    Key("user", "name", "NAME", "jim", "only what involves this person, login user or effective user", ALL),
    Key("scope", "int", "0-3", "2", "0: the causal chain only; 1: plus what the command started and the other "
        "commands of the chain's shells; 2: plus the whole login sessions; 3: plus the person's other "
        "sessions across hosts", frozenset({"trace"}), lo=0, hi=3, why="how much around the chain"),
    Key("limit", "int", "N", "20", "at most N matches, newest first", frozenset({"trace"}), lo=1, hi=1000,
        why="it counts matches, newest first; each is a whole trace"),
    # connections as evidence (docs/attribution.md "Connections"): with one of these the
    # connection is the match, one per process, and a pattern is optional (both must hold)
    Key("to", "destination", "ADDR[:PORT]", "10.0.5.10:6443", "processes that connected to this address, "
        "network (10.0.5.0/24) or name as the host saw it when it connected (eks-prod, *.amazonaws.com)",
        TRACES, stands_for_pattern=True, group="connection"),
    Key("from", "destination", "ADDR[:PORT]", "203.0.113.7", "connections that came in from this address or "
        "network; PORT is the local port they reached (203.0.113.0/24:22)", TRACES, field="from_",
        stands_for_pattern=True, group="connection"),
    Key("listen", "int", "PORT", "8080", "processes that opened a listening TCP socket on this port", TRACES,
        lo=1, hi=65535, why="a TCP port", stands_for_pattern=True, group="connection"),
)


@dataclass(frozen=True)
class Command:
    name: str
    shown: str                    # how people start it, for examples in messages
    pattern: bool                 # takes a pattern (required unless a key stands for it)
    example: str


COMMANDS = {
    "trace": Command("trace", "whodid trace", True, "whodid trace delete-cluster"),
    "slack-trace": Command("slack-trace", "/whodid", True, "/whodid delete-cluster"),
    "changes": Command("changes", "whodid changes", False, "changes since:24h host:web-* user:jim"),
}


@dataclass(frozen=True)
class Question:
    """A parsed question. Times are absolute (fixed when asked); `texts` keeps every key's
    value as typed (or defaulted), for people and for format()."""
    command: str
    pattern: str = ""
    since: float | None = None
    until: float | None = None
    host: str | None = None
    user: str | None = None
    scope: int | None = None
    limit: int | None = None
    to: Destination | None = None
    from_: Destination | None = None
    listen: int | None = None
    texts: Mapping[str, str] = field(default_factory=dict)
    given: frozenset[str] = field(default=frozenset(), compare=False)     # the keys typed, not defaulted


@dataclass(frozen=True)
class Word:
    text: str
    quoted: bool = False          # Slack: the word was in quotes, so it is a pattern word


def keys_for(command: str, keys: Sequence[Key] = KEYS) -> list[Key]:
    return [k for k in keys if command in k.commands]


def words_of(text: str) -> list[Word]:
    """Slack's text as words, shell-like (shlex's rules), each saying whether it opened with a
    quote: `"nginx:latest"` is a pattern word, `since:"1h 30m"` a key with a spaced value."""
    text = (text or "").translate(_CURLY)
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split = True
    lex.commenters = ""
    out = []
    try:
        while True:
            start = lex.instream.tell()
            tok = lex.get_token()
            if tok is None:
                break
            raw = text[start:lex.instream.tell()].lstrip()
            out.append(Word(tok, quoted=raw[:1] in ("'", '"')))
    except ValueError as exc:
        raise QueryError(f"could not read that ({exc}); quote a pattern with spaces: \"terraform destroy\"") from None
    return out


def parse_text(text: str, command: str, now: float, defaults: Mapping[str, str] | None = None,
               **kw) -> Question:
    """Slack's form: shell-like words, quoted words are pattern words, unknown --words too."""
    return parse(words_of(text), command, now, defaults, surface="slack", **kw)


def parse(words: Iterable[str | Word], command: str, now: float, defaults: Mapping[str, str] | None = None, *,
          surface: str = "cli", keys: Sequence[Key] = KEYS, into: type = Question,
          options: Sequence[str] = ()) -> Question:
    """The question these words ask of `command`, or QueryError saying what is wrong.
    `defaults` are key values as text (since: 24h), used when the key is not typed. On the CLI
    (surface="cli") an unknown --word is an error; in Slack it is part of the pattern. `options`:
    the command's other options (--json), for the CLI's did-you-mean."""
    cmd = COMMANDS[command]
    mine = {k.name: k for k in keys_for(command, keys)}
    every = {k.name: k for k in keys}
    typed: dict[str, tuple[str, str]] = {}        # key -> (value text, as spelled: `since:` or `--since`)
    pattern: list[str] = []
    items = [w if isinstance(w, Word) else Word(w) for w in words]
    i = 0
    while i < len(items):
        w = items[i]
        i += 1
        if w.quoted:
            pattern.append(w.text)
            continue
        if w.text == "--":
            pattern += [x.text for x in items[i:]]
            break
        _lookalike(w.text, every)
        flag = _FLAG.match(w.text)
        if flag:
            name, value = flag.group(1).lower(), flag.group(2)
            if name not in every:
                if surface == "cli":
                    raise QueryError(_unknown(f"--{flag.group(1)}", command, mine, every, surface, True, options))
                pattern.append(w.text)
                continue
            key = _applies(every[name], command, mine, f"--{name}")
            if value is None:
                if key.kind == "bool":
                    value = "yes"
                elif i < len(items) and (items[i].quoted or not items[i].text.startswith("-")
                                         or re.match(r"-[0-9.]", items[i].text)):
                    # the next option is a forgotten value, not the value (`--host --json`);
                    # a value starting with - is given as --host=-x or host:-x; a negative
                    # number is a value, as argparse has it (--limit -1: its range error)
                    value = items[i].text
                    i += 1
                else:
                    raise QueryError(_needs_value(key, key.flag))
            _put(typed, key, value, key.flag)
            continue
        m = _KEYLIKE.match(w.text)
        if m:
            name, value = m.group(1).lower(), m.group(2)
            if name not in every:
                raise QueryError(_unknown(f"{m.group(1)}:", command, mine, every, surface))
            key = _applies(every[name], command, mine, f"{name}:")
            _put(typed, key, value, key.word)
            continue
        _hidden_key(w.text, every)
        if surface == "cli" and w.text.startswith("-") and w.text != "-":
            raise QueryError(_unknown(w.text, command, mine, every, surface, True, options))
        pattern.append(w.text)
    return _build(cmd, mine, typed, pattern, now, defaults or {}, into)


def _lookalike(word: str, every: dict[str, Key]) -> None:
    """QueryError for a key written with a lookalike of `:` or `--` (`since\uff1a3d`, `\u2014since`)."""
    m = _LOOKS_KEY.match(word)
    if not m:
        return
    name = m.group(2) or m.group(3)
    if name.lower() not in every:
        return
    odd = next(c for c in word if c in _COLONS + _DASHES)
    right = f"--{name}" if m.group(2) else f"{name}:"
    raise QueryError(f"`{word}` has {odd} (U+{ord(odd):04X}) where the key `{right}` has "
                     f"{'plain dashes' if m.group(2) else 'a plain colon'}; type `{right}`, or put the word after `--` "
                     "to search for it")


def _hidden_key(word: str, every: dict[str, Key]) -> None:
    """QueryError for a key glued to the word before it by a space that is not one to the shell
    or shlex (no-break, ideographic, zero-width: pasted text, option-space): `x\u00a0since:3d`
    would be one pattern word and its filter dropped."""
    odd = _ODD_SPACE.search(word)
    if not odd:
        return
    for piece in _ODD_SPACE.split(word):
        m = _KEYLIKE.match(piece) or _FLAG.match(piece)
        if m and m.group(1).lower() in every:
            raise QueryError(f"{word!r} has a space that is not a plain one (U+{ord(odd.group()):04X}) before "
                             f"`{piece}`; type a plain space, or put the word after `--` to search for it")


def _put(typed: dict, key: Key, value: str, spelled: str) -> None:
    if key.name in typed:
        raise QueryError(f"{key.word} is given twice ({typed[key.name][0]!r} and {value!r}); keep one")
    if value == "" and key.kind != "bool":
        raise QueryError(_needs_value(key, spelled))
    typed[key.name] = (value, spelled)


def _needs_value(key: Key, spelled: str) -> str:
    return f"`{spelled}` needs a value, like `{_spell(key, spelled, key.example)}`"


def _spell(key: Key, spelled: str, value: str) -> str:
    return f"{key.flag} {value}" if spelled.startswith("--") else f"{key.name}:{value}"


def _applies(key: Key, command: str, mine: dict[str, Key], spelled: str) -> Key:
    if key.name not in mine:
        raise QueryError(f"`{spelled}` does not apply to {COMMANDS[command].shown}; it takes "
                         f"{_listing(mine)}")
    return key


def _listing(mine: dict[str, Key]) -> str:
    return ", ".join(f"{k.name}:" for k in mine.values()) or "no keys"


def _unknown(spelled: str, command: str, mine: dict[str, Key], every: dict[str, Key], surface: str,
             flag: bool = False, options: Sequence[str] = ()) -> str:
    cmd = COMMANDS[command]
    bare = spelled.lstrip("-").rstrip(":").split("=", 1)[0].lower()
    names = list(mine) or list(every)
    if flag:
        names += [o[2:] for o in options if o.startswith("--")]
    hint = difflib.get_close_matches(bare, names, n=1, cutoff=0.6)
    said = (f"`--{hint[0]}`" if flag or hint[0] not in mine else f"`{hint[0]}:`") if hint else ""
    where = "quote it or put it after `--`" if surface == "slack" else "put it after `--`"
    if not cmd.pattern:
        # changes takes no pattern: every word is a key (the message this command always gave)
        return (f"`{spelled}` is not one of {_listing(mine)}" + (f" (did you mean {said}?)" if said else "")
                + f" - like `{cmd.example}`")
    what = "option" if flag else "key"
    return (f"unknown {what} `{spelled}`" + (f"; did you mean {said}?" if said else ";")
            + f" keys for {command}: {_listing(mine)} - to search for a word "
            f"{'starting with -' if flag else 'with a colon'}, {where}")


def _value(key: Key, text: str, spelled: str, now: float) -> Any:
    """The typed value of one key, or QueryError naming the key, the value and the forms."""
    name = spelled if spelled.startswith("--") else key.word
    if key.kind == "time":
        try:
            return parse_time(text, now)
        except TimeError as exc:
            msg = str(exc)
            raise QueryError(f"{name} {msg}" + ("" if "neither" in msg or "100 years" in msg
                                                else f"; use {TIME_FORMS}")) from None
    if key.kind == "duration":
        try:
            return parse_duration(text)
        except TimeError as exc:
            raise QueryError(f"{name} {exc}") from None
    if key.kind == "int":
        try:
            if not re.fullmatch(r"-?[0-9]+", text.strip()):      # int() also takes 8_0, +8, \u0668\u0660
                raise ValueError(text)
            n = int(text.strip())
        except ValueError:
            raise QueryError(f"{name} invalid int value {text!r}: use a whole number from {key.lo} to {key.hi}, "
                             f"like {_spell(key, spelled, key.example)}") from None
        if key.lo is not None and n < key.lo:
            raise QueryError(f"{name} must be at least {key.lo} ({key.why}); got {n}")
        if key.hi is not None and n > key.hi:
            raise QueryError(f"{name} must be at most {key.hi} ({key.why}); got {n}"
                             if key.hi - (key.lo or 0) > 10 else
                             f"{name} invalid choice {n}: use {key.lo} to {key.hi} ({key.help})")
        return n
    if key.kind == "destination":
        try:
            return parse_destination(text)
        except DestinationError as exc:
            raise QueryError(f"{name} {exc}") from None
    if key.kind == "bool":
        low = text.strip().lower()
        if low in ("yes", "true", "on", "1"):
            return True
        if low in ("no", "false", "off", "0"):
            return False
        raise QueryError(f"{name} {text!r} is not yes or no")
    limit = MAX_VALUE.get(key.kind, 200)
    if len(text) > limit:
        raise QueryError(f"{name} is {len(text)} characters; keep it under {limit}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise QueryError(f"{name} {text!r} has control characters; a {key.kind} is printable text")
    return text


def _build(cmd: Command, mine: dict[str, Key], typed: dict, pattern: list[str], now: float,
           defaults: Mapping[str, str], into: type) -> Question:
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    for name, key in mine.items():
        if name in typed:
            text, spelled = typed[name]
        elif name in defaults and defaults[name] is not None:
            text, spelled = str(defaults[name]), key.word
        else:
            continue
        values[key.attr] = _value(key, text, spelled, now)
        texts[name] = text
    joined = " ".join(pattern).strip()
    if cmd.pattern:
        if not joined and not any(mine[n].stands_for_pattern for n in typed):
            raise QueryError(f"a pattern is required: what should I trace? Give a command or a file path, "
                             f"like `{cmd.example}`")
        if len(joined) > MAX_PATTERN:
            raise QueryError(f"that pattern is {len(joined)} characters; keep it under {MAX_PATTERN}")
    elif joined:
        raise QueryError(_unknown(pattern[0], cmd.name, mine, mine, "cli"))
    for group in {k.group for k in mine.values() if k.group}:
        asked = [typed[n][1] for n, k in mine.items() if k.group == group and n in typed]
        if len(asked) > 1:
            one = ", ".join(f"{k.name}:" for k in mine.values() if k.group == group)
            raise QueryError(f"{' and '.join(f'`{a}`' for a in asked)} ask two questions; ask by one of {one} "
                             "at a time")
    since, until = values.get("since"), values.get("until")
    if since is not None and until is not None and until <= since:
        # since: may be the default, counted back from now, not from until: - say so
        raise QueryError(f"`until:` is before `since:` ({texts['until']!r} is before {texts['since']!r}"
                         + ("" if "since" in typed else ", the default") + "); give a since: before the until:")
    if since is not None and until is None and since >= now:
        # an empty window would answer "no match" as if the store had been searched
        raise QueryError(f"`since:` {texts['since']!r} is not in the past; give a duration ago (24h) or an "
                         "earlier time, or an `until:` too for a window ahead")
    return into(command=cmd.name, pattern=joined, texts=texts, given=frozenset(typed), **values)


# first words /whodid reads as its own (help, the changes review): a pattern starting with one
# is written after `--`, so the trace page's question pasted in Slack traces it
_SLACK_WORDS = ("help", "?", "changes")


def _needs_dashes(word: str) -> bool:
    return word == "--" or word.startswith("-") or bool(_KEYLIKE.match(word))


def format(q: Question, keys: Sequence[Key] = KEYS) -> str:
    """The canonical text of a question: the pattern, then each key in registry order as
    key:value - with `--` before the pattern when a word of it would read as a key or option.
    parse(shlex.split(format(q))) asks the same question (same fields, times as typed)."""
    out = []
    for k in keys_for(q.command, keys):
        text = q.texts.get(k.name)
        if text is None:
            value = getattr(q, k.attr, None)
            if value is None:
                continue
            text = (iso(value) if k.kind == "time" else str(value).lower() if k.kind == "bool"
                    else value.text if k.kind == "destination" else str(value))
        out.append(f"{k.name}:{shlex.quote(text)}")     # the value quoted, not the word: in Slack a
                                                         # quoted word is a pattern word
    if q.pattern:
        words = q.pattern.split()
        quoted = shlex.quote(q.pattern)
        if any(_needs_dashes(w) for w in words) or words[0].lower() in _SLACK_WORDS:
            # words apart read as one pattern only when single spaces join them (`-x  y`)
            out += ["--", *([shlex.quote(w) for w in words] if " ".join(words) == q.pattern else [quoted])]
        else:
            out.insert(0, quoted)
    return " ".join(out)


def usage(command: str, keys: Sequence[Key] = KEYS) -> str:
    """`PATTERN [host:GLOB] [user:NAME] ...` for a command's usage line."""
    parts = ["PATTERN"] if COMMANDS[command].pattern else []
    return " ".join(parts + [f"[{k.name}:{k.metavar}]" for k in keys_for(command, keys)])


def help_lines(command: str, keys: Sequence[Key] = KEYS) -> list[str]:
    """One line per key of a command: `key:METAVAR` (or --key METAVAR) and its help, for the
    CLI's and Slack's help - generated here so neither can drift from the registry."""
    out = []
    for k in keys_for(command, keys):
        forms = f": {TIME_FORMS}" if k.kind == "time" else ""
        out.append(f"{k.name}:{k.metavar}  (or {k.flag} {k.metavar})  {k.help}{forms}; e.g. {k.name}:{k.example}")
    return out


def is_flag(token: str, keys: Sequence[Key] = KEYS) -> Key | None:
    """The key a CLI token names as a flag (`--since`, `--since=3d`), if any: the CLI hands
    these, with their values, to parse rather than to argparse."""
    m = _FLAG.match(token)
    if not m:
        return None
    return next((k for k in keys if k.name == m.group(1).lower()), None)
