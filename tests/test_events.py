import re
from pathlib import Path

import pytest

from whodid.tracer.events import SPEC, COMMON, EventError, decode_line, parse_event

from kit import Host

H = Host("web-01", "10.0.0.1")


def test_every_kind_parses():
    events = [
        {"v": 1, "kind": "host", "host": "web-01", "boot": "b", "ts": 1.0, "addrs": ["10.0.0.1", "::1"]},
        H.fork(1, 10, 1),
        H.exec(1, 10, ["ls", "-la"], uid=1001, auid=1001, ses=3, cwd="/home/jim", tty="pts/0"),
        H.exit(2, 10, code=3),
        H.cred(2, 11, 1000, 0),
        H.login(3, 12, "jim", "203.0.113.7", 53122, key_fp="SHA256:abc"),
        H.connect(4, 13, "10.0.0.2", 22, 40000),
        H.file(5, 14, "rename", "/etc/x.tmp", path2="/etc/x"),
    ]
    kinds = [parse_event(e)["kind"] for e in events]
    assert kinds == ["host", "fork", "exec", "exit", "cred", "login", "connect", "file"]


@pytest.mark.parametrize("mutate, field, words", [
    (lambda e: e.pop("v"), "v", "missing schema version"),
    (lambda e: e.update(v=2), "v", "unknown schema version 2"),
    (lambda e: e.update(kind="teleport"), "kind", "unknown kind 'teleport'"),
    (lambda e: e.pop("host"), "host", "required"),
    (lambda e: e.update(host=""), "host", "must not be empty"),
    (lambda e: e.update(ts="yesterday"), "ts", "finite number"),
    (lambda e: e.update(ts=float("nan")), "ts", "finite number"),
    (lambda e: e.update(pid=-1), "pid", "negative"),
    (lambda e: e.update(pid=True), "pid", "expected an integer"),
    (lambda e: e.update(argv=[]), "argv", "non-empty list"),
    (lambda e: e.update(argv=["ls", 3]), "argv[1]", "expected a string"),
    (lambda e: e.pop("uid"), "uid", "required for kind 'exec'"),
    (lambda e: e.update(snapshot="yes"), "snapshot", "true or false"),
])
def test_bad_exec_names_the_field(mutate, field, words):
    ev = H.exec(1, 10, ["ls"])
    mutate(ev)
    with pytest.raises(EventError) as info:
        parse_event(ev)
    assert info.value.field == field
    assert words in str(info.value)


def test_bad_socket_and_file_fields():
    with pytest.raises(EventError, match="rport: port 70000 out of range"):
        parse_event(H.connect(1, 1, "10.0.0.2", 70000, 1))
    with pytest.raises(EventError, match=r"raddr: 'jump-box' is not an IP address"):
        parse_event(H.connect(1, 1, "jump-box", 22, 1))
    with pytest.raises(EventError, match="path2: a rename needs its destination"):
        parse_event(H.file(1, 1, "rename", "/etc/a"))
    with pytest.raises(EventError, match="op: unknown file operation 'nuke'"):
        parse_event(H.file(1, 1, "nuke", "/etc/a"))
    with pytest.raises(EventError, match="method: unknown login method"):
        parse_event({**H.login(1, 1, "jim", "1.2.3.4", 5), "method": "telepathy"})


def test_ipv4_mapped_addresses_compare_equal_to_ipv4():
    ev = parse_event(H.connect(1, 1, "::ffff:10.0.0.2", 22, 40000, laddr="::ffff:10.0.0.1"))
    assert (ev["laddr"], ev["raddr"]) == ("10.0.0.1", "10.0.0.2")
    assert parse_event(H.connect(1, 1, "2001:db8::1", 22, 1))["raddr"] == "2001:db8::1"


def test_unknown_fields_are_dropped_not_stored():
    ev = parse_event({**H.exit(1, 10), "colour": "blue"})
    assert "colour" not in ev


def test_decode_line_turns_bad_json_into_an_event_error():
    with pytest.raises(EventError) as info:
        decode_line('{"v": 1, "kind": ')
    assert info.value.field == "json"
    with pytest.raises(EventError, match="expected a JSON object"):
        decode_line("[1, 2]")


