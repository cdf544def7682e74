"""The trace page, for real: signed links (bot/web/links.py), the server (bot/web/pages.py) over HTTP, and
the page itself in a real headless browser - Debian's chromium through its chromedriver,
driven by Selenium: open a signed link, read the chain, click a process for its details,
hover a hop for why it is there, widen the scope, expand a group in place; expired and altered
links refused; usable at 1280x800 and on a phone."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pytest

from whodid import config as config_mod
from whodid.bot import cli
from whodid.bot.demo import story as demo
from whodid.bot.slack.ask import Ask
from whodid.bot.web.links import LinkError, check, link_key, make
from whodid.bot.web.pages import TracePages

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_BROWSER = None if CHROMIUM and DRIVER else "needs chromium and chromium-driver (./bootstrap installs them)"
if NO_BROWSER and os.environ.get("CI"):
    pytest.fail(f"CI must run the browser tests, but: {NO_BROWSER}", pytrace=False)
browser_test = pytest.mark.skipif(NO_BROWSER is not None, reason=str(NO_BROWSER))


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("web") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


def cfg_for(extra=None):
    return config_mod.from_dict({"identity": {"people": demo.story_people()}, **(extra or {})})


@pytest.fixture(scope="module")
def site(demo_db):
    pages = TracePages(cfg_for(), demo_db, log=lambda m: None)
    pages.start("127.0.0.1:0")
    yield pages
    pages.stop()


def delete_ask(now=None):
    now = now or time.time()
    return Ask(pattern="delete-cluster", since=now - 86400, since_text="24h")


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


# --- links ---------------------------------------------------------------------------------------

def test_links_carry_the_question_expire_and_cannot_be_altered():
    key = link_key(b"k" * 32)
    now = 1_800_000_000.0
    token = make(delete_ask(now), 2, 1, now + 60, key)
    link = check(token, key, now + 59)
    assert (link.ask.pattern, link.index, link.scope) == ("delete-cluster", 2, 1)
    with pytest.raises(LinkError, match="expired"):
        check(token, key, now + 60)
    version, raw, sig = token.split(".")
    other = make(Ask(pattern="terraform destroy", since=now - 86400, since_text="24h"), 0, 0, now + 60, key)
    for bad in (f"{version}.{other.split('.')[1]}.{sig}", f"{version}.{raw}.{sig[:-2]}AA", "nonsense",
                token.replace("1.", "9.", 1)):
        with pytest.raises(LinkError):
            check(bad, key, now)
    with pytest.raises(LinkError, match="altered"):
        check(token, link_key(b"j" * 32), now)           # another whodid's key
    # a button's signature is not a link's
    from whodid.bot.slack.buttons import View, encode
    with pytest.raises(LinkError):
        check(encode(View(delete_ask(now)), b"k" * 32), key, now)


# --- the server ----------------------------------------------------------------------------------

def test_the_page_is_served_only_with_a_valid_link(site):
    status, body, headers = get(site.link(delete_ask()))
    assert status == 200 and "jim" in body and "delete-cluster" in body
    csp = headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in body and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
    for url, words in ((f"{site.url}/trace", "not a whodid trace link"),
                       (site.link(delete_ask()).replace("t=1.", "t=1.x"), "altered"),
                       (site.link(delete_ask(), now=time.time() - 8 * 86400), "expired")):
        status, body, _ = get(url)
        assert status == 403 and words in body and "jim" not in body
    assert get(f"{site.url}/")[0] == 404
    assert get(site.link(delete_ask()) + "&scope=9")[0] == 400


# --- the page in a browser -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if NO_BROWSER:
        pytest.skip(NO_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_window_size(1280, 800)
    yield driver
    driver.quit()


def wait(driver, predicate, what, timeout=20):
    deadline = time.time() + timeout
    while True:
        try:
            got = predicate()
        except Exception:                     # the DOM is being swapped under us
            got = None
        if got:
            return got
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def nodes(driver):
    return driver.find_elements("css selector", "#trace g.node")


@browser_test
def test_open_a_link_read_the_chain_click_a_process_and_hover_a_hop(site, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    browser.set_window_size(1280, 800)
    browser.get(site.link(delete_ask()))
    assert "jim" in browser.find_element("id", "headline").text
    ids = [n.get_attribute("data-id") for n in nodes(browser)]
    assert len(ids) >= 6 and len(set(ids)) == len(ids)
    poi = browser.find_element("css selector", "#trace g.node.poi")
    poi.click()
    details = wait(browser, lambda: browser.find_element("id", "details").text, "the details panel")
    assert "aws eks delete-cluster --name prod" in details
    assert "config-server" in details and "/root" in details          # host, cwd
    assert "ec2-user" in details                                        # the login user behind root
    # the hop's edge says why it is there
    hop = browser.find_element("css selector", "#trace g.edge[data-kind='ssh']")
    ActionChains(browser).move_to_element(hop.find_element("css selector", "path")).perform()
    tip = wait(browser, lambda: browser.find_element("id", "tooltip").is_displayed()
               and browser.find_element("id", "tooltip").text, "the edge's tooltip")
    assert "4-tuple" in tip
    # zoom changes what the picture shows
    before = browser.find_element("id", "trace").get_dom_attribute("viewBox")
    browser.find_element("id", "zoom-in").click()
    wait(browser, lambda: browser.find_element("id", "trace").get_dom_attribute("viewBox") != before, "zoom")


@browser_test
def test_widen_the_scope_and_expand_a_group_in_place(site, browser):
    browser.set_window_size(1280, 800)
    browser.get(site.link(delete_ask()))
    counts = [len(nodes(browser))]
    for scope in (1, 2, 3):                               # up to scope 3, where long runs collapse
        browser.find_element("id", "widen").click()
        wait(browser, lambda: f"scope={scope}" in browser.current_url and nodes(browser), f"scope {scope}")
        counts.append(len(nodes(browser)))
    assert counts[1] > counts[0] and counts[3] > counts[2] and not browser.find_elements("id", "widen")
    group = browser.find_element("css selector", "#trace g.node.collapsed")
    gid, count = group.get_attribute("data-group") or group.get_attribute("data-id"), int(group.get_attribute("data-count"))
    url = browser.current_url
    n = len(nodes(browser))
    group.click()
    wait(browser, lambda: browser.find_element("id", "expand-group").is_displayed(), "the expand button")
    browser.find_element("id", "expand-group").click()
    wait(browser, lambda: not browser.find_elements("css selector", f"#trace g.node[data-id='{gid}']"), "the expansion")
    assert len(nodes(browser)) >= n - 1 + count - 1                    # the group's members, in its place
    assert browser.current_url == url                                  # in place: no navigation
    assert gid in browser.find_element("css selector", "main").get_attribute("data-expanded")


@browser_test
def test_expired_and_altered_links_show_a_refusal(site, browser):
    browser.get(site.link(delete_ask(), now=time.time() - 30 * 86400))
    assert "expired" in browser.find_element("id", "reason").text
    assert not browser.find_elements("id", "trace")
    browser.get(site.link(delete_ask()).replace("t=1.", "t=1.x"))
    assert "altered" in browser.find_element("id", "reason").text


@browser_test
def test_usable_on_a_phone(site, browser):
    browser.set_window_size(390, 844)
    try:
        browser.get(site.link(delete_ask()))
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390 + 1                                      # no sideways scrolling
        svg = browser.find_element("id", "trace").rect
        assert 300 <= svg["width"] <= 390
        browser.find_element("css selector", "#trace g.node.poi").click()
        panel = wait(browser, lambda: browser.find_element("id", "details"), "details")
        wait(browser, lambda: "delete-cluster" in panel.text, "details text")
        assert panel.rect["y"] >= svg["y"] + svg["height"] - 1       # below the picture, not beside it
    finally:
        browser.set_window_size(1280, 800)


@browser_test
def test_the_cli_writes_a_page_that_works_offline(demo_db, browser, tmp_path, capsys):
    out = tmp_path / "incident.html"
    assert cli.main(["trace", "--db", demo_db, "delete-cluster", "--since", "24h", "--html", str(out)]) == 0
    assert f"page: {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    browser.get(out.as_uri())
    assert "jim" in browser.find_element("id", "headline").text
    assert not browser.find_elements("id", "widen")                  # no server behind a file
    browser.find_element("css selector", "#trace g.node.poi").click()
    wait(browser, lambda: "delete-cluster" in browser.find_element("id", "details").text, "details")


def test_the_cli_prints_links_that_open(site, demo_db, capsys, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(json.dumps({"web": {"base_url": site.url}}))
    assert cli.main(["--config", str(conf), "trace", "--db", demo_db, "delete-cluster", "--since", "24h",
                     "--link"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("link 1: "))
    status, body, _ = get(line.removeprefix("link 1: "))
    assert status == 200 and "delete-cluster" in body


def test_slack_answers_carry_an_open_full_trace_button(site, demo_db, monkeypatch):
    from slackemu import SlackEmulator, http_slack, no_slack_env
    from test_slack import answered
    from whodid.bot.slack.app import Bot
    no_slack_env(monkeypatch)
    with SlackEmulator() as emu:
        cfg = cfg_for({"slack": http_slack(emu, allowed_channels=["C1"])})
        bot = Bot(cfg, demo_db, log=lambda m: None)
        bot.pages = site
        bot.start()
        try:
            emu.slash(bot._server.url, "delete-cluster")
            top, thread = answered(emu)
            opens = [e for m in [top, *thread] for b in (m.blocks or []) for e in (b.get("elements") or [])
                     if e.get("action_id") == "whodid.open"]
            assert len(opens) >= 2 and all(e["url"].startswith(f"{site.url}/trace?t=") for e in opens)
            status, body, _ = get(opens[0]["url"])
            assert status == 200 and "jim" in body
            # Slack tells the app about a link button's click too; it is acknowledged, nothing more
            assert emu.click(bot._server.url, top, "whodid.open", "")[0] == 200
        finally:
            bot.stop()
