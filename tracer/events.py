"""The event schema, version 1: what every producer (agent, audit import, demo) emits.

docs/events.md is the prose form of SPEC below; tests/test_events.py keeps the two in step.
`parse_event` is pure: it takes one decoded JSON object and returns a normalised dict, or
raises EventError naming the field that is wrong.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
import sys
from typing import Any

import orjson

SCHEMA_VERSION = 1

# How a process is identified: (host, boot, pid, start). `start` is an integer the producer
# derives from the process's start time (ns since boot for the agent); it only has to be the
# same in every event about one process and differ between two processes that share a pid.
# Boots of events from auditd's logs (agent/audit.py) are named "audit:<host>..." - audit has no
# boot id - and their processes are named by their clone's time in ms (or 0), never by /proc's
# start tick: the store's restart join (see Store._proc_id) applies to no such boot.
AUDIT_BOOT_PREFIX = "audit:"

PROCESS_KINDS = frozenset({"fork", "exec", "exit", "cred", "login", "connect", "accept", "listen", "file",
                           "uconnect", "uaccept"})

FILE_OPS = frozenset({"write", "create", "rename", "unlink", "chmod", "chown", "truncate", "mkdir", "rmdir"})
# An agent's run, told in `host` events (docs/events.md): start, a heartbeat while running, a
# clean stop. The store keeps one row per run; the gaps between runs are the agent's outages.
RUN_STATES = frozenset({"start", "alive", "stop"})
LOGIN_METHODS = frozenset(
    {"publickey", "password", "keyboard-interactive", "gssapi-with-mic", "hostbased", "none", "other"}
)

# field -> (type, required). Types: str, int, uint, num, bool, argv, addr, port, addrs, hostname.
COMMON = {
    "v": ("int", True),
    "kind": ("str", True),
    "host": ("str", True),
    "boot": ("str", True),
    "ts": ("num", True),
    "id": ("str", False),
}
PROCESS = {"pid": ("uint", True), "start": ("uint", True)}
NAMES = {"user": ("str", False), "euser": ("str", False), "auser": ("str", False),
         "group": ("str", False), "egroup": ("str", False)}
SOCKET = {"laddr": ("addr", True), "lport": ("port", True), "raddr": ("addr", True), "rport": ("port", True)}
# Connections over a uid's budget are counted in the agent, not each sent (docs/agent.md, "Under
# a connection flood"): one event per (process, place, minute) - the first connection's, its
# `ts` the first - standing for `count` connections, the last at `last`.
COUNTED = {"count": ("uint", False), "last": ("num", False)}
# A unix stream connection's other end, as SO_PEERCRED gives it (the listener for a uconnect,
# the client for a uaccept), and whether the agent found the connection already made at its
# start (sock_diag) rather than saw it being made.
UPEER = {"peer_pid": ("uint", False), "peer_start": ("uint", False), "peer_uid": ("uint", False),
         "snapshot": ("bool", False)}

SPEC: dict[str, dict[str, tuple[str, bool]]] = {
    "host": {"addrs": ("addrs", False), "os": ("str", False), "agent": ("str", False),
             "boot_time": ("num", False), "run": ("str", False), "state": ("str", False)},
    "loss": {"count": ("uint", True), "since": ("num", True), "what": ("str", False)},
    "fork": {**PROCESS, "ppid": ("uint", True), "pstart": ("uint", True)},
    "exec": {**PROCESS, "argv": ("argv", True), "truncated": ("bool", False), "exe": ("str", False),
             "cwd": ("str", False), "uid": ("uint", True), "euid": ("uint", True),
             "gid": ("uint", False), "egid": ("uint", False), "auid": ("uint", False),
             "ses": ("uint", False), "tty": ("str", False), "comm": ("str", False),
             "ppid": ("uint", False), "pstart": ("uint", False), "pidns": ("uint", False),
             "container": ("str", False), "snapshot": ("bool", False), **NAMES},
    "exit": {**PROCESS, "code": ("int", False), "signal": ("uint", False)},
    "cred": {**PROCESS, "via": ("str", True), "old_uid": ("uint", True), "old_euid": ("uint", True),
             "uid": ("uint", True), "euid": ("uint", True), "old_user": ("str", False),
             "old_euser": ("str", False), "old_gid": ("uint", False), "old_egid": ("uint", False),
             "gid": ("uint", False), "egid": ("uint", False), **NAMES},
    "login": {**PROCESS, "user": ("str", True), "uid": ("uint", False), "method": ("str", True),
              "key_fp": ("str", False), "key_type": ("str", False),
              "raddr": ("addr", True), "rport": ("port", True),
              "laddr": ("addr", False), "lport": ("port", False),
              "service": ("str", False), "ses": ("uint", False), "tty": ("str", False)},
    # rname: the name the host was answered for before it connected (agent/dnswatch.py); a hint
    # about a fact, so a bad one is dropped and the connection kept (hostname_field)
    "connect": {**PROCESS, **SOCKET, **COUNTED, "rname": ("hostname", False)},
    "accept": {**PROCESS, **SOCKET, **COUNTED},
    # a TCP socket began listening (no remote end): who opened a port
    "listen": {**PROCESS, "laddr": ("addr", True), "lport": ("port", True)},
    # `conn` pairs a connect with its accept: unique per host and boot, opaque to all but the agent
    "uconnect": {**PROCESS, "path": ("str", True), "bound": ("str", False), "conn": ("str", True), **UPEER},
    "uaccept": {**PROCESS, "conn": ("str", True), "path": ("str", False), **UPEER},
    "file": {**PROCESS, "op": ("str", True), "path": ("str", True), "path2": ("str", False),
             "mode": ("uint", False), "uid": ("uint", False), "gid": ("uint", False),
             "euid": ("uint", False), "euser": ("str", False)},
}

# per kind, every field it may carry: (name, type, required), common fields first
_FIELDS = {kind: tuple((name, ftype, req) for fields in (COMMON, spec) for name, (ftype, req) in fields.items())
           for kind, spec in SPEC.items()}

AUID_UNSET = 4294967295  # the kernel's "no login uid" ((uid_t)-1)
MAX_STR = 8192
MAX_ARGV = 1024
MAX_CONN = 256      # a unix connection's id: the agent's is "<hex sk>-<ts_ns>", some 35 characters
# What an SQLite INTEGER holds: a bigger number would fail at insert time, inside the
# collector's group commit, and take other hosts' batches down with it.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
# Times a calendar can show (1970 to the end of year 9999): 1e300 is a finite number, but no
# trace could print it.
TS_MAX = 253402300800.0


class EventError(ValueError):
    """An event that does not follow the schema. `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _check(field: str, kind: str, value: Any) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise EventError(field, f"expected a string, got {type(value).__name__}")
        if len(value) > MAX_STR:
            raise EventError(field, f"longer than {MAX_STR} characters")
        return _text(field, value)
    if kind in ("int", "uint", "port"):
        # bool is an int subclass in Python; JSON true/false must not pass for a number.
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventError(field, f"expected an integer, got {type(value).__name__}")
        if kind == "uint" and value < 0:
            raise EventError(field, "must not be negative")
        if kind == "port" and not 0 <= value <= 65535:
            raise EventError(field, f"port {value} out of range 0-65535")
        if not INT_MIN <= value <= INT_MAX:
            raise EventError(field, f"{_digits(value)} does not fit in 64 bits")
        return value
    if kind == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise EventError(field, "expected a finite number (seconds since the epoch)")
        if not 0 <= value < TS_MAX:
            raise EventError(field, f"{_digits(value)} is not a time between 1970 and 9999 (seconds since the epoch)")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise EventError(field, f"expected true or false, got {type(value).__name__}")
        return value
    if kind == "argv":
        if not isinstance(value, list) or not value:
            raise EventError(field, "expected a non-empty list of strings")
        if len(value) > MAX_ARGV:
            raise EventError(field, f"more than {MAX_ARGV} arguments")
        for i, arg in enumerate(value):
            if not isinstance(arg, str):
                raise EventError(f"{field}[{i}]", f"expected a string, got {type(arg).__name__}")
            if len(arg) > MAX_STR:
                raise EventError(f"{field}[{i}]", f"longer than {MAX_STR} characters")
            _text(f"{field}[{i}]", arg)
        return value
    if kind == "addr":
        return normalise_addr(field, value)
    if kind == "addrs":
        if not isinstance(value, list):
            raise EventError(field, "expected a list of addresses")
        return [normalise_addr(f"{field}[{i}]", a) for i, a in enumerate(value)]
    raise AssertionError(kind)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:           # an integer too big to be a float
        return False


def _digits(value: int | float) -> str:
    """A number for a message: a 4000-digit integer is not repeated whole."""
    text = repr(value)
    return text if len(text) <= 24 else f"a {len(text)}-digit number"


def _text(field: str, value: str) -> str:
    """Strings must be storable. A byte that was not UTF-8 travels as a lone surrogate
    U+DC80-U+DCFF (Python's surrogateescape, as the agent decodes argv and paths): that is data,
    and kept. Any other lone surrogate (U+D800-U+DC7F, U+DD00-U+DFFF) is no character and no
    byte: refused."""
    if value.isascii():
        return value
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff" and not "\udc80" <= ch <= "\udcff":
            raise EventError(field, f"holds a lone surrogate U+{ord(ch):04X} at character {i}, which is not "
                                    "text; send bytes that are not UTF-8 as U+DC80-U+DCFF (surrogateescape)")
    return value


MAX_HOSTNAME = 253
# a DNS host name as whodid keeps one: labels of letters, digits, `-` and `_` (SRV, DKIM), 1-63
# characters each, lowercase, no trailing dot - never a space, a control character or markup
_HOSTNAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


def hostname_field(value: Any) -> str | None:
    """A host name field (a connect's `rname`) normalised - lowercase, no trailing dot - or None
    when it is not a host name (wrong type, over 253 characters, any other character). Names
    come off the network: they are hostile data, and a bad one is dropped, not stored."""
    if not isinstance(value, str) or len(value) > MAX_HOSTNAME + 1 or not value.isascii():
        return None
    value = value.lower()
    if value.endswith("."):
        value = value[:-1]
    if len(value) > MAX_HOSTNAME or not _HOSTNAME.fullmatch(value):
        return None
    return value


def fit_argv(argv: list[str]) -> tuple[list[str], bool]:
    """argv within the schema's limits, as a producer must send it - at most MAX_ARGV arguments
    of at most MAX_STR characters - and whether anything was cut (the event's `truncated`).
    A command too long for the schema still ran: cut, it is stored; whole, every consumer
    refuses it, and padding a command's arguments would hide it from whodid."""
    if len(argv) <= MAX_ARGV and all(len(a) <= MAX_STR for a in argv):
        return argv, False
    return [a[:MAX_STR] for a in argv[:MAX_ARGV]], True


def normalise_addr(field: str, value: Any) -> str:
    """IPv4-mapped IPv6 addresses become plain IPv4, so both sides of a hop compare equal."""
    if not isinstance(value, str):
        raise EventError(field, f"expected an IP address string, got {type(value).__name__}")
    try:
        return plain_ip(value)
    except ValueError:
        raise EventError(field, f"{value!r} is not an IP address") from None


_MAPPED = b"\0" * 10 + b"\xff\xff"
_ZEROS = b"\0" * 12


def plain_ip(value: str | bytes) -> str:
    """An address (text, or 4 or 16 packed bytes) as text, IPv4-mapped IPv6 as plain IPv4.
    Raises ValueError for anything that is not an address."""
    # every connection event carries two addresses, through the agent's decoder and every
    # store's validation: the common forms go through the C library (a few times faster than
    # ipaddress's objects), and give what ipaddress gives (tests/test_events.py)
    try:
        if type(value) is bytes:
            if len(value) == 4:
                return socket.inet_ntop(socket.AF_INET, value)
            if len(value) == 16 and value[:12] != _ZEROS:       # glibc writes ::a.b.c.d its own way
                if value[:12] == _MAPPED:
                    return socket.inet_ntop(socket.AF_INET, value[12:])
                return socket.inet_ntop(socket.AF_INET6, value)
        elif type(value) is str and socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
            return value
    except OSError:
        pass                                                    # not that form: ipaddress decides
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_event(obj: Any) -> dict[str, Any]:
    """Validate one event object and return it normalised (unknown fields dropped)."""
    if not isinstance(obj, dict):
        raise EventError("event", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if version is None:
        raise EventError("v", "missing schema version (this reader understands v=1)")
    if version != SCHEMA_VERSION:
        raise EventError("v", f"unknown schema version {version!r}; this reader understands v={SCHEMA_VERSION}")
    kind = obj.get("kind")
    fast = _FAST.get(kind) if isinstance(kind, str) else None
    if fast is None:
        raise EventError("kind", f"unknown kind {kind!r}; expected one of {', '.join(sorted(SPEC))}")
    out = fast(obj)
    if out is None:
        out = _fields(kind, obj)
    if not out["host"]:
        raise EventError("host", "must not be empty")
    if kind not in KINDS_WITH_RULES:
        return out                  # forks, exits, execs (most events): their fields were all there is
    if kind == "file":
        if out["op"] not in FILE_OPS:
            raise EventError("op", f"unknown file operation {out['op']!r}; expected one of {', '.join(sorted(FILE_OPS))}")
        if out["op"] == "rename" and "path2" not in out:
            raise EventError("path2", "a rename needs its destination path")
    if kind == "host" and ("run" in out) != ("state" in out):
        raise EventError("state" if "run" in out else "run", "`run` and `state` go together: a run's mark names "
                         "both the run and what it marks")
    if kind == "host" and "state" in out and out["state"] not in RUN_STATES:
        raise EventError("state", f"unknown run state {out['state']!r}; expected one of {', '.join(sorted(RUN_STATES))}")
    if kind == "host" and "run" in out and not out["run"]:
        raise EventError("run", "must not be empty")
    if kind in ("uconnect", "uaccept"):
        _check_unix(kind, out)
    if kind in ("connect", "accept") and ("count" in out or "last" in out):
        if "count" not in out or "last" not in out:
            raise EventError("count", "`count` and `last` go together: a counted connection says how many and "
                             "when the last was")
        if out["count"] < 1:
            raise EventError("count", f"a counted connection stands for at least one; got {out['count']}")
        if out["last"] < out["ts"]:
            raise EventError("last", "the last of counted connections is at or after the first (`ts`)")
    if kind == "login" and out["method"] not in LOGIN_METHODS:
        raise EventError("method", f"unknown login method {out['method']!r}; expected one of {', '.join(sorted(LOGIN_METHODS))}")
    return out


# the kinds parse_event checks beyond their fields' types
KINDS_WITH_RULES = frozenset({"file", "host", "uconnect", "uaccept", "connect", "accept", "login"})


def _fields(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """An event's fields, checked one by one in SPEC's order: the reference, and the path of
    every event the compiled check (_FAST) does not take as it is - every refusal among them."""
    out: dict[str, Any] = {}
    get = obj.get
    for name, ftype, required in _FIELDS[kind]:
        value = get(name)
        if value is None:
            if required:
                raise EventError(name, f"required for kind {kind!r} but missing")
            continue
        # the common cases without a call (ingest spends most of its time here); anything
        # else, including every error, goes through _check
        t = type(value)
        if t is str and ftype == "str" and len(value) <= MAX_STR and value.isascii():
            out[name] = value
        elif t is int and (ftype == "uint" and 0 <= value <= INT_MAX or ftype == "int" and INT_MIN <= value <= INT_MAX):
            out[name] = value
        elif t is float and ftype == "num" and 0.0 <= value < TS_MAX:      # finite, and a time
            out[name] = value
        elif t is list and ftype == "argv" and 0 < len(value) <= MAX_ARGV \
                and all(type(a) is str and len(a) <= MAX_STR and a.isascii() for a in value):
            out[name] = value
        elif ftype == "hostname":
            host_name = hostname_field(value)
            if host_name is not None:
                out[name] = host_name
        else:
            out[name] = _check(name, ftype, value)
    return out


# --- the compiled check --------------------------------------------------------------------
# parse_event was most of the collector's time under the GIL (bench/ingest_http.py): the loop
# above reads every field SPEC names, absent or not, and dispatches on its type each time. For
# each kind, SPEC is compiled once into a function of straight-line checks of the common case
# (ASCII strings within MAX_STR, integers and times within range, a plain argv), in SPEC's
# order: it returns the same dict _fields would, or None - a required field missing, any other
# value - and then _fields decides, so every refusal keeps its field and its words.
_COMMON_CASE = {
    "str": "type(x) is str and len(x) <= MAX_STR and x.isascii()",
    "uint": "type(x) is int and 0 <= x <= INT_MAX",
    "int": "type(x) is int and INT_MIN <= x <= INT_MAX",
    "num": "type(x) is float and 0.0 <= x < TS_MAX",
    "bool": "type(x) is bool",
    "port": "type(x) is int and 0 <= x <= 65535",
    "argv": "type(x) is list and 0 < len(x) <= MAX_ARGV",         # and each argument (below) a plain string
}


def _compile(kind: str):
    lines = [f"def check_{kind}(obj):", "    get = obj.get", "    out = {}"]
    for name, ftype, required in _FIELDS[kind]:
        lines += [f"    x = get({name!r})", "    if x is None:", f"        {'return None' if required else 'pass'}"]
        common = _COMMON_CASE.get(ftype)
        lines.append(f"    elif {common}:" if common else "    elif False:")
        if ftype == "argv":
            lines += ["        for a in x:", "            if type(a) is not str or len(a) > MAX_STR or not a.isascii():",
                      "                return None"]
        lines += [f"        out[{name!r}] = x", "    else:", "        return None"]
    lines.append("    return out")
    scope = {"MAX_STR": MAX_STR, "MAX_ARGV": MAX_ARGV, "INT_MIN": INT_MIN, "INT_MAX": INT_MAX, "TS_MAX": TS_MAX}
    exec("\n".join(lines), scope)          # noqa: S102 - our own text, made from SPEC above
    return scope[f"check_{kind}"]


_FAST = {kind: _compile(kind) for kind in SPEC}


def _check_unix(kind: str, out: dict[str, Any]) -> None:
    """What a unix connection event must say beyond its fields' types: a connection id that can
    pair it (the store keys on it), a path that names a socket (an abstract name is "@" + name,
    so never empty), and a peer's start only with the pid it qualifies."""
    if not out["conn"]:
        raise EventError("conn", "must not be empty: it pairs a uconnect with its uaccept")
    if len(out["conn"]) > MAX_CONN:
        raise EventError("conn", f"longer than {MAX_CONN} characters; it is an id, not data")
    if "path" in out and not out["path"]:
        raise EventError("path", 'must not be empty (an abstract name is "@" followed by the name)')
    if "bound" in out and not out["bound"]:
        raise EventError("bound", "must not be empty; leave it out when the listener's name is `path`")
    if "peer_start" in out and "peer_pid" not in out:
        raise EventError("peer_start", "given without peer_pid: a start names a process only with its pid")


def decode_line(line: str | bytes) -> dict[str, Any]:
    """One JSON line -> a normalised event. Bad JSON is an EventError too, never a traceback.

    orjson first: the standard library's decoder was two thirds of the collector's decoding
    (bench/ingest_http.py). What orjson takes it reads as the standard decoder does, but for
    integers past 64 bits, which it reads as floats: a schema field refuses both, so the events
    accepted are the same. Anything it refuses (NaN, lone surrogates, a BOM, UTF-16) and any
    event parse_event refuses go the standard way, so each refusal says what it always said."""
    try:
        return parse_event(orjson.loads(line))
    except (ValueError, TypeError, RecursionError):     # orjson.JSONDecodeError and EventError among them
        pass
    return _decode_line_std(line)


def _decode_line_std(line: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        if "integer string conversion" in str(exc):     # Python's guard against quadratic int parsing
            raise EventError("json", f"not valid JSON (an integer of more than {sys.get_int_max_str_digits()} "
                                     "digits)") from None
        raise EventError("json", f"not valid JSON ({exc})") from None
    except RecursionError:
        # the parser recurses once per level: thousands of [[[[ would take the thread's stack
        raise EventError("json", f"nested more than {sys.getrecursionlimit()} levels deep; an event is a "
                                 "flat object") from None
    return parse_event(obj)