def test_schema_doc_names_every_field_of_every_kind():
    doc = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, flags=re.M))
    for kind, fields in SPEC.items():
        assert f"### `{kind}`" in doc, f"docs/events.md has no section for kind {kind}"
        missing = set(fields) - documented
        assert not missing, f"docs/events.md does not describe {kind} fields {sorted(missing)}"
    assert set(COMMON) <= documented


def _outcome(decode, line):
    try:
        return "event", decode(line)
    except EventError as err:
        return "refused", err.field, err.message


EXEC = '{"v":1,"kind":"exec","host":"web-01","boot":"b","ts":%s,"pid":%s,"start":7,"argv":[%s],"uid":0,"euid":0%s}'


@pytest.mark.parametrize("line", [
    EXEC % ("1.5", "10", '"ls"', ""),
    EXEC % ("1.5", "10", '"ls"', ',"x":123456789012345678901234567890'),      # a big integer nobody reads
    EXEC % ("1.5", "123456789012345678901234567890", '"ls"', ""),              # ... in a field: refused alike
    EXEC % ("1.5", "-9223372036854775809", '"ls"', ""),
    EXEC % ("18446744073709551616", "10", '"ls"', ""),
    EXEC % ("1.5", "18446744073709551615", '"ls"', ""),
    EXEC % ("NaN", "10", '"ls"', ""),
    EXEC % ("Infinity", "10", '"ls"', ""),
    EXEC % ("1e400", "10", '"ls"', ""),
    EXEC % ("1.5", "10", '"ls"', ',"x":NaN'),                                  # orjson refuses, the schema does not
    EXEC % ("1.5", "10", '"\\udc80ls"', ""),                                   # surrogateescape: kept
    EXEC % ("1.5", "10", '"\\ud800ls"', ""),                                   # any other lone surrogate: refused
    EXEC % ("1.5", "10", '"ls"', ',"x":"' + "1" * 5000 + '"'),
    EXEC % ("1.5", "10", '"ls"', ',"x":' + "1" * 5000),                        # past Python's digit guard
    EXEC % ("0.1", "10", '"ls", "\\u00e9\\ud83d\\ude00"', ',"cwd":"/tmp/\\u0000"'),
    '\ufeff' + EXEC % ("1.5", "10", '"ls"', ""),                               # a BOM
    '{"v":1,"kind":"exit","host":"h","boot":"b","ts":1,"pid":1,"start":1,"pid":2}',   # the last of two keys
    '{"v":1,"kind":"exit","host":"h","boot":"b","ts":1,"pid":1,"start":1,}',
    '{"v":1,"kind":"exit","host":"h","boot":"b","ts":1,"pid":1,"start":1}{}',
    '{"v":1,"kind":"exit","host":"h","boot":"b","ts":1,"pid":1.0,"start":1}',
    '[1, 2]', '"x"', "", "{",
])
def test_decode_line_reads_every_line_as_the_standard_decoder_does(line):
    # decode_line takes orjson first; what it accepts, and what it says of what it refuses,
    # must be what the standard library's decoder gives - as text and as UTF-8 bytes
    from whodid.tracer.events import _decode_line_std
    for form in (line, line.encode("utf-8", "surrogatepass")):
        assert _outcome(decode_line, form) == _outcome(_decode_line_std, form)


def test_decode_line_reads_times_to_the_same_float_as_the_standard_decoder():
    import json
    import random
    rng = random.Random(23)
    for _ in range(20000):
        ts = rng.choice([rng.uniform(0, 4e9), rng.uniform(0, 1), rng.random() * 10 ** rng.randint(-20, 11)])
        text = rng.choice([repr(ts), f"{ts:.17g}", f"{ts:.6f}", f"{ts:.3e}"])
        line = '{"v":1,"kind":"exit","host":"h","boot":"b","ts":%s,"pid":1,"start":1}' % text
        assert decode_line(line)["ts"] == json.loads(line)["ts"], text


