"""Unix-socket connects in the agent (issue 19): the records capture.c makes, decoded from bytes;
the uconnect/uaccept events the process table turns them into, checked field by field against
the schema the lead fixed (/work/schema19.md, mirrored in SCHEMA below); and the in-kernel filter
capture.py writes into the BPF text, evaluated here as the kernel would."""

import re
import struct

import pytest

from whodid.agent import decode as d
from whodid.agent.assemble import Assembler
from whodid.agent.capture import comm_check, prefix_check, program_text, unix_path_bytes

from test_agent_units import BOOT_EPOCH, NAMES, FakeProc, hdr, shell

SK = 0xFFFF888104F8BA80

# schema v1 (issue 19): field -> (type, required), on top of COMMON and PROCESS
COMMON = {"v": (int, True), "kind": (str, True), "host": (str, True), "boot": (str, True), "ts": (float, True),
          "id": (str, False), "pid": (int, True), "start": (int, True)}
SCHEMA = {
    "uconnect": {"path": (str, True), "bound": (str, False), "conn": (str, True), "peer_pid": (int, False),
                 "peer_start": (int, False), "peer_uid": (int, False), "snapshot": (bool, False)},
    "uaccept": {"conn": (str, True), "path": (str, False), "peer_pid": (int, False), "peer_start": (int, False),
                "peer_uid": (int, False), "snapshot": (bool, False)},
}


def schema_problems(ev: dict) -> list[str]:
    """What in a uconnect/uaccept event the schema does not allow; [] when it fits."""
    fields = {**COMMON, **SCHEMA[ev["kind"]]}
    problems = [f"unknown field {k}" for k in ev if k not in fields]
    for key, (typ, required) in fields.items():
        if key not in ev:
            if required:
                problems.append(f"missing {key}")
        elif not isinstance(ev[key], typ) or (typ is int and isinstance(ev[key], bool)) \
                or (typ is int and ev[key] < 0):
            problems.append(f"{key} is {ev[key]!r}, not {typ.__name__}")
    return problems


def unix_rec(type_, pid, path=b"", bound=b"", path_len=None, bound_len=None, peer_pid=0, peer_uid=0,
             known=d.UKNOWN_PEER_PID | d.UKNOWN_PEER_UID, sk=SK, conn_ts=900, **kw):
    return hdr(type_, pid, **kw) + d.UNIX_TAIL.pack(
        peer_pid, peer_uid, known, len(path) if path_len is None else path_len,
        len(bound) if bound_len is None else bound_len, 0, sk, conn_ts, path, bound)


# --- decoding -------------------------------------------------------------------------------

def test_a_connect_decodes_to_its_path_bound_name_peer_and_connection():
    rec = d.decode(unix_rec(d.EV_UCONNECT, 7, b"/tmp/cm-ops@db:22\0", b"/tmp/cm-ops@db:22.3DuHm7\0",
                            peer_pid=28026, peer_uid=1007))
    assert rec == d.UnixConn(rec.hdr, f"{SK:x}-900", "/tmp/cm-ops@db:22", "/tmp/cm-ops@db:22.3DuHm7", 28026, 1007)


def test_an_accept_names_the_listener_and_no_asked_path():
    rec = d.decode(unix_rec(d.EV_UACCEPT, 8, b"", b"/tmp/tmux-0/default\0", peer_pid=7, peer_uid=0))
    assert (rec.path, rec.bound, rec.peer_pid, rec.peer_uid, rec.conn) == \
        (None, "/tmp/tmux-0/default", 7, 0, f"{SK:x}-900")


def test_abstract_names_are_at_names_with_every_byte_of_their_length():
    # an abstract name's length is the caller's addrlen: bytes past it are not part of it
    rec = d.decode(unix_rec(d.EV_UCONNECT, 7, b"\0mux\0x" + b"junk", b"\0mux\0x", path_len=6, bound_len=6))
    assert rec.path == "@mux\\x00x" and rec.bound == "@mux\\x00x"


