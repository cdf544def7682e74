"""Redact secrets from command lines before anything leaves the process that saw them.

Pure. Each rule is a regex with a replacement; `redact(argv)` returns the new argv and
whether anything was hidden. The defaults cover passwords in flags, user:pass@ URLs, AWS
keys, Slack and GitHub tokens, bearer tokens and SECRET-ish environment assignments;
config can add more (agent.redact_patterns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MASK = "***"
SECRET_WORDS = r"(?:pass(?:word|wd)?|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|auth|credentials?)"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern
    replace: str


DEFAULT_RULES = (
    # --password=hunter2, --db-password=x, --token=x
    Rule("flag=value", re.compile(rf"^(--?[\w-]*{SECRET_WORDS}[\w-]*=).+$", re.I), rf"\g<1>{MASK}"),
    # scheme://user:password@host
    Rule("url credentials", re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(@)", re.I), rf"\g<1>{MASK}\g<2>"),
    # PASSWORD=x, AWS_SECRET_ACCESS_KEY=x (env assignments, `env X=Y cmd`, `export`)
    Rule("env assignment", re.compile(rf"^([A-Za-z_]*{SECRET_WORDS}[A-Za-z_]*=).+$", re.I), rf"\g<1>{MASK}"),
    Rule("aws access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), f"\\g<1>{MASK}"),
    Rule("slack token", re.compile(r"\bxox[abposr]-[0-9A-Za-z-]{10,}"), f"xox{MASK}"),
    Rule("github token", re.compile(r"\b(gh[pousr]_[0-9A-Za-z]{20,}|github_pat_[0-9A-Za-z_]{20,})"), f"gh_{MASK}"),
    Rule("bearer token", re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), rf"\g<1>{MASK}"),
    # mysql -pSECRET (attached form only: `-p` alone prompts)
    Rule("mysql -p", re.compile(r"^(-p)(?=.)(.+)$"), rf"\g<1>{MASK}"),
)
# Flags whose *next* argument is the secret: --password hunter2, -p is too ambiguous to add.
VALUE_FLAGS = re.compile(rf"^--?[\w-]*{SECRET_WORDS}[\w-]*$", re.I)


def compile_rules(extra: list[str] | tuple[str, ...] = ()) -> tuple[Rule, ...]:
    """Default rules plus configured regexes; a configured regex's match is masked whole."""
    return DEFAULT_RULES + tuple(Rule(f"custom {i}", re.compile(p), MASK) for i, p in enumerate(extra))


def _any_of(rules: tuple[Rule, ...]) -> re.Pattern:
    """One regex that matches wherever any rule (or a secret-naming flag) would: the agent runs
    this once per argument and the rules themselves only on the rare argument it finds - an
    exec storm is thousands of `redact` calls a second, nearly all with nothing to hide."""
    def scoped(p: re.Pattern) -> str:
        return f"(?i:{p.pattern})" if p.flags & re.I else f"(?:{p.pattern})"
    try:
        return re.compile("|".join([scoped(r.pattern) for r in rules] + [scoped(VALUE_FLAGS)]))
    except re.error:
        # a configured regex that cannot sit in an alternation (global flags, a group name
        # used twice): no shortcut, every argument goes through every rule
        return re.compile("")


# by id: hashing the rules tuple hashes every Rule, per call. Each entry holds its rules, so
# an id is not reused while its entry stands.
_PREFILTER: dict[int, tuple[tuple[Rule, ...], re.Pattern]] = {}


def redact(argv: list[str], rules: tuple[Rule, ...] = DEFAULT_RULES) -> tuple[list[str], bool]:
    entry = _PREFILTER.get(id(rules))
    if entry is None or entry[0] is not rules:
        entry = _PREFILTER[id(rules)] = (rules, _any_of(rules))
    search = entry[1].search
    for arg in argv:
        if search(arg):
            break
    else:
        return list(argv), False
    out: list[str] = []
    changed = False
    mask_next = False
    mysql = argv and argv[0].rsplit("/", 1)[-1] in ("mysql", "mysqldump", "mariadb")
    for i, arg in enumerate(argv):
        if mask_next:
            out.append(MASK)
            changed = True
            mask_next = False
            continue
        new = arg
        for rule in rules:
            if rule.name == "mysql -p" and not mysql:
                continue
            new = rule.pattern.sub(rule.replace, new)
        if i and VALUE_FLAGS.match(arg):
            mask_next = True
        changed |= new != arg
        out.append(new)
    return out, changed
