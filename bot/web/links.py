"""Signed, expiring links to the trace page: `{base_url}/trace?t=TOKEN`.

A link carries the question (what a person could type: pattern, host, user, window), the
match it was made for, pinned (tracer.Target: host, boot, pid, process start, and the exec's or
change's time - never "match N", which a newer command would change), the scope, and when it
expires - no database ids - signed with a key derived from the bot's button key, so a button's
value cannot be used as a link nor a link as a button. The page refuses a link that is
expired, altered or malformed; nothing is served without one. Widening the scope or expanding
a group keeps the same link and the same process: the scope comes with the request and is
bounded, like the buttons' (0-3). Links made before pins existed (no pin field) are refused,
and so is a link without a pin: ask again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from whodid.tracer.trace import Target

from ..slack.ask import Ask
from ..slack.buttons import _int, _num, ask_body, ask_from, pin_body, pin_from

VERSION = "1"
MAX_TOKEN = 4000


class LinkError(ValueError):
    pass


@dataclass(frozen=True)
class Link:
    ask: Ask
    index: int
    scope: int
    expires: float
    pin: Target | None


def link_key(button_key: bytes) -> bytes:
    return hmac.new(button_key, b"whodid trace page links", hashlib.sha256).digest()


def make(ask: Ask, index: int, scope: int, expires: float, key: bytes, pin: Target | None = None) -> str:
    body = {**ask_body(ask), "i": index, "c": scope, "x": round(expires), "k": pin_body(pin)}
    raw = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
    token = f"{VERSION}.{raw}.{_sign(raw, key)}"
    if len(token) > MAX_TOKEN:
        raise LinkError("the question is too long for a link")
    return token


def check(token: str, key: bytes, now: float) -> Link:
    """The link's content, or LinkError saying why it is refused."""
    try:
        version, raw, sig = str(token).split(".")
    except ValueError:
        raise LinkError("this is not a whodid trace link") from None
    if version != VERSION:
        raise LinkError("this link is from another version of whodid; ask again in Slack")
    if not hmac.compare_digest(sig, _sign(raw, key)):
        raise LinkError("this link has been altered, or was made by another whodid")
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(body, dict) and "k" not in body:
            raise LinkError("this link is from an older whodid, which did not pin it to one process (a newer "
                            "match could have taken its place); ask again in Slack (or run whodid trace --link)")
        link = Link(ask_from(body), _int(body["i"], 0, 100), _int(body["c"], 0, 3), _num(body["x"]),
                    pin_from(body["k"]))
    except LinkError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise LinkError(f"this link is not valid ({exc})") from None
    if now >= link.expires:
        raise LinkError("this link has expired; ask again in Slack (or run whodid trace) for a new one")
    return link


def _sign(raw: str, key: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, raw.encode(), hashlib.sha256).digest()[:18]).decode().rstrip("=")
