"""Redact secrets from command lines: the one function every producer and the collector call.

Pure. `redact(argv)` returns the argv with each secret replaced by `***` and whether
anything was hidden. Its rules:

- Only the secret goes: the command, its subcommands, flags and other arguments stay as
  typed (`mysql -u root -p*** prod`, `Authorization: Bearer ***`, `https://bob:***@host`).
- Context-free shapes are masked wherever they appear (tracer/secret_rules.py): user:password@
  in URLs, private key blocks, AWS access key ids, GitHub/GitLab/Slack/Google/Stripe/npm/Vault
  tokens, JWTs, `Authorization:`-style headers of any scheme, `NAME=value` and `"name": "value"`
  where NAME says it is a secret, SQL `IDENTIFIED BY '...'`.
- Flags that name a secret take the next argument as one (`--token X`), unless the tool says
  otherwise: `mysql -p X` prompts and X is the database; `psql --password` only prompts.
- Tools whose secret flag says nothing (`mysql -pX`, `sshpass -p`, `redis-cli -a`, `curl -u
  user:pw`, `docker login -p`, `htpasswd -b`, `vault login TOKEN`, `kubectl create secret
  --from-literal`, `openssl -k`, `ldapsearch -w`, `smbclient -U user%pw` ...) are known by
  name, also behind sudo/env/docker exec/`--`.
- Shell scripts (`sh -c '...'`, `bash -lc`, `su -c`, `ssh HOST '...'`) are split into commands
  and words (tracer/shellwords.py) and each command is redacted as an argv, recursively; only
  the masked characters change. Options whose value is a command (`rsync -e`, `-o
  ProxyCommand=`, `GIT_SSH_COMMAND=`) are scripts too. What `echo`/`printf` pipe, or a
  here-string feeds, into a program that reads a secret on stdin (`passwd --stdin`,
  `chpasswd`, `sudo -S`, `--password-stdin`) is that secret. Code (`python -c`, `perl -e`)
  and text kept for people (a refused event's raw line, maybe cut short) go through
  `redact_text`: each list of its quoted strings is an argv.
- A command line cut short (`truncated`) loses the unfinished secret its last argument may
  end in (`https://user:pw` without its @, `"password": "pw` without its quote): cut_short.
- A one-string argv with spaces is a process title (setproctitle): a command line, split
  as a script is.
- Idempotent: redacting twice gives what redacting once gave (the collector re-redacts what
  agents sent).
- Fast on the common case: one regex over the joined argv finds the rare command line that
  needs the rules; one it does not match is returned as it came (the agent redacts every exec).
Configuration can add regexes (agent.redact_patterns); what they match is masked whole.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from . import shellwords
from .events import fit_argv
from .secret_rules import (CODE_ASSIGNMENT, DEFAULT_RULES, MASK, SCHEME, SHAPE_RULES, Rule, code_assignment,
                           compile_rules, secret_name)

__all__ = ["DEFAULT_RULES", "MASK", "Rule", "compile_rules", "cut_short", "redact", "redact_event", "redact_events",
           "redact_fitted", "redact_text", "secret_name"]

MYSQL = frozenset("mysql mysqldump mysqladmin mysqlimport mysqlshow mysqlcheck mysqlpump mysqlbinlog mysqlslap "
                  "mysqlsh mariadb mariadb-dump mariadb-admin mariadb-import mariadb-check".split())
PSQL = frozenset("psql pg_dump pg_dumpall pg_restore pg_basebackup createdb dropdb createuser dropuser vacuumdb "
                 "reindexdb clusterdb pgbench".split())
MONGO = frozenset("mongo mongosh mongodump mongorestore mongoexport mongoimport mongostat mongotop".split())
LOGIN = frozenset("docker podman nerdctl buildah skopeo helm oras crane az vault oc".split())
SSH_VALUE_OPTIONS = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
SHELLS = frozenset("sh bash dash zsh ksh ash mksh busybox su runuser flock script".split())   # -c SCRIPT
LDAP = frozenset("ldapsearch ldapadd ldapmodify ldapdelete ldapmodrdn ldappasswd ldapwhoami ldapcompare".split())
SMB = frozenset("smbclient rpcclient smbcacls smbget net winexe".split())
SNMP = frozenset("snmpwalk snmpbulkwalk snmpget snmpgetnext snmpbulkget snmpset snmptable snmpdelta snmpstatus "
                 "snmpdf snmptrap snmpinform snmptest snmptranslate snmpusm snmpvacm".split())   # -A -X -c
# user/password@db as an argument (sqlplus scott/tiger@orcl, rman target sys/pw@db)
ORACLE = frozenset("sqlplus sqlldr expdp impdp exp imp rman dgmgrl".split())
MOSQUITTO = frozenset("mosquitto_pub mosquitto_sub mosquitto_rr".split())
TOOLS = (MYSQL | PSQL | MONGO | LOGIN | SHELLS | LDAP | SMB | SNMP | ORACLE | MOSQUITTO | frozenset(
    "sshpass redis-cli curl http https xh xhs htpasswd kubectl oc openssl aws gh rabbitmqctl ssh scp rsync sftp "
    "git watch zip unzip 7z 7za 7zr sqlcmd bcp useradd usermod nmcli xfreerdp ipmitool racadm cqlsh "
    "rabbitmqadmin lftp etcdctl isql iusql wpa_passphrase rclone neo4j-admin neo4j ssh-keygen doctl "
    "ansible-vault rsync tmux screen".split()))
# terminal multiplexers: an argument with spaces is a command they run with sh -c (tmux new
# 'CMD', run-shell, split-window) or keys typed into a shell (send-keys 'mysql -pX' Enter,
# screen -X stuff 'psql ...'), so a script either way; `tmux setenv NAME VALUE` stores a value
MULTIPLEXERS = frozenset(("tmux", "screen"))
TMUX_SETENV = frozenset(("setenv", "set-environment"))
# interpreters whose -c/-e CODE is redacted as text (its strings may be argvs and scripts)
INTERPRETERS = frozenset("python python2 python3 perl ruby node nodejs php lua".split()) | frozenset(
    f"python3.{minor}" for minor in range(6, 15))
TOOLS |= INTERPRETERS
CODE_OPTION = {"perl": "eE", "ruby": "e", "node": "ep", "nodejs": "ep", "php": "r", "lua": "e"}   # python: -c
# the argument after these options is a secret, per tool
SECRET_OPTION = {**{t: ("-p",) for t in MONGO}, **{t: ("-w",) for t in LDAP},
                 "sshpass": ("-p",), "redis-cli": ("-a",), "openssl": ("-k",), "zip": ("-P",), "unzip": ("-P",),
                 "sqlcmd": ("-P",), "bcp": ("-P",), "useradd": ("-p",), "usermod": ("-p",),
                 **{t: ("-A", "-X", "-c") for t in SNMP}, **{t: ("-P",) for t in MOSQUITTO},
                 "ipmitool": ("-P",), "racadm": ("-p",), "cqlsh": ("-p",), "rabbitmqadmin": ("-p",),
                 "ssh-keygen": ("-N", "-P"), "doctl": ("-t",)}
# ... and these take it attached too (getopt-style): sshpass -pX, ldapsearch -wX, 7z -pX
ATTACHED_OPTION = {**{t: ("-w",) for t in LDAP}, **{t: ("-A", "-X", "-c") for t in SNMP}, "sshpass": ("-p",),
                   "7z": ("-p",), "7za": ("-p",), "7zr": ("-p",), "ipmitool": ("-P",), "sqlcmd": ("-P",),
                   "bcp": ("-P",)}
USER_PASS_OPTION = {"curl": ("-u", "--user", "-U", "--proxy-user"), "http": ("-a", "--auth"),
                    "https": ("-a", "--auth"), "xh": ("-a", "--auth"), "xhs": ("-a", "--auth"),
                    "etcdctl": ("--user",)}
# user:password for any tool (skopeo copy --src-creds, podman pull --creds, buildah --creds)
CREDS_OPTION = frozenset(("--creds", "--src-creds", "--dest-creds"))
ORACLE_LOGIN = re.compile(r"^((?:userid=|target=|catalog=|auxiliary=)?[A-Za-z_][\w$#]*/)([^@\s]+)(@.*)?$", re.I | re.S)
COOKIE_VALUE = re.compile(r"(=)[^;]+")
HTTPIE_ITEM = re.compile(r"(?P<head>(?P<name>[\w.\[\]-]+)(?::=|==|=))(?=.)")    # httpie: JSON, query, form fields
# Words that, found in a command line, send it to the rules: the rules' own shapes, secret
# names, the tools above, an attached `-pX`. Searched in the lowercased argv joined by
# newlines, quotes made spaces (`sh -c '"http" -a u:pw'` is `http -a u:pw`). Nearly every
# exec has none of them, so this search is the whole cost of redacting it: the words are
# compiled as a trie (`p(?:ass|w)|s(?:ecret|mbclient)|...`), which `re`
# walks in a fraction of the time a flat alternation of fifty words takes.
TRIGGERS = (
    "pass", "pw", "secret", "token", "credential", "bearer", "auth", "key", "cookie", "identified", "akia", "asia",
    "xox", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "glrt-", "gldt-", "aiza", "npm_", "hvs.",
    "hvb.", "hvr.", "k_live_", "k_test_", "eyj", "-----begin", "hooks.slack", "mysql", "maria", "redis-cli", "curl",
    "login", "openssl", "smbclient", "rpcclient", "ldap", "mongo", "rabbitmq", "sqlcmd", "bcp", "useradd", "usermod",
    "7z", "freerdp", "/p:", "\nzip\n", "/zip\n", "\nunzip\n", "/unzip\n",
    "cred", "snmp", "ipmitool", "racadm", "cqlsh", "mosquitto", "lftp", "etcdctl", "sqlplus", "sqlldr", "expdp",
    "impdp", "rman", "dgmgrl", "\nexp\n", "/exp\n", "\nimp\n", "/imp\n", "isql", "wpa_", "rclone", "neo4j", "vault",
    "config\nset\n", "put-parameter", "discord", "sudo -s", "cryptsetup", "sig=", "signature=", "sg.", "winexe",
    "\nhttp\n", "/http\n", "\nhttps\n", "/https\n", "\nxh", "/xh", "\nhttp ", " http ", "/http ", "\nnet\n", "/net\n",
)
# (literal start, regex tail): shapes that are more than a word
TRIGGER_SHAPES = (("://", r"[^/\s]*@"), ("\n-p", r"[^\s]"), (" -p", r"[^\s]"), ("zip", r"\s+-p"))


def _trie(entries: list[tuple[str, str]]) -> str:
    """One regex matching any of (literal, tail), with shared literal prefixes factored out."""
    root: dict = {}
    for literal, tail in entries:
        node = root
        for ch in literal:
            node = node.setdefault(ch, {})
        node.setdefault("", []).append(tail)

    def emit(node: dict) -> str:
        alts = [re.escape(ch) + emit(sub) for ch, sub in sorted((k, v) for k, v in node.items() if k)]
        ends = node.get("", [])
        if "" in ends:                     # a word ends here: whatever follows, it matched
            return ""
        alts += ends
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return emit(root)


_TRIGGER = re.compile(_trie([(t, "") for t in TRIGGERS] + list(TRIGGER_SHAPES)))


def _custom_any(rules: tuple[Rule, ...]) -> re.Pattern | None:
    """One regex for the configured rules, searched in the argv as given (they may care about
    case); ^ and $ match at each argument's ends."""
    def scoped(p: re.Pattern) -> str:
        return f"(?i:{p.pattern})" if p.flags & re.I else f"(?:{p.pattern})"
    custom = [scoped(r.pattern) for r in rules if r.name.startswith("custom")]
    if not custom:
        return None
    try:
        return re.compile("|".join(custom), re.M)
    except re.error:
        # a configured regex that cannot sit in an alternation (global flags, a group name
        # used twice): no shortcut, every argv goes through every rule
        return re.compile("")


