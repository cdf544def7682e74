"""Change review (tracer/changes.py, bot/changes.py): what counts as a change, who it is put on
(through hops and shared accounts), planned or not at the edges of windows, time zones and host
globs - and the same review through the CLI, /whodid changes and the scheduled digest in the
Slack emulator."""

from __future__ import annotations

import calendar
import json
import time
from collections import Counter

import pytest

from slackemu import SlackEmulator, http_slack, no_slack_env

from whodid import config as config_mod
from whodid.bot import cli
from whodid.bot.changes import MAX_MESSAGES, DigestJob, paginate, parse, render_blocks, render_text
from whodid.bot.demo.simfleet import SimFleet, key_fingerprint
from whodid.tracer import Store, Tracer, ingest
from whodid.tracer.changes import RulesError, classify, parse_rules, review

LAPTOP = {"jim": "203.0.113.7", "bob": "198.51.100.23"}
KEYS = {name: key_fingerprint(name) for name in (*LAPTOP, "deploy-ci")}
DAY = calendar.timegm((2026, 11, 16, 0, 0, 0))          # a Monday, 00:00 UTC
WEB = [f"web-{i:02d}" for i in range(1, 31)]


def utc(day: int, hh: int, mm: int = 0, ss: float = 0.0) -> float:
    return DAY + day * 86400 + hh * 3600 + mm * 60 + ss


RULES = {
    "expected_actors": [{"name": "deploy pipeline", "users": ["gitlab-runner"], "from_hosts": ["ci-*"],
                         "hosts": ["web-*", "db-*"]}],
    "windows": [{"name": "night deploys", "cron": "0 2 * * *", "duration": "1h", "hosts": ["web-*"]},
                {"name": "db maintenance", "cron": "30 9 * * mon-fri", "duration": "30m", "timezone": "Europe/London",
                 "hosts": ["db-*"]}],
}


# --- the rules, pure -----------------------------------------------------------------------------

def verdict(t, host="web-01", person="gitlab-runner", origin="ci-01", by_login=False, rules=RULES):
    return classify(t, host, person, person, origin, by_login, parse_rules(rules))


@pytest.mark.parametrize("t, planned, reason", [
    (utc(0, 2), True, "planned"),                          # the window's first second is in it
    (utc(0, 2, 59, 59.999), True, "planned"),
    (utc(0, 3), False, "outside window"),                  # its end is not
    (utc(0, 1, 59, 59.999), False, "outside window"),
    (utc(5, 2, 30), True, "planned"),                      # every day, weekends too
])
def test_window_edges(t, planned, reason):
    v = verdict(t)
    assert (v.planned, v.reason) == (planned, reason)
    assert (v.window == "night deploys") == planned


def test_windows_follow_their_time_zone_through_daylight_saving():
    # 09:30-10:00 in London is 09:30 UTC in November, 08:30 UTC in July
    assert verdict(utc(0, 9, 45), host="db-01").planned
    assert not verdict(utc(0, 8, 45), host="db-01").planned
    july = calendar.timegm((2026, 7, 13, 8, 45, 0))       # a Monday
    assert verdict(july, host="db-01").planned
    assert not verdict(july + 3600, host="db-01").planned
    assert not verdict(utc(5, 9, 45), host="db-01").planned      # Saturday: mon-fri only


def test_actors_and_hosts_are_globs():
    assert verdict(utc(0, 2, 10), host="web-17").planned
    v = verdict(utc(0, 2, 10), host="cache-01")                   # not among the actor's hosts
    assert (v.planned, v.reason) == (False, "host not in scope") and "deploy pipeline's hosts" in v.detail
    rules = {**RULES, "expected_actors": [{**RULES["expected_actors"][0], "hosts": []}]}
    v = verdict(utc(0, 2, 10), host="cache-01", rules=rules)     # any host, but no window covers it
    assert (v.planned, v.reason) == (False, "host not in scope") and "no change window covers cache-01" in v.detail
    v = verdict(utc(0, 2, 10), origin="jump-box")                 # the pipeline's account, from elsewhere
    assert (v.planned, v.reason) == (False, "not an expected actor")


