"""The daemons' log (issue 22 item 4): standard logging with levels, `--log-format json` one
object per line - every line of stderr, Bolt's and APScheduler's records included - text as
people have always read it, and no secret in either.

The daemons run for real (`whodid serve`, `whodid-agent forward` and `run --audit-log`, no
BPF needed), their stderr read line by line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from kit import free_port
from slackemu import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, SlackEmulator

from whodid import config as config_mod
from whodid import logs
from whodid.tracer import Store

LEVELS = {"debug", "info", "warning", "error", "critical"}


def records(err: str) -> list[dict]:
    """Every line of stderr as a JSON object - a line that is not one fails the test."""
    out = []
    for n, line in enumerate(err.splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"stderr line {n} is not JSON: {line!r}") from None
        assert isinstance(rec, dict) and {"ts", "level", "logger", "msg"} <= set(rec), line
        assert rec["level"] in LEVELS and rec["ts"].endswith("Z"), line
        out.append(rec)
    return out


def said(recs: list[dict], words: str) -> dict:
    """The one record whose message holds these words."""
    found = [r for r in recs if words in r["msg"]]
    assert found, f"no record says {words!r}: {[r['msg'][:80] for r in recs]}"
    return found[0]


class Serve:
    """`whodid serve` on a config, with these flags; stopped with SIGTERM. After: `err`."""

    def __init__(self, tmp, cfg: dict, *flags: str, env: dict | None = None, db: str | None = None):
        self.tmp = tmp
        cfg = {"collector": {"listen": f"127.0.0.1:{free_port()}"}, "web": {"listen": "off"}, **cfg}
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
        os.chmod(tmp / "config.yaml", 0o600)
        self.db = db or str(tmp / "s.db")
        self.ready = tmp / "ready"
        self.ready.unlink(missing_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp / "config.yaml"),
                                      "serve", "--db", self.db, "--ready-file", str(self.ready), *flags],
                                     stderr=open(tmp / "serve.err", "w"),
                                     env={**base, "XDG_DATA_HOME": str(tmp / "data"), **(env or {})})
        self.err = ""

    def __enter__(self) -> "Serve":
        deadline = time.time() + 60
        while not self.ready.exists():
            assert self.proc.poll() is None and time.time() < deadline, (self.tmp / "serve.err").read_text()
            time.sleep(0.1)
        self.url = self.ready.read_text().split()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0
        self.err = (self.tmp / "serve.err").read_text()


# --- whodid serve ---------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["debug", "info"])
def test_serve_json_is_one_object_a_line_slack_and_scheduler_too_and_masks_every_token(tmp_path, level):
    """At debug, the Slack SDK logs its requests (headers with the bot token, the Socket Mode
    URL) and APScheduler its jobs: every line is still one JSON object, and no token is in it.
    At info, none of their routine: Bolt gives its loggers the root's level, yet they stay quiet."""
    db = str(tmp_path / "s.db")
    Store.open(db, create=True).close()
    with SlackEmulator() as emu:
        cfg = {"slack": {"mode": "socket", "api_base_url": emu.api_base_url, "allowed_channels": ["C1"]}}
        env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}
        with Serve(tmp_path, cfg, "--log-format", "json", "--log-level", level, env=env, db=db) as serve:
            emu.socket_send("slash_commands", emu.slash_form("nothing-ran-like-this"))
            emu.wait(lambda: emu.messages, what="the answer")
    recs = records(serve.err)
    loggers = {r["logger"] for r in recs}
    assert {"whodid.serve", "whodid.bot"} <= loggers
    if level == "info":
        assert all(r["level"] in ("warning", "error") for r in recs if not r["logger"].startswith("whodid.")), recs
        assert not any(r["level"] == "debug" for r in recs)
    else:
        assert any(name.startswith(("slack_bolt", "slack_sdk")) for name in loggers), loggers
        assert any(name.startswith("apscheduler") for name in loggers), loggers
        assert "'Authorization': '***'" in serve.err     # the SDK logged its request headers: masked
    assert said(recs, "connected in Socket Mode")["level"] == "info"
    asked = said(recs, "command nothing-ran-like-this")
    assert asked["logger"] == "whodid.bot" and asked["channel"] == "C1" and asked["action"] == "command"
    assert said(recs, "stopped;")["level"] == "info"
    for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET):
        assert secret not in serve.err