# by id: hashing the rules tuple hashes every Rule, per call. Each entry holds its rules, so
# an id is not reused while its entry stands.
_PREFILTER: dict[int, tuple[tuple[Rule, ...], re.Pattern | None]] = {}
MAX_DEPTH = 6             # sh -c "bash -c '...'" nesting followed this deep


# Command lines that tripped the trigger but held no secret, for the default rules: a host
# runs the same few again and again (`curl -fsS http://localhost/health` from cron was 42 % of
# the demo fleet's execs), and the full walk costs ~10x the trigger. Only lines with nothing
# masked are kept, so the cache holds no secret; emptied when full, which is rare and cheap.
_CLEAN: set[str] = set()
CLEAN_MAX = 4096
# ... and lines the trigger finds nothing in, for the default rules: lowering and searching a
# line was most of what redacting an exec cost, and a host runs the same few lines again and
# again. Apart from _CLEAN, so a churn of one-off lines does not empty it of the dear ones.
_PLAIN: set[str] = set()


def redact(argv: list[str], rules: tuple[Rule, ...] = DEFAULT_RULES) -> tuple[list[str], bool]:
    """The argv with its secrets masked, and whether anything was."""
    joined = "\n" + "\n".join(argv) + "\n"
    if rules is DEFAULT_RULES and joined in _PLAIN:
        return list(argv), False
    if not _TRIGGER.search(joined.lower().replace('"', " ").replace("'", " ")):
        if rules is DEFAULT_RULES:
            if len(_PLAIN) >= CLEAN_MAX:
                _PLAIN.clear()
            _PLAIN.add(joined)
            return list(argv), False
        entry = _PREFILTER.get(id(rules))
        if entry is None or entry[0] is not rules:
            entry = _PREFILTER[id(rules)] = (rules, _custom_any(rules))
        if entry[1] is None or not entry[1].search(joined):
            return list(argv), False
    elif rules is DEFAULT_RULES and joined in _CLEAN:
        return list(argv), False
    if len(argv) == 1 and " " in argv[0]:
        # a process title (setproctitle): /proc/PID/cmdline holds the whole command line in
        # one string, as ps shows it - redacted as a script of one command line
        out = [_script(argv[0], rules, 1)]
    else:
        out = _argv(list(argv), rules, 0)
    changed = out != list(argv)
    if not changed and rules is DEFAULT_RULES:
        if len(_CLEAN) >= CLEAN_MAX:
            _CLEAN.clear()
        _CLEAN.add(joined)
    return out, changed


