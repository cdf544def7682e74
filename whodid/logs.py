"""The daemons' log: `whodid serve` and `whodid-agent run` / `forward`, on standard logging.

Each component logs through its own logger (`whodid.serve`, `whodid.collector`, `whodid.bot`,
`whodid.web`, `whodid.canary`, `whodid.digest`, `whodid.http`, `whodid.agent`), at a level
that says what happened: INFO for the routine, WARNING for degraded but working, ERROR for
data lost or a delivery that failed. setup() is the one place that decides how records
come out - on the root logger, so Bolt's, the Slack SDK's and APScheduler's records come out
the same way (at WARNING unless the level is debug) - in one of two formats:

- text: `whodid web: message`, the words people (and the tests) have always read;
- json: one object per line - ts (ISO-8601, UTC), level, logger, msg, the extras a
  component gave (host, canary, channel...), and an exception as `exc` (one line) and
  `traceback` - for log shippers. A record is one line whatever it holds.

Rules: every record is masked for secrets on its way out, whoever logged it (Slack and agent
tokens, bearer tokens, credentials in URLs, trace-link tokens): a debug log of the Slack SDK
holds its Authorization header. Before setup() - whodid used as a library, a test - whodid's
loggers print text to stderr at INFO, as they always did. Records go to the stderr of the
moment (a test's capture, a redirect), never one remembered at setup.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Callable

from whodid.tracer.secret_rules import DEFAULT_RULES, MASK

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")
# libraries that log through the standard module; theirs at INFO is chatter (a job added, a
# socket pinged), so WARNING unless asked for debug
LIBRARIES = ("slack_bolt", "slack_sdk", "apscheduler", "urllib3", "websocket")

# today's words in text: a component's prefix; "" when the message names its server itself
PREFIXES = {"whodid.serve": "whodid serve", "whodid.collector": "whodid serve", "whodid.bot": "whodid bot",
            "whodid.web": "whodid web", "whodid.canary": "whodid canary",
            "whodid.digest": "whodid serve: change digest", "whodid.http": "", "whodid.agent": "whodid-agent"}

# whodid's own secrets, beside the shapes every redaction knows (tracer/secret_rules.py)
OWN_SECRETS = (
    (re.compile(r"\b(wdt_)[A-Za-z0-9_-]+"), rf"\g<1>{MASK}"),              # agent tokens
    (re.compile(r"\b(xapp-)[0-9A-Za-z-]+"), rf"\g<1>{MASK}"),              # Slack app-level tokens
    (re.compile(r"\b(xox[a-z]-)[0-9A-Za-z-]+"), rf"\g<1>{MASK}"),          # Slack tokens, however short
    (re.compile(r"([?&](?:t|token|ticket)=)[^&\s'\"]+"), rf"\g<1>{MASK}"),  # trace links, Socket Mode URLs
    (re.compile(r"\b(k8s-aws-v1\.)[A-Za-z0-9_-]+"), rf"\g<1>{MASK}"),      # EKS tokens (aws eks get-token)
    (re.compile(r"\b(ya29\.)[A-Za-z0-9_.-]+"), rf"\g<1>{MASK}"),           # Google access tokens (GKE's plugin)
)

# what a LogRecord holds of its own; anything else on it is an extra a caller gave
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask(text: str) -> str:
    """text with every secret the log may meet masked."""
    for rule in DEFAULT_RULES:
        text = rule(text)
    for pattern, replace in OWN_SECRETS:
        text = pattern.sub(replace, text)
    return text


def extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """`whodid web: message` - a component's prefix, then its words (a library's: its logger's name)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = PREFIXES.get(record.name, record.name)
        line = (f"{prefix}: " if prefix else "") + record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        # a newline in what a record carries (a host name, a command line, an exception's words)
        # would start a line of its own, read by journald as a record of whodid's: continuation
        # lines are indented, whatever breaks them (\r, U+2028 and the rest splitlines knows)
        first, *rest = line.splitlines() or [""]
        return mask("\n".join([first, *(f"    {more}" for more in rest)]))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": mask(record.getMessage())}
        for key, value in extras(record).items():
            out.setdefault(key, mask(value) if isinstance(value, str) else value)
        if record.exc_info and record.exc_info[0] is not None:
            kind, exc = record.exc_info[0], record.exc_info[1]
            out["exc"] = mask(" ".join(f"{kind.__name__}: {exc}".split()))
            out["traceback"] = mask(self.formatException(record.exc_info))
        # json leaves these raw, and readers of lines (splitlines, JavaScript) break on them
        return json.dumps(out, ensure_ascii=False, default=repr).translate(_LINE_BREAKS_LEFT_RAW)


