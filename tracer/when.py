"""Times as people type and read them: `24h`, `2026-11-23T10:00`, "3h 02m later"."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = 100 * 365 * 86400     # past this, a duration is a typo: its dates cannot be written


class TimeError(ValueError):
    pass


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise TimeError(f"{text!r} is not a duration; use a number and a unit, like 90m, 24h or 7d")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds > MAX_DURATION:
        raise TimeError(f"{text!r} is longer than whodid can mean; durations go up to 100 years (36500d)")
    return seconds


def parse_time(text: str, now: float) -> float:
    """A point in time: a duration ago (`24h`), or an ISO 8601 date/time (UTC unless it says)."""
    text = text.strip()
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimeError(f"{text!r} is neither a duration (24h, 7d) nor an ISO time "
                        "(2026-11-23 or 2026-11-23T10:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def format_duration(seconds: float) -> str:
    """3h 02m, 2d 4h, 45s: the two most significant units, zero-padded where it reads better."""
    s = int(round(abs(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {(s % 3600) // 60:02d}m"
    days, hours = s // 86400, (s % 86400) // 3600
    return f"{days}d {hours}h" if hours else f"{days}d"


def format_span(seconds: float) -> str:
    """A window as people say it: 2h, 7d, 1h 30m (no zero-padded parts)."""
    text = format_duration(seconds)
    return text[:-4] if text.endswith(" 00m") else text


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ts: float, now: float) -> str:
    delta = now - ts
    return f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(delta)}"