# a unix connection's socket names: an abstract name is any string a program chose, and may
# carry a token (`@ghp_...`, a vault token in a per-session socket's name)
SOCKET_NAMES = {"uconnect": ("path", "bound"), "uaccept": ("path",)}
REDACTED_KINDS = frozenset({"exec", *SOCKET_NAMES})


def redact_event(ev: dict[str, Any], rules: tuple[Rule, ...] = DEFAULT_RULES) -> bool:
    """Redact an event's command line in place (exec events carry one), or a unix connection's
    socket names by the context-free rules (a token's shape); True if changed."""
    kind = ev.get("kind")
    if kind not in REDACTED_KINDS:
        return False                # forks, exits, creds, logins carry no free text (most events)
    names = SOCKET_NAMES.get(kind)  # type: ignore[arg-type]
    if names:
        changed = False
        for field in names:
            value = ev.get(field)
            if isinstance(value, str) and (new_value := _content(value, rules)) != value:
                ev[field], changed = new_value, True
        return changed
    argv = ev.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return False
    new, changed = redact(argv, rules)
    if ev.get("truncated") is True and new:
        new = cut_short(new)
        changed = new != argv
    if changed:
        ev["argv"] = new
    return changed


# What is left of a secret a cut landed in (the agent reads 4 KiB of an argument, 8 KiB of a
# command line; audit records are cut too): its rule's end - the @ after user:password, the
# closing quote - is gone, so only the end of the last argument can hold one.
_CUT_URL = re.compile(rf"({SCHEME}[^/\s:@]*:)[^/\s@]+$", re.I)
_CUT_QUOTED = re.compile(r"""(?P<head>(?<![\w.-])(?P<nq>['"]?)(?P<name>[A-Za-z_][\w.-]*)(?P=nq)\]?\s*[:=]\s*"""
                         r"""(?P<q>['"]))"""
                         r"""(?:(?!(?P=q))[^\\]|\\.)+$""")