def test_a_person_is_not_a_pipeline_even_in_the_window():
    v = verdict(utc(0, 2, 10), person="jim", origin="jump-box", by_login=True)
    assert (v.planned, v.reason) == (False, "human, not a pipeline")
    v = verdict(utc(0, 2, 10), person="jim", by_login=True, rules={})
    assert (v.planned, v.reason) == (False, "no plan configured")


@pytest.mark.parametrize("raw, words", [
    ({"windows": [{"name": "w", "cron": "0 2 * *", "duration": "1h"}]}, "five"),
    ({"windows": [{"name": "w", "cron": "0 2 * * *", "duration": "1h", "timezone": "Mars/Olympus"}]}, "Mars"),
    ({"windows": [{"name": "w", "cron": "0 2 * * *", "duration": "soon"}]}, "windows[0].duration"),
    ({"windows": [{"name": "w", "cron": "0 2 * * *", "duration": "1h", "actors": ["nobody"]}]}, "'nobody'"),
    ({"expected_actors": [{"name": "ci"}]}, "needs `users` or `from_hosts`"),
    ({"expected_actors": [{"name": "ci", "users": ["x"], "hots": []}]}, "unknown key `changes.expected_actors[0].hots`"),
    ({"digest": {"cron": "0 8 * * *"}}, "digest.channel` is required"),
    ({"patterns": ["("]}, "is not a regex"),
    ({"since": "yesterday-ish"}, "changes.since"),
])
def test_bad_rules_say_which_key(raw, words):
    with pytest.raises(RulesError, match=None) as exc:
        parse_rules(raw)
    assert words in str(exc.value)
    with pytest.raises(config_mod.ConfigError):
        config_mod.from_dict({"changes": raw})


@pytest.mark.parametrize("cmd, label", [
    ("kubectl apply -f k8s/", "kubectl"),
    ("/usr/local/bin/kubectl -n prod delete pod api-1", "kubectl"),
    ("kubectl get pod delete-me", None),
    ("kubectl rollout restart deployment/api", "kubectl"),
    ("terraform -chdir=infra destroy -auto-approve", "terraform"),
    ("terraform plan", None),
    ("aws eks delete-cluster --name prod", "aws"),
    ("aws eks describe-cluster --name prod", None),
    ("apt-get install -y htop", "package"),
    ("apt-get update", None),
    ("systemctl restart nginx", "systemctl"),
    ("systemctl status nginx", None),
    ("helm upgrade api ./chart", "helm"),
    ("pip3 install requests", "pip install"),
])
def test_change_patterns(cmd, label):
    assert parse_rules({}).pattern_of(cmd) == label


# --- a fleet with hundreds of changes ----------------------------------------------------------

