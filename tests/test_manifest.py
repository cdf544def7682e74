"""The app manifest asks for what the bot uses, and no more."""

import re
from pathlib import Path

import yaml

from whodid import config

ROOT = Path(__file__).parent.parent


def test_manifest_matches_the_bot():
    m = yaml.safe_load((ROOT / "bot" / "slack" / "manifest.yml").read_text())
    (cmd,) = m["features"]["slash_commands"]
    assert cmd["command"] == config.SlackConfig().command
    assert m["settings"]["interactivity"]["is_enabled"] is True
    assert m["settings"]["socket_mode_enabled"] is (config.SlackConfig().mode == "socket")
    scopes = set(m["oauth_config"]["scopes"]["bot"])
    used = set(re.findall(r"client\.(\w+)\(", (ROOT / "bot" / "slack" / "app.py").read_text()))
    need = {"chat_postMessage": "chat:write", "files_upload_v2": "files:write",
            "usergroups_users_list": "usergroups:read", "usergroups_list": "usergroups:read",
            "conversations_list": "channels:read"}
    assert used - {"auth_test"} <= set(need), f"a Web API method without a known scope: {used - set(need)}"
    assert scopes == {need[u] for u in used if u in need} | {"commands"}


def test_readme_walks_through_installing_it():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install in your workspace", 1)[1].split("\n## ", 1)[0]
    for step in ("bot/slack/manifest.yml", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "connections:write",
                 "allowed_channels", "/invite @whodid", "whodid serve", "SLACK_SIGNING_SECRET"):
        assert step in section, step
