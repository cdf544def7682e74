"""`whodid serve` end to end, as deployed: a config pointing at the Slack emulator, the bot in
Socket Mode (the default) and in HTTP mode, a real /whodid through to the picture in the thread,
and a clean stop on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from slackemu import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, SlackEmulator
from kit import free_port
from test_slack import answered, button

from whodid.bot import cli
from whodid.bot.demo import story as demo


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("serve") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


def serve(tmp_path, demo_db, emu, mode: str, extra=None):
    port = free_port()
    cfg = {"identity": {"people": demo.story_people()},
           "collector": {"listen": f"127.0.0.1:{free_port()}"},
           "slack": {"mode": mode, "api_base_url": emu.api_base_url, "allowed_channels": ["#incidents"],
                     "listen": f"127.0.0.1:{port}"},
           "web": {"listen": f"127.0.0.1:{free_port()}"}, **(extra or {})}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp_path / "config.yaml"),
                             "serve", "--db", demo_db, "--ready-file", str(ready)],
                            stderr=open(tmp_path / "serve.err", "w"), env=env)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.err").read_text()
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}/slack/events"


def stop(proc, tmp_path) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    return (tmp_path / "serve.err").read_text()


def test_socket_mode_from_slash_command_to_picture_and_buttons(tmp_path, demo_db):
    with SlackEmulator() as emu:
        proc, _ = serve(tmp_path, demo_db, emu, "socket")
        try:
            ack = emu.socket_send("slash_commands", emu.slash_form("delete-cluster"))
            assert "Tracing `delete-cluster` over the last 24h..." in json.dumps(ack["payload"])
            top, thread = answered(emu)
            assert "*jim* ran `aws eks delete-cluster --name prod`" in str(top.blocks)
            # the trace page behind the answer's Open full trace button, served by the same process
            url = next(e["url"] for b in top.blocks for e in b.get("elements") or []
                       if e.get("action_id") == "whodid.open")
            with urllib.request.urlopen(url, timeout=60) as page:
                assert page.status == 200 and "jim, via jump-box, sudo to root" in page.read().decode()
            n = len(emu.thread("C1", top.ts))
            emu.socket_send("interactive", emu.click_payload(top, "whodid.widen", button(top, "widen")))
            emu.wait(lambda: any(m.files for m in emu.thread("C1", top.ts)[n:]), what="the wider picture")
            # /healthz covers the bot's side too (issue 16 item 10)
            collector = (tmp_path / "ready").read_text().split()[1]
            with urllib.request.urlopen(collector + "/healthz", timeout=30) as resp:
                health = json.loads(resp.read())
            assert health["checks"] == {"slack": "ok", "scheduler": "ok", "pages": "ok"}, health
        finally:
            log = stop(proc, tmp_path)
    assert "Slack bot whodid in Emulated connected in Socket Mode" in log
    assert "trace pages on http://127.0.0.1:" in log and "GET /trace -> 200" in log
    assert "ana in #incidents: command delete-cluster -> answered" in log
    assert "stopped;" in log


def test_serve_posts_the_change_digest_on_its_schedule(tmp_path, demo_db):
    with SlackEmulator() as emu:
        digest = {"changes": {"digest": {"channel": "C5", "cron": "*/2 * * * * *", "since": "24h"}}}
        proc, _ = serve(tmp_path, demo_db, emu, "socket", digest)
        try:
            top = emu.wait(lambda: (emu.top_level("C5") or [None])[0], what="the digest")
        finally:
            log = stop(proc, tmp_path)
    blocks = json.dumps(top.blocks)
    assert "Change digest" in blocks and "aws eks delete-cluster --name prod" in blocks
    assert "No expected actors or change windows are configured" in blocks
    assert "change digest scheduled: */2 * * * * * UTC to C5, reviewing the last 24h" in log
    assert "change digest: posted to C5" in log


def test_http_mode_from_signed_slash_command_to_picture(tmp_path, demo_db):
    with SlackEmulator() as emu:
        proc, url = serve(tmp_path, demo_db, emu, "http")
        try:
            status, body, _ = emu.slash(url, "delete-cluster")
            assert status == 200 and "Tracing" in body
            answered(emu)
            assert emu.signed_post(url, "command=%2Fwhodid&text=x", secret="wrong")[0] == 401
        finally:
            log = stop(proc, tmp_path)
    assert f"listening on {url}" in log


def test_serve_without_slack_tokens_runs_the_collector_and_says_why_no_bot(tmp_path, demo_db, monkeypatch):
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"collector": {"listen": f"127.0.0.1:{free_port()}"}}))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp_path / "config.yaml"),
                             "serve", "--db", demo_db, "--ready-file", str(ready)],
                            stderr=open(tmp_path / "serve.err", "w"),
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLACK_")})
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.err").read_text()
        time.sleep(0.1)
    log = stop(proc, tmp_path)
    assert "Slack bot off: no bot token ($SLACK_BOT_TOKEN or slack.bot_token" in log


def test_serve_with_a_half_configured_slack_refuses_to_start(tmp_path, demo_db):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"collector": {"listen": f"127.0.0.1:{free_port()}"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env["SLACK_BOT_TOKEN"] = "xoxb-1"
    res = subprocess.run([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp_path / "config.yaml"),
                          "serve", "--db", demo_db], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "Socket Mode needs an app-level token: set $SLACK_APP_TOKEN" in res.stderr


def test_serve_runs_canaries_and_without_slack_writes_alerts_to_files(tmp_path, demo_db):
    from whodid.bot.demo.fakekube import FakeKube
    with FakeKube() as kube:                                 # no cluster object: it is gone
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({
            "identity": {"people": demo.story_people()},
            "collector": {"listen": f"127.0.0.1:{free_port()}"},
            "canaries": [{"name": "cluster-watch", "every": "1s", "timeout": "2s",
                          "check": {"type": "kubernetes", "api_url": kube.url, "token": kube.token,
                                    "path": "/apis/eks.amazonaws.com/v1/clusters/prod"},
                          "suspects": {"commands": ["delete-cluster"]}}]}))
        os.chmod(tmp_path / "config.yaml", 0o600)          # a canary token inside: private, or refused
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
        env["XDG_DATA_HOME"] = str(tmp_path / "data")
        ready = tmp_path / "ready"
        proc = subprocess.Popen([sys.executable, "-m", "whodid.bot.cli", "--config", str(tmp_path / "config.yaml"),
                                 "serve", "--db", demo_db, "--ready-file", str(ready)],
                                stderr=open(tmp_path / "serve.err", "w"), env=env)
        alerts = tmp_path / "data" / "whodid" / "alerts"
        deadline = time.time() + 60
        while not (alerts.exists() and list(alerts.glob("*.json"))):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.err").read_text()
            time.sleep(0.2)
        log = stop(proc, tmp_path)
    assert "1 canaries scheduled: cluster-watch (every 1s)" in log
    assert "Canary cluster-watch is failing: cluster prod is gone" in log
    (alert,) = [json.loads(p.read_text()) for p in alerts.glob("*.json")]
    assert alert["suspects"][0]["person"] == "jim" and "delete-cluster" in alert["suspects"][0]["command"]
    assert list(alerts.glob("*-suspect-1.png"))


def test_serve_alerts_slack_and_a_webhook_and_a_canary_with_only_outputs(tmp_path, demo_db, monkeypatch):
    """Issue 22 item 6, as deployed: one canary alerts its Slack channel and the webhook; one
    with `outputs` and no channel starts (no 'without a channel' refusal) and alerts only the
    webhook and syslog."""
    from hookrecv import SyslogReceiver, WebhookReceiver
    from whodid.bot.demo.fakekube import FakeKube
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))        # the outbox's spool
    secret = tmp_path / "hook.secret"
    secret.write_text("serve-secret")
    secret.chmod(0o600)
    with SlackEmulator() as emu, FakeKube() as kube, WebhookReceiver(b"serve-secret") as recv, \
            SyslogReceiver() as syslog:
        check = {"type": "kubernetes", "api_url": kube.url, "token_file": str(secret), "path": "/api/v1/namespaces/gone"}
        kube.token = "serve-secret"
        extra = {"outputs": [{"name": "oncall", "type": "webhook", "url": recv.url, "secret_file": str(secret)},
                             {"name": "siem", "type": "syslog", "address": syslog.address}],
                 "canaries": [{"name": "slack-and-hook", "every": "1s", "channel": "C7", "outputs": ["oncall"],
                               "check": check, "suspects": {"commands": ["delete-cluster"]}},
                              {"name": "hook-only", "every": "1s", "outputs": ["oncall", "siem"], "check": check,
                               "suspects": {"commands": ["delete-cluster"]}}]}
        proc, _ = serve(tmp_path, demo_db, emu, "socket", extra)
        try:
            got = recv.wait_for(2)
            ((_, line),) = syslog.lines(1)
            top = emu.wait(lambda: (emu.top_level("C7") or [None])[0], what="the Slack alert")
        finally:
            log = stop(proc, tmp_path)
    assert sorted(e["canary"] for e in got) == ["hook-only", "slack-and-hook"]
    assert all(e["event"] == "alert" and e["result"].startswith("namespace gone is gone: 404") for e in got)
    assert line and line["sd"].endswith('canary="hook-only"]')
    assert "slack-and-hook" in top.text and len(emu.top_level("C7")) == 1   # hook-only is not posted to Slack
    assert "outputs: oncall (webhook), siem (syslog)" in log
