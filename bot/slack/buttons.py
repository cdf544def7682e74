"""The state a button carries: the question and which answer to show, signed.

A button's value comes back from Slack as the user's client sent it, so it is untrusted:
it carries no database ids, only what a person could type anyway (pattern, host, user,
window) plus a match number and a scope, and it is signed with a key only the bot knows.
A value that was changed, is malformed, or is out of range is refused, and authorisation
is checked again on every click.

A button under an answer pins the match it was made for (tracer.Target: host, boot, pid,
process start, and the exec's or change's time), so a newer command matching the same
pattern cannot change what it shows; the match number is only a label. A button that asks
a question (a wider window, a change digest's Trace) carries an empty pin. A button made
before pins existed (no pin field at all) is refused with "ask again": it would show "match N",
whatever that is now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

from whodid import private
from whodid.tracer.destinations import MAX_SPEC, DestinationError, parse_destination
from whodid.tracer.trace import Target

from .ask import MAX_PATTERN, Ask

VERSION = "1"
MAX_VALUE = 2000             # Slack's limit for a button's value


class StateError(ValueError):
    pass


@dataclass(frozen=True)
class View:
    ask: Ask
    index: int = 0           # which match (0 = the newest) when it was made: a label once pinned
    scope: int = 0
    pin: Target | None = None    # the exact match, for a view of an answer


def encode(view: View, key: bytes) -> str:
    body = {**ask_body(view.ask), "i": view.index, "c": view.scope, "k": pin_body(view.pin)}
    raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
    value = f"{VERSION}.{raw}.{_sign(raw, key)}"
    if len(value) > MAX_VALUE:
        raise StateError("the question is too long to fit in a button")
    return value


def decode(value: str, key: bytes) -> View:
    try:
        version, raw, sig = value.split(".")
    except (AttributeError, ValueError):
        raise StateError("malformed button value") from None
    if version != VERSION:
        raise StateError("this button is from an older version of whodid; ask again")
    if not hmac.compare_digest(sig, _sign(raw, key)):
        raise StateError("the button's value does not carry whodid's signature")
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(body, dict) and "k" not in body:
            raise StateError("this button is from an older whodid, which did not pin the answer to one process "
                             "(a newer match could have taken its place); ask again")
        view = View(ask=ask_from(body), index=_int(body["i"], 0, 100), scope=_int(body["c"], 0, 3),
                    pin=pin_from(body["k"]))
    except StateError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"the button's value is not valid ({exc})") from None
    return view


def ask_body(a: Ask) -> dict:
    """The question as a signed value carries it (buttons, trace links): what a person could type."""
    body = {"p": a.pattern, "h": a.host, "u": a.user, "s": round(a.since, 3), "t": a.until, "w": a.since_text}
    # connection keys only when asked: a question about commands keeps the value it always had
    body.update({k: v for k, v in (("to", a.to), ("fr", a.from_), ("l", a.listen)) if v})
    return body


def ask_from(body: dict) -> Ask:
    """ask_body's inverse, checking every field: the value came back from outside."""
    to, fr = _destination(body.get("to")), _destination(body.get("fr"))
    listen = None if body.get("l") is None else _int(body["l"], 1, 65535)
    if sum(x is not None for x in (to, fr, listen)) > 1:
        raise ValueError("the question asks by two of to:, from:, listen:")
    asked_by_connection = not (to is None and fr is None and listen is None)
    pattern = "" if asked_by_connection and body["p"] == "" else _str(body["p"], MAX_PATTERN, required=True)
    return Ask(pattern=pattern,
               host=_str(body["h"], 200), user=_str(body["u"], 100), since=_num(body["s"]),
               until=None if body["t"] is None else _num(body["t"]), since_text=_str(body["w"], 40, required=True),
               to=to, from_=fr, listen=listen)


def _destination(v) -> str | None:
    """A to:/from: spec from outside: text that reads as a destination, or ValueError."""
    if v is None:
        return None
    text = _str(v, MAX_SPEC, required=True)
    try:
        parse_destination(text)
    except DestinationError as exc:
        raise ValueError(str(exc)) from None
    return text


def pin_body(t: Target | None) -> list | None:
    return None if t is None else [t.host, t.boot, t.pid, t.start, t.at, t.op, t.path]


def pin_from(v) -> Target | None:
    """pin_body's inverse, checking every field."""
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 7:
        raise ValueError("the pinned match is malformed")
    host, boot, pid, start, at, op, path = v
    if (op is None) != (path is None):
        raise ValueError("the pinned change is malformed")
    return Target(_str(host, 200, required=True), _str(boot, 200, required=True), _int(pid, 0, 1 << 62),
                  _int(start, -(1 << 62), 1 << 62), _num(at), _str(op, 20), _str(path, 4096))


def key_path(store_path: str) -> str:
    """Where the signing key of the store at store_path lives: beside it, `<store>.key`."""
    return store_path + ".key"


def store_key(store_path: str) -> bytes:
    """The bot's signing key (buttons; trace links derive theirs from it), the same for every
    whodid process using the store - the bot, the trace pages, the CLI printing links.

    It lives in its own private file beside the store (key_path, 0600), not in the store,
    which people are given to read (a copy for an incident, `whodid db stats`). Made on first
    use. Stores from before kept it in their meta table: the first use moves it to the file
    (so links and buttons already posted keep working) and leaves only a note in the store."""
    if store_path == ":memory:":
        return _PROCESS_KEY                 # a store for this process only: a key for it alone
    path = key_path(store_path)
    key = _read_key(path)
    if key is not None:
        return key
    from whodid.tracer import Store
    store = Store.open(store_path, create=True)
    try:
        # the old key must not stay in the store's bytes: zero what the move deletes (SQLite
        # keeps deleted bytes unless built or told otherwise), then copy the WAL into the
        # file at once - other processes holding the store open would delay that for long
        store.zero_deleted()
        moved = False
        with store.transaction():           # the store's write lock: one process makes or moves it
            key = _read_key(path)
            if key is None:
                old = store.get_meta("button_key") or ""
                key = bytes.fromhex(old) if _is_key(old) else secrets.token_bytes(32)
                try:
                    private.write_file(path, key.hex() + "\n")
                except OSError as exc:
                    raise private.PrivateFileError(private.why_not_written(exc, path, "the signing key")) from None
                if old:
                    store.set_meta("button_key", f"moved to {path}")
                    moved = True
        if moved:
            store.checkpoint()
        return key
    finally:
        store.close()


def _is_key(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _read_key(path: str) -> bytes | None:
    """The key in path, None if there is no such file; refused if others may read it."""
    if not os.path.exists(path):
        return None
    private.check_secret(path, "the signing key for links and buttons")
    try:
        text = open(path, encoding="ascii", errors="replace").read().strip()
    except OSError as exc:
        raise private.PrivateFileError(f"cannot read the signing key {path}: {exc.strerror}") from None
    if not _is_key(text):
        raise private.PrivateFileError(f"the signing key {path} is damaged; delete it and whodid makes a new one "
                                       "(links and buttons made before then stop working)")
    return bytes.fromhex(text)


_PROCESS_KEY = secrets.token_bytes(32)


def _sign(raw: str, key: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, raw.encode(), hashlib.sha256).digest()[:16]).decode().rstrip("=")


def _str(v, limit: int, required: bool = False):
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > limit:
        raise ValueError("a text field is missing or too long")
    return v


def _num(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("a time is not a number")
    return float(v)


def _int(v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"a number is outside {lo}-{hi}")
    return v