def test_odd_bytes_in_a_name_are_written_as_hex_and_cannot_reach_a_terminal():
    rec = d.decode(unix_rec(d.EV_UCONNECT, 7, b"/tmp/tmux-0/\x1b]0;pwn\x07\xff\xc3\xa9\0"))
    assert rec.path == "/tmp/tmux-0/\\x1b]0;pwn\\x07\\xffé"
    assert not re.search(r"[\x00-\x1f\x7f]", rec.path)


def test_a_name_longer_than_sun_path_or_an_unbound_listener_is_cut_or_absent():
    rec = d.decode(unix_rec(d.EV_UCONNECT, 7, b"/" + b"a" * 107, b"", path_len=500, bound_len=0))
    assert rec.path == "/" + "a" * 107 and rec.bound is None


def test_a_peer_the_kernel_could_not_name_is_none_not_zero():
    rec = d.decode(unix_rec(d.EV_UCONNECT, 7, b"/run/docker.sock\0", known=d.UKNOWN_PEER_UID, peer_uid=0))
    assert rec.peer_pid is None and rec.peer_uid == 0
    rec = d.decode(unix_rec(d.EV_UCONNECT, 7, b"/run/docker.sock\0", known=0))
    assert rec.peer_pid is None and rec.peer_uid is None


def test_a_cut_unix_record_is_refused():
    with pytest.raises(d.DecodeError, match="truncated"):
        d.decode(unix_rec(d.EV_UCONNECT, 7, b"/tmp/tmux-0/default\0")[:-20])


# --- events ---------------------------------------------------------------------------------

def assembler():
    """A process table as the agent's start leaves it: every running process known."""
    asm = Assembler("web-01", "boot-1", BOOT_EPOCH, FakeProc([shell(pid=100), shell(pid=200)]), NAMES.get,
                    lambda g: None)
    asm.snapshot()
    return asm


def tmux_attach(asm):
    """A tmux client (pid 100) connects to its server's socket (pid 200), which accepts it: the
    events the agent makes of the two records."""
    return asm.feed_all([
        d.decode(unix_rec(d.EV_UCONNECT, 100, b"/tmp/tmux-1000/default\0", b"/tmp/tmux-1000/default\0",
                          peer_pid=200, peer_uid=1000, ts_ns=2_000_000_000)),
        d.decode(unix_rec(d.EV_UACCEPT, 200, b"", b"/tmp/tmux-1000/default\0", peer_pid=100, peer_uid=1000,
                          ts_ns=2_000_100_000)),
    ])


def test_a_connect_and_its_accept_become_a_uconnect_uaccept_pair_the_schema_allows():
    asm = assembler()
    events = tmux_attach(asm)
    conn, acc = [e for e in events if e["kind"] in SCHEMA]
    assert schema_problems(conn) == [] and schema_problems(acc) == []
    start = asm.procs[100].start, asm.procs[200].start
    assert conn == {"v": 1, "kind": "uconnect", "host": "web-01", "boot": "boot-1", "ts": BOOT_EPOCH + 2.0,
                    "pid": 100, "start": start[0], "path": "/tmp/tmux-1000/default", "conn": f"{SK:x}-900",
                    "peer_pid": 200, "peer_start": start[1], "peer_uid": 1000}   # bound == path: left out
    assert acc["conn"] == conn["conn"] and acc["path"] == "/tmp/tmux-1000/default"
    assert (acc["pid"], acc["start"], acc["peer_pid"], acc["peer_start"]) == (200, start[1], 100, start[0])


