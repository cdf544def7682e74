"""Times as people type them (tracer/when.py): compound durations, ISO dates and times, and the
one-line errors every caller (the query language, the config) passes on."""

import pytest

from whodid import config
from whodid.tracer.when import MAX_DURATION, TimeError, parse_duration, parse_time

NOW = 1_795_464_000.0                     # 2026-11-23T20:00Z


@pytest.mark.parametrize("text, seconds", [
    ("90m", 5400), ("1h30m", 5400), ("1h 30m", 5400), ("1.5h", 5400), ("1d12h", 129600), ("2w3d", 17 * 86400),
    ("1d 2h 3m 4s", 86400 + 7200 + 184), ("36500d", 36500 * 86400), ("0s", 0),
])
def test_compound_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_time(text, NOW) == NOW - seconds


@pytest.mark.parametrize("text, words", [
    ("30m1h", "write each unit once, largest first"), ("1h1h", "write each unit once"),
    ("soon", "'soon' is not a duration; use a number and a unit"), ("1e3h", "is not a duration"),
    ("h", "is not a duration"), ("36501d", "durations go up to 100 years"), ("5y", "is not a duration"),
])
def test_bad_durations_say_the_forms(text, words):
    with pytest.raises(TimeError, match=words.replace("(", r"\(")):
        parse_duration(text)


@pytest.mark.parametrize("text, ts", [
    ("2026-11-23", 1_795_392_000), ("2026-11-23T10:00", 1_795_428_000), ("2026-11-23T10:00Z", 1_795_428_000),
    ("2026-11-23 10:00:00", 1_795_428_000), ("2026-11-23T11:00+01:00", 1_795_428_000),
    ("2026-11-23T10:00:00.500Z", 1_795_428_000.5),
])
def test_absolute_times_are_utc_unless_they_say(text, ts):
    assert parse_time(text, NOW) == ts


def test_a_bad_time_names_both_forms():
    with pytest.raises(TimeError, match=r"'tuesday' is neither a duration ago \(90m, 1h30m, 7d\) nor a date/time"):
        parse_time("tuesday", NOW)


def test_config_durations_take_compound_forms_too():
    cfg = config.from_dict({"trace": {"gap_threshold": "1h30m", "default_since": "1d12h"}})
    assert cfg.trace.settings().gap_threshold == 5400
    assert MAX_DURATION == 100 * 365 * 86400