def test_serve_json_at_info_keeps_libraries_at_warning_and_says_trouble_at_its_level(tmp_path):
    """No Slack token (a warning), a canary slower than its schedule: APScheduler skips the
    run and says so (its WARNING), while its routine records (job added, run) stay out."""
    cfg = {"canaries": [{"name": "slow", "every": "1s", "timeout": "5s",
                         "check": {"type": "command", "argv": ["sleep", "2.5"]}}]}
    with Serve(tmp_path, cfg, "--log-format", "json") as serve:
        deadline = time.time() + 60
        while "skipped" not in (tmp_path / "serve.err").read_text():
            assert time.time() < deadline, (tmp_path / "serve.err").read_text()
            time.sleep(0.2)
    recs = records(serve.err)
    assert said(recs, "Slack bot off: no bot token")["level"] == "warning"
    skipped = said(recs, "maximum number of running instances reached")
    assert skipped["logger"].startswith("apscheduler") and skipped["level"] == "warning"
    assert all(r["level"] != "info" and r["level"] != "debug" for r in recs if r["logger"].startswith("apscheduler"))
    assert said(recs, "1 canaries scheduled: slow (every 1s)")["logger"] == "whodid.serve"


def test_the_config_chooses_the_format_and_the_flag_wins(tmp_path):
    with Serve(tmp_path, {"logging": {"format": "json"}, "slack": {"mode": "off"}}) as serve:
        pass
    assert said(records(serve.err), "collector listening on")["level"] == "info"
    with Serve(tmp_path, {"logging": {"format": "json"}, "slack": {"mode": "off"}}, "--log-format", "text") as serve:
        pass
    lines = serve.err.splitlines()
    assert lines and all(line.startswith("whodid serve: ") for line in lines), lines      # today's words
    assert any(line.startswith("whodid serve: collector listening on http://127.0.0.1:") for line in lines)
    assert lines[-1].startswith("whodid serve: stopped; 0 events written since start")


def test_a_config_serve_cannot_read_is_said_in_the_format_asked_for(tmp_path):
    (tmp_path / "bad.yaml").write_text("slack: {mode: sideways}\n")
    res = subprocess.run([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp_path / "bad.yaml"), "serve",
                          "--db", str(tmp_path / "s.db"), "--log-format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    (rec,) = records(res.stderr)
    assert rec["level"] == "error" and "`slack.mode` is socket, http or off" in rec["msg"]


# --- whodid-agent ---------------------------------------------------------------------------

def exec_line(i: int) -> str:
    return json.dumps({"v": 1, "kind": "exec", "host": "web-1", "boot": "b1", "ts": time.time() - 60 + i,
                       "pid": 100 + i, "start": i, "argv": ["job", str(i)], "uid": 0, "euid": 0})


def test_agent_forward_logs_json_with_levels(tmp_path):
    db = str(tmp_path / "s.db")
    token = Store.open(db, create=True).add_agent("web-1")
    (tmp_path / "events.jsonl").write_text(exec_line(1) + "\nnot an event\n" + exec_line(2) + "\n")
    with Serve(tmp_path, {"slack": {"mode": "off"}}, db=db) as serve:
        res = subprocess.run([sys.executable, "-m", "whodid.agent.cli", "forward", str(tmp_path / "events.jsonl"),
                              "--collector", serve.url, "--spool", str(tmp_path / "spool.db"), "--log-format", "json"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "WHODID_AGENT_TOKEN": token})
    assert res.returncode == 0, res.stderr
    recs = records(res.stderr)
    assert {r["logger"] for r in recs} == {"whodid.agent"}
    bad = said(recs, "events.jsonl:2:")
    assert bad["level"] == "warning" and "(not forwarded)" in bad["msg"]
    assert said(recs, "forwarded 2 events, 1 malformed lines skipped")["level"] == "info"
    assert token not in res.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_agent_forward_says_a_refused_token_as_an_error_with_todays_words(tmp_path, fmt):
    """A collector refusing the token: an error (a person must fix it), with the same words."""
    db = str(tmp_path / "s.db")
    Store.open(db, create=True).close()
    (tmp_path / "events.jsonl").write_text(exec_line(1) + "\n")
    with Serve(tmp_path, {"slack": {"mode": "off"}}, db=db) as serve:
        agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "forward", str(tmp_path / "events.jsonl"),
                                  "--collector", serve.url, "--spool", str(tmp_path / "spool.db"), "--log-format", fmt],
                                 stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "WHODID_AGENT_TOKEN": "wdt_not-a-token-this-collector-gave"})
        first = agent.stderr.readline()
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    words = "the collector refused this agent's token (401"
    if fmt == "text":
        assert first.startswith(f"whodid-agent: {words}"), first
    else:
        (rec,) = records(first)
        assert rec["level"] == "error" and rec["msg"].startswith(words) and rec["logger"] == "whodid.agent"


