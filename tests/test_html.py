"""The trace page: every box and link is there with its hooks, every string is escaped, the
page obeys the server's Content-Security-Policy, and expanding a group shows its members.
Parsed with the standard library, no browser."""

import json
import xml.etree.ElementTree as ET
from collections import Counter
from html.parser import HTMLParser

import pytest
from kit import T0, Host, ssh_session, store_with
from test_image import NOW, busy_root_shell
from test_trace import IDENT, shared_account_story
from whodid.bot.demo import story as demo
from whodid.tracer import Query, Tracer
from whodid.tracer.render.html import edge_why, gather_details, render_html
from whodid.tracer.render.layout import MAX_ROWS, layout

from whodid import config as config_mod

SVG = "{http://www.w3.org/2000/svg}"


class Page(HTMLParser):
    """Every start tag with its attributes, the text of each <script>, and each edge's <title>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.edge_titles: dict[tuple[str, str], str] = {}
        self._script: dict | None = None
        self._edge: dict | None = None
        self._title = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._script = a
            self.scripts.append((a, ""))
        elif tag == "g" and "edge" in a.get("class", "").split():
            self._edge = a
        elif tag == "title" and self._edge is not None:
            self._title = True

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None
        elif tag == "title":
            self._title = False
        elif tag == "g":
            self._edge = None

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        if self._title and self._edge is not None:
            key = (self._edge["data-src"], self._edge["data-dst"])
            self.edge_titles[key] = self.edge_titles.get(key, "") + data

    def all(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]

    def by_id(self, id_: str) -> tuple[str, dict] | None:
        return next(((t, a) for t, a in self.tags if a.get("id") == id_), None)

    def data(self) -> dict:
        (text,) = [t for a, t in self.scripts if a.get("id") == "trace-data"]
        return json.loads(text)


def find_trace(store, pattern="delete-cluster", scope=0, ident=IDENT):
    (tr,) = Tracer(store, ident).find(Query(pattern=pattern, scope=scope, limit=1))
    return tr


@pytest.fixture(scope="module")
def story():
    store = store_with(shared_account_story())
    tr = find_trace(store)
    return store, tr


@pytest.fixture(scope="module")
def demo_store():
    """The demo's fleet, ingested as `whodid demo` does, at a fixed time."""
    now = T0 + 30 * 86400
    fleet, _ = demo.build(now)
    ident = config_mod.IdentityConfig(people=demo.story_people()).identity()
    return store_with(fleet.events()), ident, now


def hostile_events():
    """A host, an account and a command line that are all HTML."""
    h = Host('web<1>&"x', "10.0.9.9")
    ev = ssh_session(h, 0, 400, "<img src=x onerror=alert(1)>", 1000, "203.0.113.9", 5, ses=3)
    ev += [h.fork(100, 420, 401),
           h.exec(100.5, 420, ["sh", "-c", "echo <script>alert(1)</script>", "</script><!--"], uid=1000,
                  auid=1000, ses=3, cwd="/tmp/</script>", exe="/bin/sh"),
           h.exit(102, 420, code=3)]
    return ev


# --- structure --------------------------------------------------------------------------


def test_every_box_is_one_node_and_every_link_an_edge_with_its_reason(story):
    store, tr = story
    lay = layout(tr, NOW)
    page = Page(render_html(tr, NOW, gather_details(store, tr)))
    nodes = page.all("g", "node")
    assert Counter(a["data-id"] for a in nodes) == Counter(b.id for b in lay.boxes)
    assert all(a["tabindex"] == "0" for a in nodes)
    roles = {a["data-id"]: set(a["class"].split()) for a in nodes}
    assert all({"node", b.role} <= roles[b.id] for b in lay.boxes)
    edges = page.all("g", "edge")
    assert Counter((a["data-src"], a["data-dst"]) for a in edges) == Counter((lk.src, lk.dst) for lk in lay.links)
    assert {a["data-kind"] for a in edges} == {"fork", "ssh", "sudo"}
    for a in edges:
        assert a["data-why"].strip()
        assert page.edge_titles[a["data-src"], a["data-dst"]] == a["data-why"]
    assert page.by_id("title")[0] == "h1" and page.by_id("headline")[0] == "p"
    assert page.by_id("trace")[0] == "svg" and page.by_id("details")[0] == "aside"
    assert page.by_id("tooltip")[0] == "div" and "hidden" in page.by_id("tooltip")[1]
    for button in ("zoom-in", "zoom-out", "zoom-fit"):
        assert page.by_id(button)[0] == "button"
    assert len(page.all("li")) >= 7                      # the PNG's legend