def change_fleet():
    """30 web hosts, 5 db hosts, a jump box and a CI host. The pipeline (gitlab-runner on ci-01,
    ssh as deploy) restarts the app on every web host eight times in its window, once at each of
    the window's edges, and once on a db host; jim and bob, through the jump box, as the shared
    ec2-user with their own keys, sudo -i and change things by hand. Returns (fleet, truth)."""
    fleet = SimFleet(3)
    hosts = [("jump-box", "10.0.0.10"), ("ci-01", "10.0.5.11")] + \
        [(name, f"10.0.2.{i + 10}") for i, name in enumerate(WEB)] + [(f"db-{i:02d}", f"10.0.3.{i + 10}") for i in range(1, 6)]
    for name, addr in hosts:
        h = fleet.add_host(name, addr, boot_ts=DAY - 10 * 86400)
        for uid, user in [(1000, "ec2-user"), (1001, "jim"), (1002, "bob"), (1100, "deploy"), (995, "gitlab-runner")]:
            h.add_user(uid, user)
    H = fleet.hosts
    ci = H["ci-01"]
    runner = ci.daemon(DAY - 86400, ["/usr/bin/gitlab-runner", "run"], 995)
    truth: Counter = Counter()
    expect: dict[tuple[str, float], bool] = {}         # (host, time of the change) -> planned

    def deploy(host: str, t: float, planned: bool) -> None:
        job = ci.spawn(runner, t - 20, ["/bin/bash", "-c", f"ssh deploy@{host} sudo systemctl restart app"],
                       duration=None)
        _, sh = fleet.ssh_hop(job, t - 15, H[host], "deploy", KEYS["deploy-ci"])
        server = H[host]
        sudo = server.spawn(sh, t - 0.05, ["sudo", "systemctl", "restart", "app"], duration=None, euid=0)
        server.setuid(sudo, t - 0.04, 0)
        server.spawn(sudo, t, ["systemctl", "restart", "app"], duration=1.0)
        server.exit(sudo, t + 1.1)
        server.exit(sh, t + 1.2)
        ci.exit(job, t + 1.5)
        truth["gitlab-runner"] += 1
        expect[(host, round(t, 2))] = planned

    for run in range(8):
        for i, host in enumerate(WEB):
            deploy(host, utc(0, 2, 5 + run * 6, i), True)
    deploy("web-01", utc(0, 2), True)                       # the window's first second
    deploy("web-02", utc(0, 2, 59, 59.5), True)             # its last
    deploy("web-03", utc(0, 3), False)                      # its end
    deploy("web-04", utc(0, 1, 59, 59.5), False)            # just before it opens
    deploy("db-01", utc(0, 9, 40), True)                    # London's window, 09:30 UTC in November
    deploy("db-02", utc(0, 11, 0), False)

    def by_hand(person: str, t: float, hosts: list[str], commands: list[list[str]]) -> None:
        jump = H["jump-box"]
        sh = fleet.ssh_login(jump, t, person, raddr=LAPTOP[person], rport=40000 + int(t) % 20000,
                             key_fp=KEYS[person])
        for n, host in enumerate(hosts):
            ts = t + 60 + n * 300
            _, remote = fleet.ssh_hop(sh, ts, H[host], "ec2-user", KEYS[person])
            root = fleet.sudo_shell(remote, ts + 20, ["sudo", "-i"])
            for k, argv in enumerate(commands):
                H[host].spawn(root, ts + 40 + k * 10, argv, duration=0.5)
                truth[person] += 1
                expect[(host, round(ts + 40 + k * 10, 2))] = False
            H[host].spawn(root, ts + 90, ["ls", "-la"], duration=0.1)         # looking, not changing
            H[host].exit(root, ts + 100)
            H[host].exit(remote, ts + 101)

    by_hand("jim", utc(0, 2, 20), WEB[:10], [["systemctl", "restart", "nginx"], ["apt-get", "install", "-y", "htop"]])
    by_hand("bob", utc(0, 14), WEB[5:15] + ["db-03"], [["systemctl", "reload", "nginx"]])
    return fleet, truth, expect


@pytest.fixture(scope="module")
def fleet_store(tmp_path_factory):
    fleet, truth, expect = change_fleet()
    path = str(tmp_path_factory.mktemp("changes") / "fleet.db")
    store = Store.open(path, create=True)
    assert ingest(store, fleet.events()).rejected == 0
    store.close()
    return path, truth, expect


def people_cfg(extra=None):
    return config_mod.from_dict({
        "identity": {"people": {"jim": {"ssh_keys": [KEYS["jim"]]}, "bob": {"ssh_keys": [KEYS["bob"]]}}},
        "changes": RULES, **(extra or {})})