_LINE_BREAKS_LEFT_RAW = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class StderrHandler(logging.StreamHandler):
    """To sys.stderr as it is when the record is written (as logging's lastResort does)."""

    def __init__(self, formatter: logging.Formatter, level: int = logging.NOTSET):
        logging.Handler.__init__(self, level)
        self.setFormatter(formatter)

    @property
    def stream(self):
        return sys.stderr


WHODID = logging.getLogger("whodid")
# before setup(): today's behaviour, whodid's words at INFO on stderr, nothing else touched
_BEFORE_SETUP = StderrHandler(TextFormatter())
WHODID.addHandler(_BEFORE_SETUP)
WHODID.setLevel(logging.INFO)
WHODID.propagate = False


def add_arguments(parser) -> None:
    """--log-format and --log-level, for a daemon's command (they win over the config's `logging`)."""
    parser.add_argument("--log-format", choices=FORMATS, help="text (default: logging.format) or json: one "
                        "object per line, for log shippers")
    parser.add_argument("--log-level", choices=tuple(LEVELS), help="the least a record must be to be logged "
                        "(default: logging.level, info); debug shows Slack's and APScheduler's records too")


def setup_for(args, config=None) -> None:
    """setup() from a command's flags, else the config's `logging` section, else the defaults."""
    setup(getattr(args, "log_level", None) or (config.level if config else "info"),
          getattr(args, "log_format", None) or (config.format if config else "text"))


def check(level: str, fmt: str) -> str | None:
    """What is wrong with a level and a format, if anything."""
    if level not in LEVELS:
        return f"the log level is one of {', '.join(LEVELS)}, got {level!r}"
    if fmt not in FORMATS:
        return f"the log format is text or json, got {fmt!r}"
    return None


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send every record (whodid's and its libraries') to stderr in `fmt` from `level` up.
    Called again, it replaces what it set before."""
    problem = check(level, fmt)
    if problem:
        raise ValueError(problem)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    handler = StderrHandler(JsonFormatter() if fmt == "json" else TextFormatter())
    if level != "debug":
        handler.addFilter(_ours_or_trouble)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    WHODID.removeHandler(_BEFORE_SETUP)
    WHODID.setLevel(logging.NOTSET)
    WHODID.propagate = True
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.captureWarnings(True)                  # a DeprecationWarning is a record too, not two raw lines
    sys.excepthook = _uncaught
    threading.excepthook = lambda a: _uncaught(a.exc_type, a.exc_value, a.exc_traceback, a.thread)


def _ours_or_trouble(record: logging.LogRecord) -> bool:
    """Below debug, a library's record shows from WARNING up. Its logger's level cannot promise
    that: Bolt gives each logger it makes the root's level, under names of its own (`app.py`)."""
    return record.levelno >= logging.WARNING or record.name == "whodid" or record.name.startswith("whodid.")


def _uncaught(kind, value, tb, thread=None) -> None:
    """A crash, or a thread that died: one record, with the traceback, in the chosen format."""
    if kind is SystemExit:
        return
    where = f"thread {thread.name}" if thread is not None else "whodid"
    WHODID.error(f"{where} stopped on an unexpected {kind.__name__}: {value} - a bug in whodid; please report it",
                 exc_info=(kind, value, tb))


class Log:
    """What a component says: to its logger, at a level - or, when its caller gave a callable
    (`log=`: a test collecting messages, the demo silencing them), to that, whatever the level.
    Fields are structured extras (host=, canary=...): in JSON, keys of their own."""

    def __init__(self, logger: logging.Logger, said: Callable[[str], None] | None = None):
        self.logger = logger
        self.said = said

    def __call__(self, msg: str, **fields) -> None:
        self._say(logging.INFO, msg, fields)

    def info(self, msg: str, **fields) -> None:
        self._say(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields) -> None:
        self._say(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields) -> None:
        self._say(logging.ERROR, msg, fields)

    def _say(self, level: int, msg: str, fields: dict) -> None:
        if self.said is not None:
            self.said(msg)
        else:
            self.logger.log(level, msg, extra=fields or None)


def get(component: str, said: Callable[[str], None] | None = None) -> Log:
    """The Log of `whodid.<component>` (or the caller's callable)."""
    return Log(logging.getLogger(f"whodid.{component}"), said)