def test_a_renamed_listener_s_bound_name_is_kept_and_a_gone_one_has_no_start():
    asm = assembler()
    [ev] = [e for e in asm.feed(d.decode(unix_rec(d.EV_UCONNECT, 100, b"/tmp/cm-ops@db:22\0",
                                                  b"/tmp/cm-ops@db:22.3DuHm7rsb\0", peer_pid=28026,
                                                  peer_uid=1007))) if e["kind"] == "uconnect"]
    assert schema_problems(ev) == []
    assert ev["bound"] == "/tmp/cm-ops@db:22.3DuHm7rsb" and ev["path"] == "/tmp/cm-ops@db:22"
    assert ev["peer_pid"] == 28026 and "peer_start" not in ev     # ssh's master forked away from listen()


def test_an_unnamed_connect_makes_no_event():
    asm = assembler()
    assert [e for e in asm.feed(d.decode(unix_rec(d.EV_UCONNECT, 100, b"", path_len=0)))
            if e["kind"] == "uconnect"] == []


# --- the in-kernel filter -------------------------------------------------------------------

def kernel_says(check: str, **words: bytes) -> bool:
    """Evaluate a C condition capture.py wrote, on words read little-endian as the kernel does."""
    values = {}
    for name, raw in words.items():
        n = {"w": 3, "c": 2}[name]
        raw = raw.ljust(8 * n, b"\0")[:8 * n]
        values.update({f"{name}{i}": int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(n)})
    expr = check.replace("ULL", "").replace("&&", " and ").replace("||", " or ")
    return bool(eval(expr, {}, values))            # noqa: S307 - our own generated text, numbers only


@pytest.mark.parametrize("comm, kept", [
    ("ssh", True), ("tmux: client", True), ("tmux: server", True), ("screen", True),
    ("sshd", False), ("tmuxinator", False), ("python3", False), ("scree", False),
])
def test_the_comm_filter_keeps_the_named_programs_and_tmux_s_titles(comm, kept):
    check = " or ".join(comm_check(c) for c in ("ssh", "tmux", "screen"))
    assert kernel_says(check, c=comm.encode()) is kept


@pytest.mark.parametrize("path, kept", [
    (b"/tmp/tmux-1000/default", True), (b"/run/docker.sock", True), (b"/var/run/screen/S-jim/1.x", True),
    (b"\0h19-abstract", True), (b"/tmp/other.sock", False), (b"\0h19-other", False), (b"/run/docker", False),
])
def test_the_path_filter_keeps_configured_prefixes_and_abstract_names(path, kept):
    prefixes = ("/tmp/tmux-", "/run/docker.sock", "/var/run/screen/", "@h19-abs")
    check = " or ".join(prefix_check(unix_path_bytes(p)) for p in prefixes)
    assert kernel_says(check, w=path) is kept


def test_the_program_text_has_every_filter_and_nothing_left_to_substitute():
    text = program_text(("/etc",), ("/tmp/tmux-", "@mux"), ("ssh",))
    assert prefix_check(unix_path_bytes("@mux")) in text and comm_check("ssh") in text
    for name in ("UNIX_PREFIXES", "UNIX_COMMS", "WATCH_PREFIXES"):
        assert not re.search(rf"\b{name}\b", text)
    empty = program_text((), (), ())
    assert re.search(r"if \(!\(0\s*\)\)", empty)     # nothing configured: no connect is kept


def test_the_record_layout_matches_capture_c():
    # struct unix_event: hdr, six u32, two u64, two sun_path
    assert d.HDR.size + d.UNIX_TAIL.size == 40 + 6 * 4 + 2 * 8 + 2 * 108
    src = program_text(())
    assert "char path[UNIX_PATH]" in src and "#define UNIX_PATH 108" in src
    assert struct.calcsize("<IIIIIIQQ") == 40


# --- the start-up snapshot (sock_diag) --------------------------------------------------------

from whodid.agent import unixdiag as ud  # noqa: E402