def test_svg_is_well_formed_and_shows_the_lanes_and_titles(story):
    _, tr = story
    text = render_html(tr, NOW)
    start = text.index('<svg id="trace"')
    svg = ET.fromstring(text[start:text.index("</svg>", start) + len("</svg>")])
    words = [t.text for t in svg.iter(f"{SVG}text")]
    assert "jump-box" in words and "config-server" in words
    assert "aws eks delete-cluster --name prod" in words and "MATCHED" in words
    assert "person: jim" in words
    assert svg.get("viewBox").startswith("0 0 ")


def test_ssh_hop_is_explained_by_its_exact_four_tuple(story):
    _, tr = story
    (hop,) = [(a, b) for a, b, d in tr.graph.edges(data=True) if d["kind"] == "ssh"]
    why = edge_why(tr, *hop)
    assert "matched by the exact 4-tuple" in why
    assert "10.0.0.10:40001 -> 10.0.1.20:22" in why and "inferred" not in why
    (sudo,) = [(a, b) for a, b, d in tr.graph.edges(data=True) if d["kind"] == "sudo"]
    assert "ec2-user -> root via sudo" in edge_why(tr, *sudo)
    fork = next((a, b) for a, b, d in tr.graph.edges(data=True) if d["kind"] == "fork")
    assert "observed" in edge_why(tr, *fork)
    page = Page(render_html(tr, NOW))
    (edge,) = page.all("g", "ssh")
    assert "exact 4-tuple" in edge["data-why"]


def test_inferred_links_say_why():
    h = Host("config-server", "10.0.1.20")
    ev = ssh_session(h, 0, 400, "ec2-user", 1000, "203.0.113.7", 5, ses=7)
    ev += [h.exec(100, 450, ["terraform", "destroy"], uid=1000, auid=1000, ses=7)]
    tr = find_trace(store_with(ev), "terraform")
    ((a, b),) = tr.graph.edges()
    why = edge_why(tr, a, b)
    assert "inferred, not observed" in why and "audit session 7" in why
    (edge,) = Page(render_html(tr, NOW)).all("g", "edge")
    assert "inferred" in edge["class"].split() and edge["data-why"] == why


# --- details ----------------------------------------------------------------------------


def test_details_have_the_full_argv_cwd_exit_and_login():
    store = store_with(hostile_events())
    tr = find_trace(store, "alert", ident=None)
    details = gather_details(store, tr)
    poi = details[tr.poi.node]
    assert poi["argv"] == ["sh", "-c", "echo <script>alert(1)</script>", "</script><!--"]
    assert poi["cwd"] == "/tmp/</script>" and poi["exe"] == "/bin/sh"
    assert poi["exit_code"] == 3 and poi["exit"].startswith("2023-11-14T22:15:02")
    assert poi["start"].startswith("2023-11-14T22:15:00.5")
    assert (poi["uid"], poi["euid"], poi["auid"], poi["ses"], poi["pid"]) == (1000, 1000, 1000, 3, 420)
    assert poi["user"] == "ec2-user" and poi["host"] == 'web<1>&"x'
    login = details[tr.chain[0].node]["login"]
    assert login == {"user": "<img src=x onerror=alert(1)>", "method": "publickey", "from": "203.0.113.9:5",
                     "to": "10.0.9.9:22"}
    assert all(v not in (None, "", []) for facts in details.values() for v in facts.values())
    # and the page carries them to the panel
    rows = dict(Page(render_html(tr, NOW, details)).data()["nodes"][tr.poi.node]["rows"])
    assert rows["argv"] == "sh -c 'echo <script>alert(1)</script>' '</script><!--'"
    assert rows["working dir"] == "/tmp/</script>" and rows["exit code"] == "3"


def test_collapsed_group_lists_its_members():
    store = store_with(busy_root_shell(30))
    tr = find_trace(store, scope=1)
    page = Page(render_html(tr, NOW, gather_details(store, tr)))
    (group,) = page.all("g", "collapsed")
    assert group["data-group"] == group["data-id"] and group["data-count"] == "27"
    members = page.data()["nodes"][group["data-id"]]["members"]
    assert len(members) == 27 and members[0].endswith("root  grep f2")


# --- safety -----------------------------------------------------------------------------


def test_hostile_input_is_escaped_everywhere():
    store = store_with(hostile_events())
    tr = find_trace(store, "alert", ident=None)
    text = render_html(tr, NOW, gather_details(store, tr), actions={"widen": "/w?a=1&b=<2>"})
    assert "<script>alert" not in text and "<img" not in text and "<!--" not in text
    page = Page(text)
    # the only script elements are the page's own two, and the data block is whole JSON
    assert [a.get("type") for t, a in page.tags if t == "script"] == ["application/json", None]
    assert text.lower().count("</script") == 2
    (data_text,) = [t for a, t in page.scripts if a.get("id") == "trace-data"]
    assert "<" not in data_text and ">" not in data_text and "&" not in data_text
    assert "echo <script>alert(1)</script>" in json.dumps(page.data(), ensure_ascii=False)
    # attribute values come back intact, so nothing broke out of its quotes
    assert {a["data-host"] for a in page.all("g", "lane")} == {'web<1>&"x'}
    assert page.by_id("widen")[1]["href"] == "/w?a=1&b=<2>"
    assert all(not k.startswith("on") for _, a in page.tags for k in a)
    start = text.index('<svg id="trace"')
    ET.fromstring(text[start:text.index("</svg>", start) + len("</svg>")])      # well-formed