_CUT_SQL = re.compile(r"(\b(?:IDENTIFIED\s+(?:WITH\s+\w+\s+)?BY|PASSWORD)(?:\s+|\s*=\s*)['\"])[^'\"]+$", re.I)


def cut_short(argv: list[str]) -> list[str]:
    """A redacted argv that was cut short: its last argument loses a secret the cut left
    unfinished (https://user:pw, "password": "pw, IDENTIFIED BY 'pw, password='pw)."""
    last = _CUT_URL.sub(rf"\g<1>{MASK}", argv[-1])
    last = _CUT_SQL.sub(rf"\g<1>{MASK}", last)
    cut = _CUT_QUOTED.search(last)
    if cut and secret_name(cut["name"]) and not last.endswith(MASK):
        last = last[:cut.end("head")] + MASK
    return argv if last == argv[-1] else [*argv[:-1], last]


def redact_fitted(argv: list[str], truncated: bool = False,
                  rules: tuple[Rule, ...] = DEFAULT_RULES) -> tuple[list[str], bool, bool]:
    """A command line as a producer ships it: redacted, then cut to the schema's limits
    (fit_argv), then - if it was cut there or before (the kernel's read) - rid of a secret the
    cut left unfinished (cut_short). Returns (argv, truncated, whether anything was hidden)."""
    argv, hidden = redact(argv, rules)
    argv, over = fit_argv(argv)
    truncated = truncated or over
    if truncated:
        short = cut_short(argv)
        argv, hidden = short, hidden or short is not argv
    return argv, truncated, hidden


def redact_events(events: list[dict[str, Any]], rules: tuple[Rule, ...] = DEFAULT_RULES) -> int:
    """Redact every event of a batch in place; the number of command lines changed."""
    return sum(redact_event(ev, rules) for ev in events if isinstance(ev, dict))


# a quoted string in JSON or in code: "..." or '...', backslash escapes kept as written; one
# the text ends in before its closing quote (a raw line kept cut short) runs to the end
_QUOTED = re.compile(r""""((?:[^"\\]|\\.)*)(?:"|\\?\Z)|'((?:[^'\\]|\\.)*)(?:'|\\?\Z)""")
_LIST_SEPARATOR = re.compile(r"\s*,\s*(?:(?:-?[0-9][0-9.eE+-]*|true|false|null)\s*,\s*)*")   # ["a", 5, "b"]