def test_agent_run_on_an_audit_log_logs_json_from_start_to_stop(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("")
    ready = tmp_path / "ready"
    agent = subprocess.Popen([sys.executable, "-m", "whodid.agent.cli", "run", "--audit-log", str(log), "--db",
                              str(tmp_path / "a.db"), "--host", "web-1", "--ready-file", str(ready),
                              "--log-format", "json"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists():
        assert agent.poll() is None and time.time() < deadline, agent.stderr.read()
        time.sleep(0.1)
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    recs = records(err)
    assert said(recs, f"following the audit log {log} on web-1")["level"] == "info"
    stopped = said(recs, "stopped;")
    assert stopped["level"] == "info" and stopped["host"] == "web-1"


def test_a_bad_log_level_is_refused_in_one_line():
    res = subprocess.run([sys.executable, "-m", "whodid.agent.cli", "forward", "--log-level", "loud"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "--log-level" in res.stderr
    with pytest.raises(config_mod.ConfigError, match="`logging`: the log level is one of debug, info"):
        config_mod.from_dict({"logging": {"level": "loud"}})
    with pytest.raises(config_mod.ConfigError, match="`logging`: the log format is text or json"):
        config_mod.from_dict({"logging": {"format": "xml"}})


# --- the formats, record by record ------------------------------------------------------------

@pytest.fixture
def logged(capsys):
    """setup() in this process; put back as it was afterwards. Returns a function reading
    what was written to stderr since."""
    root, whodid = logging.getLogger(), logging.getLogger("whodid")
    saved = (list(root.handlers), root.level, list(whodid.handlers), whodid.level, whodid.propagate,
             sys.excepthook, threading.excepthook)
    capsys.readouterr()
    yield lambda: capsys.readouterr().err
    root.handlers[:], whodid.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    whodid.setLevel(saved[3])
    whodid.propagate = saved[4]
    sys.excepthook, threading.excepthook = saved[5], saved[6]
    logging.captureWarnings(False)


def test_an_exception_is_one_line_with_its_traceback_and_a_library_record_too(logged):
    logs.setup("info", "json")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("apscheduler.executors.default").exception("Job %r raised an exception", "canary x")
    logs.get("canary").warning("prod: FAILED (no answer, 2.0s)", canary="prod")
    logging.getLogger("slack_bolt.App").info("routine chatter")        # a library's INFO: not shown
    bolts = logging.getLogger("app.py")                                 # as Bolt makes its loggers: the root's level
    bolts.setLevel(logging.getLogger().level)
    bolts.info("listener chatter")
    logging.getLogger("whodid.web").debug("below the level")
    err = logged()
    job, canary = records(err)
    assert job["logger"] == "apscheduler.executors.default" and job["level"] == "error"
    assert job["msg"] == "Job 'canary x' raised an exception"
    assert job["exc"] == "RuntimeError: boom second line" and "Traceback (most recent call last)" in job["traceback"]
    assert canary == {**canary, "logger": "whodid.canary", "level": "warning", "canary": "prod"}


def test_a_thread_that_dies_is_one_record(logged):
    logs.setup("info", "json")
    t = threading.Thread(target=lambda: 1 / 0, name="whodid-writer")
    t.start()
    t.join()
    (rec,) = records(logged())
    assert rec["level"] == "error" and rec["msg"].startswith("thread whodid-writer stopped on an unexpected "
                                                             "ZeroDivisionError")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_masked_whoever_logs_them(logged, fmt):
    logs.setup("debug", fmt)
    secrets = ["xoxb-1234567890-abcdefghij", "xapp-1-A012-345-abcdef", "wdt_Zm9vYmFyYmF6cXV4cXV1eA",
               "s3cr3t-pa55", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl", "linktoken123"]
    logging.getLogger("slack_sdk.web.base_client").debug(
        "Sending a request - url: https://slack.com/api/auth.test, headers: {'Authorization': 'Bearer %s'}", secrets[0])
    logging.getLogger("slack_sdk.socket_mode").debug("connecting to wss://wss.slack.com/link/?ticket=%s", secrets[5])
    logs.get("agent").warning(f"the collector at https://agent:{secrets[3]}@collector:8470 did not answer; "
                              f"token {secrets[2]}, app token {secrets[1]}, jwt {secrets[4]}")
    logs.get("web").info(f"GET /trace?t={secrets[5]} -> 200")
    logging.getLogger("slack_bolt.test_logs").debug("body: command=%2Fwhodid&password=hunter2-and-more")
    err = logged()
    assert len(err.splitlines()) == 5 and "hunter2" not in err
    for secret in secrets:
        assert secret not in err
    assert "wdt_***" in err and "xapp-***" in err and "https://agent:***@collector" in err


def test_before_setup_whodid_speaks_text_on_stderr_as_it_always_did():
    """whodid as a library (tests, the demo): its loggers print today's lines, INFO and up - in a
    fresh interpreter, since another test's setup() in this process would change the answer."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", "from whodid import logs; "
                          "logs.get('web').info('127.0.0.1 GET /trace -> 403'); "
                          "import logging; logging.getLogger('whodid.web').debug('not said below INFO')"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "whodid web: 127.0.0.1 GET /trace -> 403\n"


def test_a_newline_in_hostile_data_cannot_forge_a_text_line(logged):
    """journald and log shippers take each line of text as a record: a host name, a command line
    or an exception message holding a newline must not start a line that reads as whodid's own
    (adversarial review, issue 22). Continuation lines are indented."""
    logs.setup("info", "text")
    logs.get("collector").error("refused 1 events from web-1\nwhodid serve: collector listening on forged")
    try:
        raise ValueError("bad\rwhodid-agent: stopped; forged")
    except ValueError:
        logging.getLogger("whodid.canary").exception("check crashed\u2028whodid web: forged")
    lines = logged().replace("\r", "\n").replace("\u2028", "\n").splitlines()
    assert not [line for line in lines if "forged" in line and line.startswith("whodid")], lines


def test_a_json_record_is_one_line_for_every_reader_of_lines(logged):
    """json.dumps leaves U+2028, U+2029 and NEL raw (ensure_ascii=False): a shipper that splits
    lines as Python's splitlines or JavaScript do would cut the object in two (adversarial review)."""
    logs.setup("info", "json")
    logs.get("collector").warning("host web-1\u2028{\"level\": \"info\"}\u2029x\x85y", host="a\u2028b")
    err = logged()
    assert len(err.splitlines()) == 1, err
    assert json.loads(err)["msg"] == "host web-1\u2028{\"level\": \"info\"}\u2029x\x85y"
