"""Issue 19, adversarial review: hostile data through the unix-connection events into the store,
the Tracer and every view of a shared session; secrets through the new fields; conflicting
events for one connection. Each test is an attack: what was given, what must hold. Strict
xfails pin holes whose fix is not small, with what is wrong and what would fix it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kit import T0, store_with                                            # noqa: E402
from test_abuse_slack import CONTROLS, MENTIONS                           # noqa: E402
from test_html import Page                                                # noqa: E402
from test_multiplexer import (B, PEOPLE, SOCK, bobs_attach, jims_session,  # noqa: E402
                              typed_in_the_pane)

from whodid.bot import blocks                                             # noqa: E402
from whodid.bot.ask import Ask                                            # noqa: E402
from whodid.bot.buttons import View                                       # noqa: E402
from whodid.tracer import Query, Tracer                                   # noqa: E402
from whodid.tracer.events import EventError, MAX_STR, parse_event          # noqa: E402
from whodid.tracer.ingest import ingest                                   # noqa: E402
from whodid.tracer.render.html import render_html                         # noqa: E402
from whodid.tracer.render.image import paint                              # noqa: E402
from whodid.tracer.render.jsonout import traces_json                      # noqa: E402
from whodid.tracer.render.layout import layout                            # noqa: E402
from whodid.tracer.render.text import render_trace                        # noqa: E402
from whodid.tracer.store import Store                                     # noqa: E402

NOW = T0 + 10_000
# what a hostile local user can name a socket (a path under a watched prefix) or a connection
EVIL_PATH = ("/tmp/tmux-1000/</script><script>alert(1)</script>\x00nul\x1b[2J\x1b]0;owned\x07\u202egnp.exe"
             "<!channel><@U123>`*ops*`" + "y" * 3000)
BAD = ("\x1b", "\x07", "\x00", "\u202e", "<script>", "</script>")


def hostile_trace(tmp_path, path=EVIL_PATH, **attach):
    """bob attaches to jim's tmux through a socket with a hostile name (the uconnect's path,
    the uaccept's bound name): the whole way, ingest -> store -> Tracer."""
    ev = jims_session() + bobs_attach(**attach) + typed_in_the_pane()
    for e in ev:
        if e["kind"] in ("uconnect", "uaccept"):
            e["path"] = path
            if e["kind"] == "uconnect":
                e["bound"] = path + "-bound"
    store = store_with(ev, str(tmp_path / "evil.db"))
    (tr,) = Tracer(store, PEOPLE).find(Query(pattern="rm -rf /srv"))
    return tr


def test_a_hostile_socket_name_is_stored_traced_and_escaped_in_every_view(tmp_path):
    tr = hostile_trace(tmp_path)
    (ss,) = tr.shared
    assert ss.path is not None and "alert(1)" in ss.path             # kept as data, nothing good lost
    assert tr.attributed.user == "bob"                                # the name changes nobody's answer
    text = render_trace(tr, NOW)                                      # a terminal's: no control, no bidi
    for bad in ("\x1b", "\x07", "\x00", "\u202e"):
        assert bad not in text, repr(bad)
    assert "y" * 400 not in text                                      # a long name is cut for people
    page = render_html(tr, NOW)
    for bad in BAD + ("<!channel>", "<@U"):
        assert bad not in page.split('id="trace-data"')[0], repr(bad)
    assert "<script>alert" not in page and "</script><script>" not in page
    assert "y" * 400 not in page.split('id="trace-data"')[0]          # the page cuts it as a command
    parsed = Page(page)
    assert [a.get("type") for t, a in parsed.tags if t == "script"] == ["application/json", None]
    doc = traces_json(Query(pattern="rm -rf /srv"), [tr], NOW)
    (m,) = doc["matches"]
    (js,) = m["shared_sessions"]
    assert js["path"] == ss.path                                      # JSON has it whole, JSON-escaped
    json.dumps(doc)
    _, bl = blocks.summary(tr, View(Ask(pattern="rm", since=T0, until=None, since_text="24h")), 1, NOW,
                           lambda view: "v")
    _, thread = blocks.chain(tr, View(Ask(pattern="rm", since=T0, until=None, since_text="24h")), 1, NOW)
    for out in (json.dumps(bl, ensure_ascii=False), json.dumps(thread, ensure_ascii=False)):
        for bad in MENTIONS + CONTROLS + ("<script>", "</script>", "\x00", "\u202e"):
            assert bad not in out, bad
    assert paint(layout(tr, NOW))[:8] == b"\x89PNG\r\n\x1a\n"              # the picture renders


def test_a_socket_name_too_long_for_the_schema_is_refused_alone(tmp_path):
    big = "/tmp/tmux-1000/" + "z" * 100_000
    with pytest.raises(EventError) as info:
        parse_event(B.uconnect(1, 310, big, "c-big"))
    assert info.value.field == "path" and str(MAX_STR) in str(info.value)
    store = Store.open(":memory:", create=True)
    report = ingest(store, jims_session() + [B.uconnect(100, 310, big, "c-big"),
                                             B.uaccept(101, 212, "c-big", path=big)] + bobs_attach()
                    + typed_in_the_pane())
    assert report.rejected == 2 and report.accepted > 10
    (tr,) = Tracer(store, PEOPLE).find(Query(pattern="rm -rf /srv"))
    assert tr.attributed.user == "bob"                                # bob's good connect is kept


def test_a_hostile_conn_id_never_reaches_a_view(tmp_path):
    ev = jims_session() + bobs_attach(conn="</script>\x1b[2J<!channel>\u202e" + "c" * 200) + typed_in_the_pane()
    store = store_with(ev, str(tmp_path / "conn.db"))
    (tr,) = Tracer(store, PEOPLE).find(Query(pattern="rm -rf /srv"))
    assert tr.attributed.user == "bob"
    for out in (render_trace(tr, NOW), render_html(tr, NOW).split('id="trace-data"')[0]):
        assert "<!channel>" not in out and "\x1b" not in out and "c" * 200 not in out