def redact_text(text: str, rules: tuple[Rule, ...] = DEFAULT_RULES, depth: int = 0, *, code: bool = False) -> str:
    """Text that is not an argv but holds command lines: a raw event line kept for people (a
    refused event, maybe cut short), a log line that was not what it should be (a shell
    history given to import-audit), or - with code=True - the code of `python -c`/`perl -e`.
    Its quoted strings, each run of them a list holds (["mysql", "-pX"] in JSON or code), are
    redacted as if they were an argv - a list, not the whole line: `htpasswd -b F U PW` has its
    password last in its argv, not before `"cwd": "/root"`; a quoted string with spaces as a
    shell script (os.system('PGPASSWORD=x psql')); then, unless it is code or JSON, the text
    itself as a shell script."""
    if not _TRIGGER.search(text.lower()) and rules is DEFAULT_RULES:
        return text
    found = list(_QUOTED.finditer(text))
    values = [m[1] if m[1] is not None else m[2] for m in found]
    new: list[str] = []
    start = 0
    for k in range(1, len(found) + 1):      # runs of strings with only a comma between them
        if k == len(found) or not _LIST_SEPARATOR.fullmatch(text, found[k - 1].end(), found[k].start()):
            new += _argv(values[start:k], rules, depth + 1) if depth <= MAX_DEPTH else values[start:k]
            start = k
    for m, old, value in sorted(zip(found, values, new), key=lambda f: f[0].start(), reverse=True):
        if " " in old:
            # a string with spaces is a script or prose: its words are redacted, and the shapes
            # that end where they end (Bearer x, tokens, URLs) - not the header and NAME= rules,
            # which would take the rest of the string with them
            value = _script(old, rules, depth + 1) if depth < MAX_DEPTH else old
            for rule in SHAPE_RULES:
                value = rule(value)
        if value != old:
            group = 1 if m[1] is not None else 2
            text = text[:m.start(group)] + value + text[m.end(group):]
    if code:
        return CODE_ASSIGNMENT.sub(code_assignment, text)
    if text.lstrip().startswith(("{", "[")):
        return text                      # JSON: its strings were all there was to redact
    return _script(text, rules, depth + 1) if depth < MAX_DEPTH else text


def _content(arg: str, rules: tuple[Rule, ...]) -> str:
    """The context-free rules over one argument (or word of a script)."""
    if rules is DEFAULT_RULES and not _TRIGGER.search(arg.lower()):
        return arg                      # none of the rules' shapes can be in it
    for rule in rules:
        arg = rule(arg)
    return arg


def _script(script: str, rules: tuple[Rule, ...], depth: int) -> str:
    """A shell script: each simple command redacted as an argv, only masked characters changed."""
    if depth > MAX_DEPTH:
        return _content(script, rules)
    edits = []
    parsed = shellwords.commands(script)
    heres = [[w for w in command if w.here] for command in parsed]
    commands = [[w for w in command if not w.here] for command in parsed]
    for k, command in enumerate(commands):
        if not command:
            continue
        values = [w.value for w in command]
        new = _argv(values, rules, depth + 1)
        if k + 1 < len(commands) and commands[k + 1] and values[0] in ("echo", "printf") \
                and _piped(script, command, commands[k + 1]):
            new = _echoed(new, [w.value for w in commands[k + 1]])
        if heres[k]:                                           # chpasswd <<< 'u:pw', sudo -S cmd <<< pw
            read = _echoed(["echo", *(w.value for w in heres[k])], values)[1:]
            command, values, new = command + heres[k], values + [w.value for w in heres[k]], new + read
        for word, old, value in zip(command, values, new):
            if ("$(" in value or "`" in value) and depth < MAX_DEPTH:
                value = _script(value, rules, depth + 1)      # "$(mysql -pX)" inside quotes
            if value != old:
                edits += shellwords.replace(script, word, value)
    return shellwords.apply(script, edits)


_VARIABLE = re.compile(r"\$\{?\w+\}?")
_REDIRECTION = re.compile(r"\d*(?:[<>]+&?|&>>?)\s*\S*")
# programs that read a secret on stdin, the option saying so if they need one: what is echoed
# into them is the secret (echo pw | passwd --stdin u, echo u:pw | chpasswd)
STDIN_SECRET = {**{t: "--password-stdin" for t in LOGIN}, "passwd": "--stdin", "chpasswd": "", "newusers": "",
                "sudo": "-S", "cryptsetup": "", "smbpasswd": "-s", "htpasswd": "-i", "vault": "login",
                "gpg": "--passphrase-fd", "openssl": "stdin"}


def _piped(script: str, command: list[shellwords.Word], after: list[shellwords.Word]) -> bool:
    """Is `command | after` in the script (a pipe, maybe with redirections, between them)?"""
    gap = _REDIRECTION.sub(" ", script[command[-1].end:after[0].start])
    return gap.strip() == "|"


def _echoed(echo: list[str], reader: list[str]) -> list[str]:
    """What `echo ARGS` or `printf FORMAT ARGS` pipes into a program that reads a secret on
    stdin is the secret: its arguments go (a user:password line keeps its user)."""
    i = 0
    while i < len(reader) and reader[i] in ("sudo", "env", "exec", "command", "nohup"):
        j, reads = i + 1, False                # sudo -u root passwd --stdin: the reader is passwd
        while j < len(reader) and (reader[j].startswith("-") or "=" in reader[j]):
            reads |= reader[j] == "--stdin" or reader[j][:2] != "--" and "S" in reader[j]
            j += 2 if reader[j] in ("-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U") else 1
        if reader[i] == "sudo" and reads:
            break                              # sudo -S: sudo reads the password
        i = j
    while i < len(reader) and reader[i].startswith("-"):
        i += 1
    if i >= len(reader):
        return echo
    tool = reader[i].rpartition("/")[2]
    needs = STDIN_SECRET.get(tool)
    if needs is None or needs and not any(a == needs or a.startswith(needs) or a.startswith(f"{needs}=")
                                          for a in reader[i:]):
        return echo
    out = list(echo)
    first = 1
    while first < len(echo) and echo[first].startswith("-") and echo[0] == "echo":
        first += 1                                         # echo -n, -e
    if echo[0] == "printf" and first < len(echo) and "%" in echo[first]:
        first += 1                                         # printf '%s\n' SECRET: the format stays
    for j in range(first, len(echo)):
        if _VARIABLE.fullmatch(echo[j]):
            continue                                       # echo "$PW": the name, not the secret
        out[j] = _mask_after(echo[j], ":") if tool in ("chpasswd", "newusers") and ":" in echo[j] else MASK
    return out


