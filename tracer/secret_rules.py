"""What a secret looks like inside one argument: the context-free rules of redaction.

Pure. A Rule masks what its regex finds (`Authorization: Bearer ***`, `https://bob:***@host`,
`AKIA***`, `PGPASSWORD=***`); `secret_name` says whether a flag, variable or key names a
secret. whodid.tracer.redact applies these to every argument it looks at, and adds what
needs context: which tool an argument belongs to, shell scripts, interpreters' code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

MASK = "***"

# Names (of flags, variables, keys, headers) that say their value is a secret.
SECRET_NAME = re.compile(
    r"password|passwd|passphrase|passcode|secret|token(?!s|i[sz])|credential|bearer|api[-_.]?key"
    r"|(?:access|private|account|master|encryption|signing|client|app|license|shared)[-_.]?key"
    r"|storepass|keypass|sshpass|passin|passout|requirepass|auth(?!or(?!i[sz])|enticat)"
    r"|(?<![a-z0-9])(?:pass|pw|pwd|creds|sig)(?![a-z0-9])|(?:amz|goog)-signature", re.I)
# ... and names that mention a secret but hold something else: a switch, a path, a policy
NOT_SECRET_NAME = re.compile(
    r"^-*(?:no|ask|prompt|skip|show|require|disable|enable|allow|reset|forgot)[-_.]"
    r"|(?:file|files|path|dir|directory|stdin|env|prompt|command|cmd|length|policy|type|method|mode"
    r"|url|uri|endpoint|provider|plugin|helper|source|database|db|mechanism|ttl|expiry|expiration|fd"
    r"|name|count|format|hint|authentications?|min|max|limit|size|timeout|-id|-ids|-arn)$", re.I)


def secret_name(name: str) -> bool:
    """Does a flag, variable or key called `name` hold a secret? (`PWD` is a directory.)"""
    bare = name.strip("-")
    return (bool(SECRET_NAME.search(bare)) and not NOT_SECRET_NAME.search(bare)
            and bare.upper() not in ("PWD", "OLDPWD"))


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern
    replace: str | Callable[[re.Match], str]
    apply: Callable[[str], str] | None = None      # when a substitution cannot say it

    def __call__(self, text: str) -> str:
        return self.apply(text) if self.apply else self.pattern.sub(self.replace, text)


# NAME= where an assignment can start; the value runs to the next `, NAME=` (helm --set,
# mount -o, query strings, conninfo) or the end, or is quoted
_NAMED = re.compile(r"(?:^-{0,2}|(?<=[\s?&;,=:{(]))(?P<name>[A-Za-z_][\w.\[\]-]*)=")
_NAMED_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"|[\s\S]*?(?=[&,;\s][A-Za-z_][\w.\[\]-]*=|$)")


def _named_values(text: str) -> str:
    """NAME=value: mask the value when the name says it is a secret. Each NAME= is looked at
    once, left to right (--from-literal=password=x: the value names a secret of its own)."""
    out, pos = [], 0
    for m in _NAMED.finditer(text):
        if m.start() < pos or not secret_name(m["name"]):
            continue
        value = _NAMED_VALUE.match(text, m.end())
        if value.end() == m.end():
            continue                                    # NAME= and nothing: nothing to hide
        quote = value[0][0] if value[0][0] in "'\"" and len(value[0]) > 1 else ""
        out += [text[pos:m.end()], quote, MASK, quote]
        pos = value.end()
    return "".join(out) + text[pos:] if out else text


def _named_value(m: re.Match) -> str:
    """"name": "value" in JSON: mask the value when the name says it is a secret."""
    return f'{m["head"]}"{MASK}"' if secret_name(m["name"]) else m[0]


def _named_value_sq(m: re.Match) -> str:
    return f"{m['head']}'{MASK}'" if secret_name(m["name"]) else m[0]


def _header(m: re.Match) -> str:
    """Authorization: keeps its scheme (Basic, Bearer, AWS4-HMAC-SHA256 ...); other headers
    named for a secret (X-Api-Key, PRIVATE-TOKEN, Cookie) lose their whole value."""
    scheme = m["scheme"] if m["scheme"] and "authorization" in m["head"].lower() else ""
    return f"{m['head']}{scheme}{MASK}"


# a URL scheme, where one can start (bounded: a long run of a.b.c. must not be scanned again
# from every dot)
SCHEME = r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,31}://"
HEADER = (r"(?:(?<=^-H)|(?<![/\w-]))(?:(?:proxy-)?authorization|cookie|private-token|api-?key"
          r"|x-[\w-]{0,64}?(?:token|key|secret|auth)[\w-]{0,64}"
          # vendors' own: DD-API-KEY, DD-APPLICATION-KEY, Circle-Token, Ocp-Apim-Subscription-Key
          r"|(?:[a-z0-9]{1,32}-){1,4}(?:token|api-key|application-key|subscription-key|secret))")

DEFAULT_RULES = (
    Rule("private key block", re.compile(
        r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----)[\s\S]+?(?=-----END [A-Z0-9 ]*PRIVATE KEY|$)"),
        rf"\g<1>{MASK}"),
    # scheme://user:password@host (the last @ before the path: passwords hold @ unescaped)
    Rule("url credentials", re.compile(rf"({SCHEME}[^/\s:@]*:)[^/\s]+(@)", re.I), rf"\g<1>{MASK}\g<2>"),
    # Authorization: <scheme> <credentials>, and headers named for a secret; the scheme stays
    Rule("header", re.compile(
        rf"(?P<head>{HEADER}\s*:\s*)(?:(?P<scheme>[A-Za-z][A-Za-z0-9-]{{0,31}}\s+)(?=\S))?(?P<value>\S.*)$", re.I),
        _header),
    # tokens by shape: the prefix that says what kind stays
    Rule("aws access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), f"\\g<1>{MASK}"),
    Rule("slack token", re.compile(r"\bxox[abposre]-[0-9A-Za-z-]{10,}"), f"xox{MASK}"),
    Rule("slack webhook", re.compile(r"(hooks\.slack\.com/(?:services|workflows|triggers)/)[\w/]+"), rf"\g<1>{MASK}"),
    Rule("discord webhook", re.compile(r"(discord(?:app)?\.com/api/webhooks/\d+/)[\w-]+"), rf"\g<1>{MASK}"),
    Rule("sendgrid key", re.compile(r"\b(SG\.)[\w-]{16,32}\.[\w-]{16,64}"), rf"\g<1>{MASK}"),
    Rule("github token", re.compile(r"\b(gh[pousr]_[0-9A-Za-z]{20,}|github_pat_[0-9A-Za-z_]{20,})"), f"gh_{MASK}"),
    Rule("gitlab token", re.compile(r"\b(glpat-|glrt-|gldt-)[0-9A-Za-z_-]{20,}"), rf"\g<1>{MASK}"),
    Rule("google api key", re.compile(r"\b(AIza)[0-9A-Za-z_-]{35}"), rf"\g<1>{MASK}"),
    Rule("stripe key", re.compile(r"\b([rs]k_(?:live|test)_)[0-9A-Za-z]{10,}"), rf"\g<1>{MASK}"),
    Rule("npm token", re.compile(r"\b(npm_)[0-9A-Za-z]{36}"), rf"\g<1>{MASK}"),
    Rule("vault token", re.compile(r"\b(hv[sbr]\.)[0-9A-Za-z_-]{20,}"), rf"\g<1>{MASK}"),
    Rule("jwt", re.compile(r"(?<![A-Za-z0-9_-])(eyJ)[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
         rf"\g<1>{MASK}"),
    # https://TOKEN@github.com/...: a user part too long to be a user name
    Rule("url token", re.compile(rf"({SCHEME})[A-Za-z0-9_-]{{20,}}(@)", re.I), rf"\g<1>{MASK}\g<2>"),
    Rule("bearer token", re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), rf"\g<1>{MASK}"),
    # SQL handed to a client: CREATE USER .. IDENTIFIED BY 'x', ALTER ROLE .. PASSWORD 'x'
    Rule("sql password", re.compile(r"(\b(?:IDENTIFIED\s+(?:WITH\s+\w+\s+)?BY|PASSWORD)(?:\s+|\s*=\s*)')"
                                    r"(?:[^']|'')+(')",
                                    re.I), rf"\g<1>{MASK}\g<2>"),
    # ... IDENTIFIED BY in MySQL's double quotes, and SET PASSWORD FOR 'u'@'h' = '...'
    Rule("sql password quoted", re.compile(r'(\bIDENTIFIED\s+(?:WITH\s+\w+\s+)?BY\s*")(?:[^"]|"")+(")',
                                           re.I), rf"\g<1>{MASK}\g<2>"),
    Rule("sql set password", re.compile(r"(\bSET\s+PASSWORD\s+FOR\s+\S+?\s*=\s*(?:PASSWORD\s*\(\s*)?')(?:[^']|'')+(')",
                                        re.I), rf"\g<1>{MASK}\g<2>"),
    # "password": "x" in JSON bodies
    Rule("json value", re.compile(r'(?P<head>"(?P<name>[\w.-]+)"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*")'), _named_value),
    # ... and {'password': 'x'} as Python prints a dict (curl -d "{'password': 'x'}")
    Rule("dict value", re.compile(r"(?P<head>'(?P<name>[\w.-]+)'\s*:\s*)(?P<value>'(?:[^'\\]|\\.)*')"),
         _named_value_sq),
    # NAME=value: env assignments, --flag=value, -Dx.password=, key=value in query strings,
    # conninfo strings, mount options, helm --set, kubectl --from-literal=password=...
    Rule("named value", _NAMED, "", _named_values),
)

# the rules whose match ends where the secret does (not the header and NAME= rules, which
# take the rest of their argument): safe on a sentence or a script as a whole
SHAPE_RULES = tuple(r for r in DEFAULT_RULES if r.name not in ("header", "named value"))


def compile_rules(extra: list[str] | tuple[str, ...] = ()) -> tuple[Rule, ...]:
    """Default rules plus configured regexes; a configured regex's match is masked whole."""
    if not extra:
        return DEFAULT_RULES            # the same object: redact() knows it needs no custom search
    return DEFAULT_RULES + tuple(Rule(f"custom {i}", re.compile(p), MASK) for i, p in enumerate(extra))


# password = 'x', connect(password="x"), {'api_key': 'x'}, headers: {Authorization: 'Basic x'} in code
CODE_ASSIGNMENT = re.compile(r"""(?P<head>(?<![\w.])(?P<nq>['"]?)(?P<name>[A-Za-z_][\w.-]*)(?P=nq)\]?\s*[:=]\s*)"""
                             r"""(?P<q>['"])(?P<value>(?:(?!(?P=q))[^\\]|\\.)+)(?P=q)""")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}\s+(?=\S)")


def code_assignment(m: re.Match) -> str:
    """A secret-named assignment or key in code, with a quoted value: the value goes
    (an Authorization value keeps its scheme)."""
    if not secret_name(m["name"]) or MASK in m["value"]:
        return m[0]
    scheme = _SCHEME.match(m["value"]) if "authorization" in m["name"].lower() else None
    return f"{m['head']}{m['q']}{scheme[0] if scheme else ''}{MASK}{m['q']}"
