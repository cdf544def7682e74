"""Trace pictures: the structure of the layout, and the PNG's size and determinism."""

import struct

import pytest

from whodid.bot import cli
from whodid.tracer import Query, Tracer
from whodid.tracer.render.image import DPI, figure_size, paint, render_png
from whodid.tracer.render.layout import MAX_ROWS, layout, short_command

from kit import T0, Host, ssh_session, store_with
from test_trace import IDENT, shared_account_story

NOW = T0 + 10_000


def trace_of(events, pattern="delete-cluster", scope=0, ident=IDENT):
    (tr,) = Tracer(store_with(events), ident).find(Query(pattern=pattern, scope=scope, limit=1))
    return tr


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_chain_step_has_a_box_with_its_label():
    tr = trace_of(shared_account_story())
    lay = layout(tr, NOW)
    assert lay.lanes == ["jump-box", "config-server"]
    chain_boxes = [b for b in lay.boxes if b.role != "context"]
    assert [b.title for b in chain_boxes] == [
        "ssh login as jim", "-bash", "ssh ec2-user@config-server", "ssh login as ec2-user", "-bash",
        "sudo -i", "-bash", "aws eks delete-cluster --name prod"]
    assert [b.role for b in chain_boxes] == ["origin"] + ["chain"] * 6 + ["poi"]
    assert [lay.lanes[b.lane] for b in chain_boxes] == ["jump-box"] * 3 + ["config-server"] * 5
    assert chain_boxes[0].meta.startswith("from 203.0.113.7")
    assert chain_boxes[-1].meta.startswith("root · ") and chain_boxes[-1].meta.endswith("ago")
    assert lay.title == "aws eks delete-cluster --name prod on config-server"
    assert lay.headline == "jim, via jump-box, sudo to root"
    assert lay.person == "person: jim"


def test_ssh_hops_cross_lanes_and_privilege_changes_and_pauses_are_labelled():
    lay = layout(trace_of(shared_account_story()), NOW)
    lane = {b.id: b.lane for b in lay.boxes}
    hops = [lk for lk in lay.links if lk.kind == "ssh"]
    assert len(hops) == 1 and lane[hops[0].src] != lane[hops[0].dst]
    assert hops[0].label == "ssh as ec2-user to config-server"
    priv = [lk for lk in lay.links if lk.kind in ("sudo", "su", "setuid")]
    assert [lk.label for lk in priv] == ["ec2-user -> root via sudo"]
    assert [lk.gap for lk in lay.links if lk.gap] == ["16m 40s later", "1h 00m later"]


def test_inferred_links_say_so():
    ev = ssh_session(Host("config-server", "10.0.1.20"), 0, 400, "ec2-user", 1000, "203.0.113.7", 5, ses=7)
    ev += [Host("config-server", "10.0.1.20").exec(100, 450, ["terraform", "destroy"], uid=1000, auid=1000, ses=7)]
    lay = layout(trace_of(ev, "terraform"), NOW)
    (link,) = lay.links
    assert link.inferred
    assert lay.boxes[-1].meta.endswith("inferred")


def busy_root_shell(commands: int):
    """The shared-account story with jim's root shell running many commands first."""
    config = Host("config-server", "10.0.1.20")
    ev = shared_account_story()
    for i in range(commands):
        pid = 2000 + i
        ev += [config.fork(1100 + i, pid, 411),
               config.exec(1100.5 + i, pid, [["ls", "cat", "grep"][i % 3], f"f{i}"], uid=0, auid=1000)]
    return ev


def test_long_runs_collapse_and_say_how_many():
    tr = trace_of(busy_root_shell(300), scope=1)
    assert tr.graph.number_of_nodes() >= 300
    lay = layout(tr, NOW)
    (group,) = [b for b in lay.boxes if b.role == "collapsed"]
    assert group.count == 297 and group.title == "+297 more commands"
    assert group.meta == "grep ×99, ls ×99, cat ×99"       # most common first, ties in order seen
    assert lay.collapsed == 297 and "collapsed 297 commands into 1 group" in lay.notes
    assert lay.rows <= MAX_ROWS
    # nothing vanishes: every context node is a box or inside a group
    shown = sum(b.count for b in lay.boxes if b.role in ("context", "collapsed"))
    assert shown == tr.graph.number_of_nodes() - len(tr.chain)


def test_many_short_runs_collapse_harder_to_stay_readable():
    # 60 sessions' worth of context spread over the chain: more rows than MAX_ROWS unless
    # the second pass folds every run.
    config = Host("config-server", "10.0.1.20")
    ev = shared_account_story()
    for shell in (401, 411):
        for i in range(60):
            pid = 3000 + shell * 100 + i
            ev += [config.fork(1060.5 + i * 0.001 if shell == 401 else 1100 + i, pid, shell),
                   config.exec(1060.6 + i * 0.001 if shell == 401 else 1100.5 + i, pid, ["echo", str(i)],
                               uid=1000 if shell == 401 else 0)]
    lay = layout(trace_of(ev, scope=1), NOW)
    assert lay.rows <= MAX_ROWS
    assert lay.collapsed >= 100


def test_png_has_the_documented_size_and_is_deterministic():
    tr = trace_of(shared_account_story())
    a, b = render_png(tr, NOW), render_png(tr, NOW)
    assert a == b
    w_in, h_in = figure_size(layout(tr, NOW))
    assert png_size(a) == (round(w_in * DPI), round(h_in * DPI))
    assert png_size(a)[0] == 790          # two lanes: 2 x 3.7 in + margins, at 100 dpi


def test_three_hundred_nodes_render():
    tr = trace_of(busy_root_shell(300), scope=2)
    data = paint(layout(tr, NOW))
    w, h = png_size(data)
    assert w == 790 and h < 2000


@pytest.mark.parametrize("argv, text", [
    (["/usr/bin/aws", "eks", "delete-cluster"], "aws eks delete-cluster"),
    (["-bash"], "-bash"),
    (["python3", "-c", "x" * 80], "python3 -c " + "x" * 22 + "…"),
])
def test_short_command(argv, text):
    assert short_command(argv, " ".join(argv), 34) == text


def test_cli_writes_one_png_per_match(tmp_path, capsys):
    db = tmp_path / "s.db"
    store_with(shared_account_story(), db).close()
    out = tmp_path / "t.png"
    assert cli.main(["trace", "aws", "--db", str(db), "--since", "2000-01-01", "--png", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"image: {out}" in printed and f"image: {tmp_path}/t-2.png" in printed
    assert png_size(out.read_bytes())[0] == 790
    assert (tmp_path / "t-2.png").exists()
    # a path that cannot be written whoever runs the test (root may create /nonexistent): its
    # "directory" is a file
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "x.png"
    code = cli.main(["trace", "aws", "--db", str(db), "--since", "2000-01-01", "--png", str(bad)])
    assert code == 2
    assert f"cannot write the image {bad}" in capsys.readouterr().err