FLAG = re.compile(r"-{1,2}[\w.\[\]-]+")      # a flag's name: not -H'Authorization: ...', whose value is attached


EMBEDDED_NAME = re.compile(r"-{0,2}(?:o\s*)?(?P<name>[\w.-]+)=(?=\S)")


def _config_set(positionals: list[str], arg: str) -> bool:
    """`TOOL config set NAME VALUE` (npm, yarn, pnpm, kubectl, git-like CLIs), arg being VALUE
    and NAME naming a secret."""
    for j in range(len(positionals) - 3):
        if positionals[j].lower() in ("config", "configure") and positionals[j + 1].lower() == "set":
            return len(positionals) == j + 4 and positionals[-1] == arg and secret_name(positionals[j + 2])
    return False


def _mask_after(value: str, sep: str) -> str:
    """user:pw -> user:***, DOMAIN\\user%pw -> DOMAIN\\user%***; nothing after sep: unchanged."""
    head, found, tail = value.partition(sep)
    return f"{head}{sep}{MASK}" if found and tail else value


def _user_pass(value: str) -> str:
    """user:password -> user:***; KEY: (an API key given as the user, no password: Stripe,
    Mailgun, many APIs) -> ***:; a user alone (curl prompts for the password) stays."""
    if value.endswith(":") and value.count(":") == 1 and len(value) > 1:
        return value if MASK in value else MASK + ":"    # sk_test_***: keeps the kind of key it is
    return _mask_after(value, ":")


def _pass_arg(value: str) -> str:
    """The value of a secret flag: all of it, but openssl's `pass:x` keeps its `pass:` and
    `env:VAR`, `file:PATH`, `fd:N`, `stdin` name where the secret is, not the secret."""
    if value.startswith("pass:"):
        return "pass:" + MASK
    if value.startswith(("env:", "file:", "fd:")) or value in ("stdin", ""):
        return value                    # ... and an empty one (ssh-keygen -N ''): nothing to hide
    return MASK