def test_hundreds_of_changes_are_put_on_the_people_behind_them(fleet_store):
    path, truth, expect = fleet_store
    cfg = people_cfg()
    store = Store.open(path)
    result = review(Tracer(store, cfg.identity.identity()), cfg.changes, DAY, DAY + 86400)
    assert len(result.changes) == sum(truth.values()) > 250
    # through the jump box, as the shared ec2-user, via sudo: jim and bob, never "ec2-user"
    assert Counter(c.person for c in result.changes) == truth
    assert all(f"{c.host} (ec2-user), sudo to root" in c.chain for c in result.changes if c.person in ("jim", "bob"))
    assert not any(c.subject == "ls -la" for c in result.changes)            # read-only, even as root
    assert not any(c.subject.startswith("sudo") or c.subject == "-bash" for c in result.changes)
    for c in result.changes:
        assert c.verdict.planned == expect[(c.host, round(c.ts, 2))], (c.host, c.ts, c.subject, c.verdict)
    reasons = Counter(c.verdict.reason for c in result.changes if not c.verdict.planned)
    assert reasons == {"human, not a pipeline": truth["jim"] + truth["bob"], "outside window": 3}
    assert {c.verdict.window for c in result.planned} == {"night deploys", "db maintenance"}


def test_filters_by_host_and_person(fleet_store):
    path, truth, _ = fleet_store
    cfg = people_cfg()
    tracer = Tracer(Store.open(path), cfg.identity.identity())
    only = review(tracer, cfg.changes, DAY, DAY + 86400, user="bob")
    assert {c.person for c in only.changes} == {"bob"} and len(only.changes) == truth["bob"]
    db = review(tracer, cfg.changes, DAY, DAY + 86400, host="db-*")
    assert {c.host for c in db.changes} == {"db-01", "db-02", "db-03"}