def diag_msg(ino, state, name=None, peer=None, stype=1):
    attrs = b""
    if name is not None:
        attrs += struct.pack("=HH", 4 + len(name), ud.UNIX_DIAG_NAME) + name + b"\0" * (-len(name) % 4)
    if peer is not None:
        attrs += struct.pack("=HHI", 8, ud.UNIX_DIAG_PEER, peer)
    body = ud.MESSAGE.pack(1, stype, state, 0, ino, 0, 0) + attrs
    return ud.NLMSGHDR.pack(ud.NLMSGHDR.size + len(body), ud.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


DONE = ud.NLMSGHDR.pack(ud.NLMSGHDR.size + 4, ud.NLMSG_DONE, 2, 1, 0) + b"\0" * 4

# a tmux server listening (ino 10), a client (21) attached to its accepted end (20), a one-off
# socketpair (30, 31), a dbus-like connection to an unwatched listener (40 <- 50/51)
DUMP = (diag_msg(10, ud.TCP_LISTEN, b"/tmp/tmux-1000/default")
        + diag_msg(20, ud.TCP_ESTABLISHED, b"/tmp/tmux-1000/default", peer=21)
        + diag_msg(21, ud.TCP_ESTABLISHED, peer=20)
        + diag_msg(30, ud.TCP_ESTABLISHED, peer=31) + diag_msg(31, ud.TCP_ESTABLISHED, peer=30)
        + diag_msg(40, ud.TCP_LISTEN, b"/run/dbus/system_bus_socket")
        + diag_msg(50, ud.TCP_ESTABLISHED, b"/run/dbus/system_bus_socket", peer=51)
        + diag_msg(51, ud.TCP_ESTABLISHED, peer=50)
        + DONE)


def test_a_sock_diag_dump_parses_to_sockets_with_names_and_peers():
    sockets, done = ud.parse_dump(DUMP)
    assert done and len(sockets) == 8
    assert sockets[1] == ud.UnixSocket(20, 1, ud.TCP_ESTABLISHED, "/tmp/tmux-1000/default", 21)
    assert sockets[2] == ud.UnixSocket(21, 1, ud.TCP_ESTABLISHED, None, 20)


def test_a_cut_dump_ends_the_parse_and_says_it_is_not_done():
    sockets, done = ud.parse_dump(DUMP[:len(diag_msg(10, ud.TCP_LISTEN, b"/tmp/tmux-1000/default")) + 20])
    assert not done and [s.ino for s in sockets] == [10]
    # an attribute claiming more than its message holds is not read past the message
    body = ud.MESSAGE.pack(1, 1, ud.TCP_ESTABLISHED, 0, 60, 0, 0) + struct.pack("=HH", 200, ud.UNIX_DIAG_NAME) + b"/tmp"
    msg = ud.NLMSGHDR.pack(ud.NLMSGHDR.size + len(body), ud.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body
    assert ud.parse_dump(msg + diag_msg(61, ud.TCP_LISTEN, b"/x"))[0] == [
        ud.UnixSocket(60, 1, ud.TCP_ESTABLISHED, None, None), ud.UnixSocket(61, 1, ud.TCP_LISTEN, "/x", None)]


def test_the_server_end_is_the_one_with_a_listener_s_name_and_only_watched_ones_are_kept():
    sockets, _ = ud.parse_dump(DUMP)
    assert ud.connections(sockets) == [ud.Connection(21, 20, "/tmp/tmux-1000/default"),
                                       ud.Connection(51, 50, "/run/dbus/system_bus_socket")]
    holders = {10: [300, 301], 20: [300], 21: [400], 40: [1], 50: [1], 51: [500]}
    comm = {400: "tmux: client", 500: "busctl"}.get
    found = ud.attached(sockets, holders, comm, ("/tmp/tmux-",), (), "t0")
    assert found == [ud.Attached(400, 300, 300, "/tmp/tmux-1000/default", "ino15-t0")]
    # by the client's program: the same rule as the kernel's (whole, or up to a colon)
    assert [a.client_pid for a in ud.attached(sockets, holders, comm, (), ("tmux",), "t0")] == [400]
    assert ud.attached(sockets, holders, comm, (), ("bus",), "t0") == []


def test_snapshot_pairs_become_uconnect_and_uaccept_marked_snapshot():
    asm = assembler()
    events = asm.unix_snapshot([ud.Attached(100, 200, 200, "/tmp/tmux-1000/default", "ino15-t0"),
                                ud.Attached(100, 999, None, "/tmp/tmux-1000/x", "ino16-t0")], 3_000_000_000)
    conn, acc = events                                # pid 999 is not in the process table: left out
    assert schema_problems(conn) == [] and schema_problems(acc) == []
    assert conn["snapshot"] and acc["snapshot"] and conn["conn"] == acc["conn"] == "ino15-t0"
    assert (conn["pid"], conn["peer_pid"], acc["pid"], acc["peer_pid"]) == (100, 200, 200, 100)


def test_a_relative_path_starting_with_at_cannot_pass_for_an_abstract_name():
    assert d.decode(unix_rec(d.EV_UCONNECT, 7, b"@tmux-0\0")).path == "./@tmux-0"
    assert d.decode(unix_rec(d.EV_UCONNECT, 7, b"\0tmux-0", path_len=7)).path == "@tmux-0"


def test_an_accept_after_a_one_shot_client_exited_still_names_its_start():
    asm = assembler()
    events = asm.feed_all([
        d.decode(unix_rec(d.EV_UCONNECT, 100, b"/tmp/tmux-1000/default\0", peer_pid=200, ts_ns=2_000_000_000)),
        d.decode(hdr(d.EV_EXIT, 100, ts_ns=2_000_050_000) + d.EXIT_TAIL.pack(0, 1)),       # `tmux ls` is done
        d.decode(unix_rec(d.EV_UACCEPT, 200, b"", b"/tmp/tmux-1000/default\0", peer_pid=100, ts_ns=2_000_100_000)),
    ])
    conn = next(e for e in events if e["kind"] == "uconnect")
    acc = next(e for e in events if e["kind"] == "uaccept")
    assert (acc["peer_pid"], acc["peer_start"]) == (100, conn["start"])


def test_the_agents_pair_is_one_connection_in_the_store_with_the_parser_in_between():
    # The agent (this file) and the store (tests/test_uconns.py) were built against one written
    # schema; this is the seam: the agent's own events, through parse_event and ingest, are one
    # uconns row joining the tmux client to its server.
    from whodid.tracer import Store, ingest
    asm = assembler()
    events = tmux_attach(asm)
    store = Store.open(":memory:", create=True)
    got = ingest(store, asm.snapshot() + events)
    assert got.rejected == 0
    (server,) = [p for p in store.procs(r[0] for r in store.db.execute("SELECT id FROM procs")).values()
                 if p.pid == 200]
    (conn,) = store.unix_clients(server.id, BOOT_EPOCH, BOOT_EPOCH + 10)
    assert store.proc(conn["client"]).pid == 100


def test_the_start_snapshot_left_out_past_the_cap_is_a_loss_record(monkeypatch, capsys):
    from whodid.agent import cli as agent_cli
    from whodid.config import UnixSockets
    from whodid.tracer.events import parse_event
    asm = assembler()
    many = [ud.Attached(100, 200, 200, "/tmp/tmux-1000/default", f"ino{i}-t0") for i in range(300)]
    monkeypatch.setattr(ud, "dump", lambda: [])
    monkeypatch.setattr(ud, "socket_holders", lambda: {})
    monkeypatch.setattr(ud, "attached", lambda *a: many)
    events = agent_cli.unix_snapshot(asm, UnixSockets())
    (loss,) = [e for e in events if e["kind"] == "loss"]
    assert loss["count"] == 299 and parse_event(loss)["count"] == 299       # one process is one client
    assert [e["kind"] for e in events if e["kind"] != "loss"] == ["uconnect", "uaccept"]
    assert "left out 299 unix-socket connections" in capsys.readouterr().err