def test_nonce_on_style_and_script_and_no_inline_handlers_or_styles(story):
    _, tr = story
    page = Page(render_html(tr, NOW, nonce="r4nd0m+/="))
    for tag in ("style", "script"):
        assert page.all(tag) and all(a.get("nonce") == "r4nd0m+/=" for a in page.all(tag))
    assert not [(t, k) for t, a in page.tags for k in a if k.startswith("on") or k == "style"]
    assert not [a for t, a in Page(render_html(tr, NOW)).tags if "nonce" in a]


def test_static_page_has_no_server_buttons_and_served_one_has(story):
    _, tr = story
    static = Page(render_html(tr, NOW))
    assert static.by_id("widen") is None
    (main,) = static.all("main")
    assert "data-expand-url" not in main and main["data-expanded"] == ""
    served = Page(render_html(tr, NOW, actions={"widen": "/trace?t=abc&scope=1",
                                                "expand": "/trace?t=abc&scope=0&expand={groups}"}))
    tag, widen = served.by_id("widen")
    assert tag == "a" and widen["href"] == "/trace?t=abc&scope=1"
    (main,) = served.all("main")
    assert main["data-expand-url"] == "/trace?t=abc&scope=0&expand={groups}"
    no_widen = Page(render_html(tr, NOW, actions={"expand": "/x?e={groups}"}))
    assert no_widen.by_id("widen") is None


def test_same_inputs_same_page(story):
    store, tr = story
    details = gather_details(store, tr)
    assert render_html(tr, NOW, details, nonce="n") == render_html(tr, NOW, details, nonce="n")


# --- expanding groups -------------------------------------------------------------------


def test_expanding_a_demo_group_shows_its_members(demo_store):
    store, ident, now = demo_store
    tr = find_trace(store, scope=3, ident=ident)
    lay = layout(tr, now)
    assert lay.groups >= 1
    group = next(b for b in lay.boxes if b.role == "collapsed")
    assert group.id == f"group:{group.members[0]}" and len(group.members) == group.count
    page = Page(render_html(tr, now, gather_details(store, tr), expand=frozenset({group.id})))
    ids = {a["data-id"] for a in page.all("g", "node")}
    assert group.id not in ids and set(group.members) <= ids
    assert group.id not in {a.get("data-group") for a in page.all("g", "node")}
    (main,) = page.all("main")
    assert main["data-expanded"] == group.id
    # nothing else changed: the same boxes but the group, plus its members
    before = {b.id for b in lay.boxes}
    assert ids == (before - {group.id}) | set(group.members)


def test_an_expanded_group_stays_expanded_when_the_picture_gets_too_tall():
    # 297 members make the picture taller than MAX_ROWS, so layout() folds harder; the
    # harder pass's would-be group starts earlier in the run, and must stay expanded too
    tr = find_trace(store_with(busy_root_shell(300)), scope=1)
    (group,) = [b for b in layout(tr, NOW).boxes if b.role == "collapsed"]
    lay = layout(tr, NOW, expand=frozenset({group.id}))
    assert lay.groups == 0 and lay.collapsed == 0 and lay.rows > MAX_ROWS
    assert set(group.members) <= {b.id for b in lay.boxes}


def test_expanding_one_group_leaves_the_others_folded():
    config = Host("config-server", "10.0.1.20")
    ev = shared_account_story()
    for shell, t in ((401, 1001), (411, 1100)):      # two slots: before the sudo and after
        for i in range(20):
            pid = 3000 + shell * 100 + i
            ev += [config.fork(t + i * 0.01, pid, shell),
                   config.exec(t + i * 0.01 + 0.001, pid, ["echo", str(i)], uid=1000 if shell == 401 else 0)]
    tr = find_trace(store_with(ev), scope=1)
    first, second = [b for b in layout(tr, NOW).boxes if b.role == "collapsed"]
    lay = layout(tr, NOW, expand=frozenset({first.id}))
    assert set(first.members) <= {b.id for b in lay.boxes}
    (still,) = [b for b in lay.boxes if b.role == "collapsed"]
    assert set(second.members) == set(still.members)


def test_no_expand_is_the_old_layout():
    tr = find_trace(store_with(busy_root_shell(300)), scope=2)
    assert layout(tr, NOW) == layout(tr, NOW, expand=frozenset()) == layout(tr, NOW, expand=frozenset({"group:x"}))