def _every_kind():
    return [
        {"v": 1, "kind": "host", "host": "web-01", "boot": "b", "ts": 1.0, "addrs": ["10.0.0.1"], "os": "x",
         "run": "r1", "state": "start", "boot_time": 0.5},
        {"v": 1, "kind": "loss", "host": "web-01", "boot": "b", "ts": 2.0, "count": 3, "since": 1.0},
        H.fork(1, 10, 1), H.exit(2, 10, code=3), H.cred(2, 11, 1000, 0),
        H.exec(1, 10, ["ls", "-la"], uid=1001, auid=1001, ses=3, cwd="/home/jim", tty="pts/0", snapshot=True,
               truncated=False, ppid=1, pstart=1000),
        H.login(3, 12, "jim", "203.0.113.7", 53122, key_fp="SHA256:abc"),
        {**H.connect(4, 13, "10.0.0.2", 22, 40000), "rname": "Db.Example."},
        H.file(5, 14, "rename", "/etc/x.tmp", path2="/etc/x"),
        {"v": 1, "kind": "uconnect", "host": "web-01", "boot": "b", "ts": 6.0, "pid": 5, "start": 5, "path": "@x",
         "conn": "c1", "peer_pid": 9, "peer_start": 9, "snapshot": False},
    ]


ODD_VALUES = [None, "", "x", "é", "\udc80", "\ud800", "x" * 8193, 0, -1, 1, 2 ** 63, 2 ** 64, -2 ** 63 - 1, 65536,
              1.5, -1.0, float("nan"), float("inf"), 1e300, True, False, [], ["a"], ["é"], [1], [None],
              ["x" * 8193], {}, "10.0.0.1", "::ffff:10.0.0.1"]


def test_parse_event_compiled_check_says_what_the_field_by_field_check_says(monkeypatch):
    # parse_event takes the common case through a check compiled from SPEC (events._FAST);
    # whatever an event holds, it must answer as the field-by-field reference (events._fields)
    # does: the same dict, or the same field and words
    from whodid.tracer import events
    cases = []
    for ev in _every_kind():
        cases.append(ev)
        for name in list(ev) + ["path2", "exe", "last", "count", "zzz"]:
            cases.append({k: v for k, v in ev.items() if k != name})
            cases += [{**ev, name: value} for value in ODD_VALUES]
    fast = [_outcome(parse_event, dict(c)) for c in cases]
    monkeypatch.setattr(events, "_FAST", {kind: (lambda obj: None) for kind in SPEC})
    reference = [_outcome(parse_event, dict(c)) for c in cases]
    differ = [(c, f, r) for c, f, r in zip(cases, fast, reference) if repr(f) != repr(r)]
    assert not differ, differ[:3]
    assert sum(f[0] == "event" for f in fast) > 300 and sum(f[0] == "refused" for f in fast) > 300


def _ipaddress_plain(value):
    import ipaddress
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def test_plain_ip_gives_what_ipaddress_gives_for_packed_and_text_addresses():
    """plain_ip takes the C library's path for the common forms: every address it is given,
    packed or as text, comes out as ipaddress writes it (runs of zero groups, IPv4-mapped and
    IPv4-compatible addresses, upper case), and what ipaddress refuses it refuses."""
    import random

    from whodid.tracer.events import plain_ip
    rng = random.Random(23)
    for _ in range(20_000):
        if rng.random() < 0.3:
            raw = bytes(rng.choice([0, 1, 255, rng.randrange(256)]) for _ in range(4))
        else:
            groups = [rng.choice([0, 0, 0, 0xffff, 1, rng.randrange(65536)]) for _ in range(8)]
            if rng.random() < 0.15:
                groups[:6] = [0, 0, 0, 0, 0, rng.choice([0, 0xffff])]      # IPv4-compatible, -mapped
            raw = b"".join(g.to_bytes(2, "big") for g in groups)
        text = _ipaddress_plain(raw)
        assert plain_ip(raw) == text, raw
        for form in (text, text.upper(), "0" + text, text + " ", f"::ffff:{text}"):
            try:
                want = _ipaddress_plain(form)
            except ValueError:
                with pytest.raises(ValueError):
                    plain_ip(form)
            else:
                assert plain_ip(form) == want, form
    # hostile text takes the C library's path first: a NUL, non-ASCII digits, a lone surrogate
    # (a name read with surrogateescape) are refused as ipaddress refuses them, as ValueError
    for bad in ("", "1.2.3", "01.2.3.4", "1.2.3.256", "::g", b"123", b"\0" * 5, "1.2.3.4\0", "1.2.3.4\0junk",
                "\uff11.\uff12.\uff13.\uff14", "\udc80"):
        with pytest.raises(ValueError):
            plain_ip(bad)