def test_the_cli_answers_with_text_and_json(fleet_store, capsys, tmp_path, monkeypatch):
    path, truth, _ = fleet_store
    conf = tmp_path / "whodid.yaml"
    import yaml
    conf.write_text(yaml.safe_dump({"identity": {"people": {"jim": {"ssh_keys": [KEYS["jim"]]},
                                                            "bob": {"ssh_keys": [KEYS["bob"]]}}},
                                    "changes": RULES}))
    window = ["since:2026-11-16T00:00", "until:2026-11-17T00:00"]
    assert cli.main(["--config", str(conf), "changes", "--db", path, *window]) == 0
    out = capsys.readouterr().out
    assert f"{sum(truth.values())} changes (" in out
    unplanned, planned = out.split("\nPLANNED (")
    assert "jim - ssh publickey as jim" in unplanned and "human, not a pipeline" in unplanned
    assert "systemctl restart nginx" in unplanned and "apt-get install -y htop" in unplanned
    assert planned.startswith(f"{truth['gitlab-runner'] - 3})") and "deploy pipeline:" in planned
    assert cli.main(["--config", str(conf), "changes", "--db", path, "--json", *window, "user:jim"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {c["person"] for c in doc["changes"]} == {"jim"} and len(doc["changes"]) == truth["jim"]
    assert all(c["reason"] == "human, not a pipeline" for c in doc["changes"])
    assert cli.main(["--config", str(conf), "changes", "--db", path, "since:soon"]) == cli.EXIT_ERROR
    assert "soon" in capsys.readouterr().err


def test_a_long_day_pages_within_slacks_limits():
    items = [{"type": "section", "text": {"type": "mrkdwn", "text": f"row {i}"},
              "accessory": {"type": "button", "action_id": "whodid.show", "value": "v"}} for i in range(500)]
    head, tail = [{"type": "section", "text": {"type": "mrkdwn", "text": "head"}}], \
        [{"type": "section", "text": {"type": "mrkdwn", "text": "tail"}}]
    pages = paginate("t", head, items, tail)
    assert len(pages) == MAX_MESSAGES
    assert all(len(b) <= 50 for _, b in pages)
    shown = sum(1 for _, b in pages for x in b if x.get("accessory"))
    assert f"and {500 - shown} more unplanned rows not shown" in json.dumps(pages[-1][1])
    assert json.dumps(pages[-1][1]).count('"tail"') == 1
    small = paginate("t", head, items[:3], tail)
    assert len(small) == 1 and len(small[0][1]) == 5


def test_questions_parse_and_refuse_clearly():
    now = utc(1, 12)
    ask = parse("changes since:3d host:web-* user:jim", now)
    assert (ask.since, ask.until, ask.host, ask.user) == (now - 3 * 86400, now, "web-*", "jim")
    with pytest.raises(Exception, match="not one of since:"):
        parse("changes yesterday", now)
    with pytest.raises(Exception, match="before"):
        parse("changes since:1h until:2h", now)


# --- Slack: /whodid changes, the Trace button, the digest --------------------------------------

@pytest.fixture
def slack_bot(fleet_store, monkeypatch):
    no_slack_env(monkeypatch)
    path = fleet_store[0]
    from whodid.bot.slack.app import Bot
    with SlackEmulator() as emu:
        cfg = people_cfg({
            "slack": http_slack(emu, allowed_channels=["C1"])})
        cfg.changes = parse_rules({**RULES, "digest": {"channel": "C9", "cron": "*/2 * * * * *"}})
        bot = Bot(cfg, path, log=lambda m: None)
        bot.start()
        emu.url, emu.bot, emu.cfg = bot._server.url, bot, cfg
        yield emu
        bot.stop()


def test_whodid_changes_in_slack_with_a_trace_button_per_row(slack_bot, fleet_store):
    emu = slack_bot
    status, body, _ = emu.slash(emu.url, "changes since:2026-11-16T00:00 until:2026-11-17T00:00 user:jim")
    assert status == 200 and "Reviewing changes" in body
    top = emu.wait(lambda: (emu.top_level("C1") or [None])[0], what="the review")
    assert "20 changes (20 unplanned) by 1 person on 10 hosts" in top.text
    rows = [b for b in top.blocks if (b.get("accessory") or {}).get("action_id") == "whodid.show"]
    assert len(rows) == 20 and "web-01" in json.dumps(rows)
    row = next(b for b in rows if "apt-get install -y htop" in b["text"]["text"] and "web-07" in b["text"]["text"])
    emu.click(emu.url, top, "whodid.show", row["accessory"]["value"])
    # the trace goes into the review's thread, with its picture
    answer = emu.wait(lambda: next((m for m in emu.thread("C1", top.ts) if " ran " in m.text), None),
                      what="the trace of the change")
    emu.wait(lambda: any(m.files for m in emu.thread("C1", top.ts)), what="its picture")
    assert answer.text.startswith("jim ran apt-get install -y htop on web-07")
    # the fallback text is escaped as Slack asks (issue 16): Slack shows &gt; as >
    assert "jim -> jump-box -> web-07 (ec2-user), sudo to root" in answer.text.replace("&gt;", ">")


def test_the_digest_posts_once_per_tick_unplanned_first(slack_bot):
    from apscheduler.events import EVENT_JOB_EXECUTED
    from apscheduler.schedulers.background import BackgroundScheduler
    emu = slack_bot
    # every two seconds, each tick reviewing the fleet's day as if it were the morning after
    job = DigestJob(emu.cfg, emu.bot.store_path, emu.bot, log=lambda m: None, clock=lambda: DAY + 86400)
    ran: list[float] = []
    scheduler = BackgroundScheduler()
    scheduler.add_listener(lambda ev: ran.append(time.time()), EVENT_JOB_EXECUTED)
    job.schedule(scheduler)
    scheduler.start()
    try:
        emu.wait(lambda: len(ran) >= 2, timeout=20, what="two ticks")
    finally:
        scheduler.shutdown(wait=True)
    tops = emu.top_level("C9")
    assert len(tops) == len(ran) >= 2                          # one digest per tick, no more
    digest = tops[0]
    text = json.dumps(digest.blocks)
    assert "Change digest" in text
    assert text.index("Unplanned") < text.index("human, not a pipeline")
    threads = [m for m in emu.thread("C9", digest.ts) if m.ts != digest.ts]
    everything = text + json.dumps([m.blocks for m in threads])
    assert everything.index("Unplanned") < everything.index("*Planned (")
    assert "deploy pipeline: " in everything and "outside window" in everything
    assert all(len(m.blocks) <= 50 for m in [digest, *threads])


def test_without_slack_the_digest_goes_to_the_log_and_a_file(fleet_store, tmp_path):
    cfg = people_cfg()
    cfg.changes = parse_rules({**RULES, "digest": {"channel": "#changes"}})
    said = []
    result = DigestJob(cfg, fleet_store[0], None, out_dir=str(tmp_path), log=said.append).run(now=DAY + 86400)
    (written,) = tmp_path.glob("changes-*.txt")
    assert written.read_text().strip() == render_text(result, DAY + 86400).strip()
    assert said and result.headline() in said[0]
    pages = render_blocks(result, lambda view: "v")
    assert pages[0][0].startswith("Changes: ")


def test_the_digest_goes_to_a_signed_webhook_and_syslog(fleet_store, tmp_path):
    """Issue 22 item 6: `changes.digest.outputs` - the review as JSON (review_json, as
    `whodid changes --json` gives it) to a webhook, and an RFC 5424 line to syslog."""
    from hookrecv import SyslogReceiver, WebhookReceiver
    from whodid.bot.outputs import Outbox
    secret = tmp_path / "hook.secret"
    secret.write_text("digest-secret")
    secret.chmod(0o600)
    with WebhookReceiver(b"digest-secret", fail_first=1) as recv, SyslogReceiver() as syslog:
        cfg = people_cfg({"outputs": [
            {"name": "oncall", "type": "webhook", "url": recv.url, "secret_file": str(secret), "backoff": "0.05s"},
            {"name": "siem", "type": "syslog", "address": syslog.address, "facility": "local0"}]})
        cfg.changes = parse_rules({**RULES, "digest": {"outputs": ["oncall", "siem"]}})     # no Slack channel
        outbox = Outbox(cfg.outputs, tmp_path / "outbox").start()
        try:
            said = []
            result = DigestJob(cfg, fleet_store[0], None, out_dir=str(tmp_path / "d"), log=said.append,
                               outbox=outbox).run(now=DAY + 86400)
            (got,) = recv.wait_for(1)
            ((line, m),) = syslog.lines(1)
        finally:
            outbox.stop()
    assert got["event"] == "digest" and got["text"] == render_text(result, DAY + 86400)
    assert got["review"]["summary"] == result.headline()
    assert "jim" in {c["person"] for c in got["review"]["changes"] if not c["planned"]}
    assert [a["verified"] for a in recv.attempts] == [True, True]          # one 503, then taken
    assert m, line
    assert int(m["pri"]) == 16 * 8 + 6 and m["msgid"] == "digest"            # local0.info
    assert len(line.encode()) < 8500                                       # a syslog receiver takes it
    slim = json.loads(m["msg"])                                              # still JSON, cut to fit
    assert slim["summary"] == result.headline() and slim["truncated"] is True
    assert slim["text"] and render_text(result, DAY + 86400).startswith(slim["text"])
    assert any("handed to oncall, siem" in s for s in said)


def test_configured_patterns_add_to_the_builtin_ones_or_replace_them():
    rules = parse_rules({"patterns": [r"(?i)(^|/)DEPLOY\.sh( |$)"]})       # global flags: tried one by one
    assert rules.any_pattern("/opt/deploy.sh prod") and rules.pattern_of("./Deploy.sh") == "pattern 1"
    assert rules.any_pattern("kubectl apply -f x")
    only = parse_rules({"builtin_patterns": False, "patterns": [r"\bdeploy\.sh\b"]})
    assert only.any_pattern("deploy.sh") and not only.any_pattern("kubectl apply -f x")


def test_a_digest_that_cannot_be_posted_is_said_and_the_next_tick_still_runs(slack_bot):
    emu = slack_bot
    said = []
    job = DigestJob(emu.cfg, emu.bot.store_path, emu.bot, log=said.append, clock=lambda: DAY + 86400)
    emu.fail("chat.postMessage", status=500)
    job.tick()                                          # Slack answers 500: said, not raised
    assert said and ("could not" in said[-1])
    assert not emu.top_level("C9")
    job.tick()
    assert emu.top_level("C9") and "posted to C9" in said[-1]
    job.store_path = "/nonexistent/dir/store.db"       # the store cannot be opened: said, not raised
    job.tick()
    assert "could not make or post the digest" in said[-1]
