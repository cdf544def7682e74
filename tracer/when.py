"""Times as people type and read them: `24h`, `1h30m`, `2026-11-23T10:00`, "3h 02m later".

Pure: the query grammar (bot/query.py) and the config read times through here, so a
duration means the same everywhere (docs/query.md)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

# a duration is one or more number+unit parts, largest unit first: 90m, 1h30m, 1d 12h, 2w3d, 1.5h
_PART = r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw])"     # ASCII digits: \d takes \uff11 too
_DURATION = re.compile(rf"^\s*(?:{_PART}\s*)+$")
_PARTS = re.compile(_PART)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = 100 * 365 * 86400     # past this, a duration is a typo: its dates cannot be written
DURATION_FORMS = "a number and a unit (s m h d w), like 90m, 24h or 7d, or several, like 1h30m"
TIME_FORMS = "a duration ago (90m, 1h30m, 7d) or a date/time in UTC unless it says (2026-11-23, 2026-11-23T10:00Z)"


class TimeError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """Seconds in `90m`, `1h30m`, `1d 12h`, `1.5h`: each unit at most once, largest first."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise TimeError(f"{text!r} is not a duration; use {DURATION_FORMS}")
    parts = _PARTS.findall(text)
    units = [_UNIT[u] for _, u in parts]
    if units != sorted(set(units), reverse=True):
        raise TimeError(f"{text!r} is not a duration: write each unit once, largest first, like 1d12h or 1h30m")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds > MAX_DURATION:
        raise TimeError(f"{text!r} is longer than whodid can mean; durations go up to 100 years (36500d)")
    return seconds


def parse_time(text: str, now: float) -> float:
    """A point in time: a duration ago (`24h`, `1h30m`), or an ISO 8601 date or date and time
    (UTC unless it says: `2026-11-23`, `2026-11-23T10:00`, `2026-11-23T10:00+01:00`)."""
    text = text.strip()
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeError(f"{text!r} is neither a duration ago (90m, 1h30m, 7d) nor a date/time "
                        "(2026-11-23, 2026-11-23T10:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        ts = dt.timestamp()
        datetime.fromtimestamp(ts, timezone.utc)         # 0001-01-01T00:00+01:00 is in year 0 in UTC:
    except (OverflowError, OSError, ValueError):         # iso() and clock() could not write it
        raise TimeError(f"{text!r} is outside the times whodid can handle (years 1 to 9999 in UTC)") from None
    return ts


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