def _argv(argv: list[str], rules: tuple[Rule, ...], depth: int) -> list[str]:
    """Redact one argv. Walks it once, knowing which tool the arguments belong to."""
    out = list(argv)
    tool = ""
    positionals: list[str] = []
    script_next = False
    code_next = False
    ssh_dest = False                 # ssh: the destination is behind us, the rest is a remote script
    mask_at = -1                     # an argument ahead known to be a secret
    configuring = False              # a positional `config`: `TOOL config set NAME VALUE` may follow
    operands = 0                     # the tool's arguments that are not options, NAME=value ones too
    i = 0
    while i < len(argv):
        arg = argv[i]
        prev = argv[i - 1] if i else ""
        if tool == "ssh" and not arg.startswith("-") and not (
                len(prev) == 2 and prev[0] == "-" and prev[1] in SSH_VALUE_OPTIONS):
            if ssh_dest:             # ssh HOST 'script' or ssh HOST cmd args...: the remote command
                rest = argv[i:]
                out[i:] = [_script(rest[0], rules, depth)] if len(rest) == 1 else _argv(rest, rules, depth + 1)
                return out
            ssh_dest = True
            i += 1
            continue
        if code_next:
            code_next = False
            out[i] = redact_text(arg, rules, depth + 1, code=True)
            i += 1
            continue
        if script_next:
            script_next = False
            out[i] = _script(arg, rules, depth) if depth <= MAX_DEPTH else _content(arg, rules)
            i += 1
            continue
        if not arg.startswith("-") and "=" not in arg:
            base = arg.rpartition("/")[2]
            # a tool's name starts its own arguments, unless it is a long option's value
            # (`docker run --name mysql -p3306:3306`)
            if base in TOOLS and (i == 0 or prev == "--" or not (prev.startswith("--") and "=" not in prev)):
                tool, positionals, ssh_dest, configuring, operands = base, [], False, False, 0
                i += 1
                continue
            positionals.append(arg)
            configuring = configuring or arg.lower() in ("config", "configure")
        operands += not arg.startswith("-")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        new = _content(arg, rules)
        mask_next: Callable[[str], str] | None = None
        if " " in arg and depth < MAX_DEPTH:
            # a command in an option's value, known by the option's name (not by what it holds,
            # which masking changes): rsync -e 'sshpass -p X ssh', -o ProxyCommand=...,
            # GIT_SSH_COMMAND=..., git -c core.sshCommand=...: a script, as sh -c's
            name = EMBEDDED_NAME.match(arg)
            if name and (name["name"].lower().endswith(("command", "_rsh")) or name["name"] == "rsh") \
                    or tool == "rsync" and prev in ("-e", "--rsh"):
                at = name.end() if name else 0
                new = arg[:at] + _script(arg[at:], rules, depth + 1)
        if tool in SHELLS and nxt is not None and (
                (arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:] and arg[1:].isalpha())
                or arg == "--command"):
            script_next = True
        elif tool in INTERPRETERS and nxt is not None and (arg in ("--eval", "--print") or (
                arg[:1] == "-" and arg[1:].isalpha() and arg[-1] in CODE_OPTION.get(tool, "c"))):
            code_next = True                                   # python -c CODE, perl -e CODE, node -e CODE
        elif tool in SHELLS and tool in ("su", "runuser") and arg.startswith("--command="):
            new = arg[:10] + _script(arg[10:], rules, depth)
        elif tool in MYSQL and arg.startswith("-p") and len(arg) > 2:
            new = "-p" + MASK                                  # -pX; `-p X` prompts, X is the database
        elif tool in MYSQL and arg == "--password":
            pass                                               # optional value: only --password=X
        elif tool in MYSQL and arg.startswith("--pas") and "=" in arg and "password".startswith(arg[2:arg.index("=")]):
            new = arg[:arg.index("=") + 1] + MASK              # --passw=X: MySQL takes a long option's prefix
        elif tool in PSQL and arg in ("--password", "-W"):
            pass                                               # a switch: prompt for it
        elif arg in SECRET_OPTION.get(tool, ()) and nxt is not None and not nxt.startswith("-"):
            mask_next = _pass_arg
        elif tool in ATTACHED_OPTION and arg.startswith(ATTACHED_OPTION[tool]) and len(arg) > 2:
            new = arg[:2] + MASK                               # sshpass -pX, ldapsearch -wX, 7z a -pX
        elif tool == "watch" and " " in arg:
            new = _script(arg, rules, depth)                   # watch runs its command with sh -c
        elif tool in MULTIPLEXERS and " " in arg:
            new = _script(arg, rules, depth)                   # tmux send-keys 'mysql -pX' Enter, tmux new 'CMD'
        elif tool == "tmux" and len(positionals) >= 3 and positionals[-3] in TMUX_SETENV \
                and positionals[-1] == arg and secret_name(positionals[-2]):
            new = new if new != arg or MASK in arg else MASK   # tmux setenv [-g] DB_PASSWORD VALUE
        elif tool == "nmcli" and arg in ("password", "wifi-sec.psk", "802-11-wireless-security.psk") \
                and nxt is not None:
            mask_next = _pass_arg                              # nmcli dev wifi connect SSID password X
        elif tool == "xfreerdp" and arg.lower().startswith("/p:") and len(arg) > 3:
            new = arg[:3] + MASK
        elif arg in USER_PASS_OPTION.get(tool, ()) and nxt is not None:
            mask_next = _user_pass                             # curl -u user:pw, -u APIKEY:
        elif tool in USER_PASS_OPTION and arg[:2] in USER_PASS_OPTION[tool] and len(arg) > 2:
            new = arg[:2] + _user_pass(arg[2:])
        elif tool in USER_PASS_OPTION and arg.partition("=")[0] in USER_PASS_OPTION[tool] and "=" in arg:
            new = _mask_after(arg, ":")                        # etcdctl --user=root:pw
        elif arg in CREDS_OPTION and nxt is not None:
            mask_next = lambda v: _mask_after(v, ":")          # noqa: E731 - skopeo --src-creds user:pw
        elif arg.partition("=")[0] in CREDS_OPTION:
            new = _mask_after(arg, ":")
        elif tool == "lftp" and arg == "-u" and nxt is not None:
            mask_next = lambda v: _mask_after(v, ",")          # noqa: E731 - lftp -u user,pw
        elif tool == "curl" and arg in ("-b", "--cookie") and nxt is not None and "=" in nxt:
            mask_next = lambda v: COOKIE_VALUE.sub(rf"\g<1>{MASK}", v)   # noqa: E731 - a session is a login
        elif tool == "curl" and arg.startswith("-b") and "=" in arg:
            new = "-b" + COOKIE_VALUE.sub(rf"\g<1>{MASK}", arg[2:])
        elif tool in ORACLE and not arg.startswith(("-", "@")) and ORACLE_LOGIN.match(arg):
            new = ORACLE_LOGIN.sub(rf"\g<1>{MASK}\g<3>", arg)    # sqlplus scott/tiger@orcl; `/ as sysdba` has none
        elif tool in ("isql", "iusql") and operands == 3 and not arg.startswith("-"):
            new = MASK                                         # isql DSN USER PASSWORD
        elif tool == "redis-cli" and arg.upper() == "AUTH" and i + 2 <= len(argv) <= i + 3:
            mask_at = len(argv) - 1                            # redis-cli AUTH [USER] PASSWORD
        elif i == mask_at:
            new = MASK
        elif tool == "ansible-vault" and positionals[-2:] == ["encrypt_string", arg]:
            new = MASK
        elif tool == "aws" and positionals[:2] == ["ssm", "put-parameter"] and arg.startswith("--value"):
            if arg == "--value" and nxt is not None:
                mask_next = _pass_arg                          # a parameter is stored, maybe SecureString
            elif arg.startswith("--value="):
                new = "--value=" + MASK
        elif tool in USER_PASS_OPTION and tool != "curl" and HTTPIE_ITEM.match(arg) \
                and secret_name(HTTPIE_ITEM.match(arg)["name"]):
            new = HTTPIE_ITEM.match(arg)["head"] + MASK        # http POST URL password:=X token==X
        elif tool == "wpa_passphrase" and operands == 2 and not arg.startswith("-"):
            new = MASK                                         # wpa_passphrase SSID PASSPHRASE
        elif tool in ("neo4j-admin", "neo4j") and positionals[-2:] == ["set-initial-password", arg]:
            new = MASK
        elif tool == "vault" and positionals[:2] in (["kv", "put"], ["kv", "patch"]) and "=" in arg \
                and not arg.startswith("-") and arg.partition("=")[2][:1] not in ("@", "-", ""):
            new = arg.partition("=")[0] + "=" + MASK           # whatever is put in a vault is secret
        elif tool == "rclone" and positionals[:2] in (["config", "create"], ["config", "update"]) \
                and positionals[-1:] == [arg] \
                and (len(positionals) - (4 if positionals[1] == "create" else 3)) % 2 == 0 \
                and len(positionals) > 4 and secret_name(positionals[-2]):
            new = MASK                                         # rclone config create NAME TYPE KEY VALUE...
        elif tool in LOGIN and "login" in positionals and arg.startswith("-p") and not arg.startswith("--") \
                and len(arg) > 2:
            new = "-p=" + MASK if arg.startswith("-p=") else "-p" + MASK     # docker login -pX / -p=X (pflag)
        elif tool in SMB and arg in ("-U", "--user") and nxt is not None:
            mask_next = lambda v: _mask_after(v, "%")          # noqa: E731
        elif tool in SMB and (arg.startswith("-U") or arg.startswith("--user=")):
            new = _mask_after(arg, "%")
        elif tool in LOGIN and "login" in positionals and arg == "-p" and nxt is not None:
            mask_next = _pass_arg                              # docker login -p X, az login -p X
        elif tool == "vault" and positionals[-1:] == [arg] and positionals[:-1] == ["login"] and arg != "-":
            new = MASK                                         # vault login TOKEN
        elif tool == "htpasswd" and positionals and i == len(argv) - 1 and any(
                a.startswith("-") and not a.startswith("--") and "b" in a for a in argv):
            new = MASK                                         # htpasswd -b FILE USER PASSWORD
        elif tool in ("kubectl", "oc") and "secret" in positionals and arg.startswith("--from-literal"):
            if arg == "--from-literal" and nxt is not None:
                mask_next = lambda v: _mask_after(v, "=")      # noqa: E731
            else:
                new = "--from-literal=" + _mask_after(arg[len("--from-literal="):], "=")
        elif tool == "aws" and positionals[:2] == ["configure", "set"] and len(positionals) == 4 \
                and positionals[3] == arg and secret_name(positionals[2]):
            new = new if new != arg or MASK in arg else MASK   # aws configure set NAME VALUE
        elif tool == "gh" and "secret" in positionals and arg in ("-b", "--body") and nxt is not None:
            mask_next = _pass_arg
        elif tool == "mysqladmin" and positionals[-1:] == ["password"] and arg == "password" and nxt is not None:
            mask_next = _pass_arg                              # mysqladmin password NEW
        elif tool == "rabbitmqctl" and positionals[:1] in (["add_user"], ["change_password"]) \
                and len(positionals) == 3 and positionals[2] == arg:
            new = MASK
        elif configuring and _config_set(positionals, arg):
            new = new if new != arg or MASK in arg else MASK   # npm/yarn/kubectl config set NAME VALUE
        elif arg.startswith("-") and "=" not in arg and nxt is not None and not nxt.startswith("-") \
                and secret_name(arg) and arg != "-" and FLAG.fullmatch(arg):
            mask_next = _pass_arg                              # --password X, --token X, -passin pass:X
        out[i] = new
        if mask_next is not None:
            out[i + 1] = mask_next(_content(argv[i + 1], rules)) if argv[i + 1] != MASK else MASK
            i += 2
            continue
        i += 1
    return out
