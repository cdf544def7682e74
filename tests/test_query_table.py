"""docs/query.md, kept true: its keys table is the registry's (bot/query.py KEYS), and every row
of its examples table is run - through the CLI (whodid.bot.cli.main) and through the Slack bot
(the real Bolt app over HTTP, answering signed slash commands from tests/slackemu.py) - on one
demo store with one config, and each answer is compared with the row's "finds" (so the CLI's
and Slack's answers are compared with each other). A command example in the doc that is not in
the table, and so not run, fails the test."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from slackemu import SlackEmulator, http_slack

from whodid import config as config_mod
from whodid.bot import cli, query
from whodid.bot.demo import story as demo

DOC = Path(__file__).resolve().parent.parent / "docs" / "query.md"
PLACES = {"trace": {"CLI": "trace", "Slack": "slack-trace"}, "changes": {"CLI": "changes", "Slack": "changes"}}
SHOWN = {"trace": "trace", "slack-trace": "/whodid", "changes": "changes"}
# one config for both, so a default cannot make the two answers differ
CONFIG = {"identity": {"people": demo.story_people()}, "trace": {"default_since": "7d", "limit": 5},
          # a name the config gives (the demo's agents recorded the EKS API under its DNS name);
          # no resolving when asked, so a name nobody recorded finds nothing, offline as online
          "network": {"names": {"eks-prod": ["198.51.100.0/27"]}, "resolve": False}}
SLACK = {"default_since": "7d", "matches": 5}


@dataclass(frozen=True)
class Example:
    command: str
    words: str
    where: tuple[str, ...]
    finds: str

    def __str__(self) -> str:
        return f"{self.command} {self.words} ({', '.join(self.where)})"


def table(marker: str) -> list[list[str]]:
    text = DOC.read_text()
    lines = text.split(marker, 1)[1].strip().splitlines()
    rows = []
    for line in lines[3:]:            # past the marker's line, the header and its rule
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def examples() -> list[Example]:
    out = []
    for command, words, where, finds in table("<!-- examples table"):
        out.append(Example(command, words.strip("`"), tuple(w.strip() for w in where.split(",")), finds))
    return out


EXAMPLES = examples()


def test_the_keys_table_is_the_registry():
    rows = table("<!-- keys table")
    expected = [[f"`{k.word}`", f"`{k.flag}`", f"{k.metavar} ({k.kind})",
                 ", ".join(SHOWN[c] for c in ("trace", "slack-trace", "changes") if c in k.commands),
                 f"`{k.name}:{k.example}`", k.help] for k in query.KEYS]
    assert rows == expected


def test_every_command_example_in_the_doc_is_in_the_table():
    """A `whodid trace ...`, `whodid changes ...` or `/whodid ...` anywhere in the doc must be a
    row of the examples table, with its place, so it is run."""
    rows = {(e.command, e.words, place) for e in EXAMPLES for place in e.where}
    assert all(place in ("CLI", "Slack") for _, _, place in rows) and EXAMPLES
    for span in re.findall(r"`([^`\n]+)`", DOC.read_text()):
        m = re.match(r"^(whodid trace|whodid changes|/whodid changes|/whodid) (.+)$", span)
        if not m or m.group(2) in ("--help", "--link", "help", "changes"):
            continue
        command = "changes" if "changes" in m.group(1) else "trace"
        place = "Slack" if m.group(1).startswith("/") else "CLI"
        assert (command, m.group(2), place) in rows, f"`{span}` in docs/query.md is not in its examples table"


# --- running the examples -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("query-table") / "demo.db")
    assert cli.main(["demo", "--db", path]) == 0
    return path


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("query-config") / "whodid.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def slack(demo_db):
    with SlackEmulator() as emu:
        cfg = config_mod.from_dict({**CONFIG, "slack": http_slack(
            emu, **SLACK, allowed_channels=[f"C{i}" for i in range(len(EXAMPLES))])})
        from whodid.bot.slack.app import Bot
        bot = Bot(cfg, demo_db, log=lambda m: None)
        bot.start()
        emu.url = bot._server.url
        yield emu
        bot.stop()


def cli_answer(capsys, example: Example, db: str, config: str) -> str:
    # the options first: after `--`, every word is the pattern's
    argv = ["--config", config, example.command, "--db", db, "--json", *shlex.split(example.words)]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("whodid: "), err
        return "error: " + err.strip()[len("whodid: "):]
    doc = json.loads(out)
    if example.command == "changes":
        return doc["summary"]
    matches = doc["matches"]
    if not matches:
        return "no match"
    return f"{matches[0]['attributed_to']['user']}; {len(matches)} match{'es' if len(matches) > 1 else ''}"


def slack_answer(emu, example: Example, channel: str) -> str:
    text = example.words if example.command == "trace" else f"changes {example.words}"
    status, body, _ = emu.slash(emu.url, text, channel_id=channel)
    assert status == 200
    if body.startswith("whodid: ") or '"text": "whodid: ' in body or '"text":"whodid: ' in body:
        said = json.loads(body)["text"] if body.startswith("{") else body
        assert said.endswith("`/whodid help` shows the syntax."), said
        return "error: " + said[len("whodid: "):-len(". `/whodid help` shows the syntax.")]
    top = emu.wait(lambda: (emu.top_level(channel) or [None])[0], what=f"the answer to {text}")
    if example.command == "changes":
        assert top.text.startswith("Changes: "), top.text
        return top.text[len("Changes: "):]
    if top.text.startswith("No "):
        return "no match"
    total = re.search(r"match 1 of (\d+)", json.dumps(top.blocks)).group(1)
    return f"{top.text.split(' ', 1)[0]}; {total} match{'es' if total != '1' else ''}"


def agrees(answer: str, finds: str) -> bool:
    """An error answer contains the row's part of the error (the CLI and Slack say where the
    escape is in their own words); any other answer is the row's exactly."""
    if finds.startswith("error: "):
        return answer.startswith("error: ") and finds[len("error: "):].strip("`") in answer
    return answer == finds


@pytest.mark.parametrize("n", range(len(EXAMPLES)), ids=[str(e) for e in EXAMPLES])
def test_each_example_gives_the_same_answer_in_the_cli_and_in_slack(n, demo_db, config_file, slack, capsys):
    example = EXAMPLES[n]
    answers = {}
    if "CLI" in example.where:
        answers["CLI"] = cli_answer(capsys, example, demo_db, config_file)
    if "Slack" in example.where:
        answers["Slack"] = slack_answer(slack, example, f"C{n}")
    assert answers, f"{example} is run nowhere"
    for place, answer in answers.items():
        assert agrees(answer, example.finds), f"{place}: {example.words!r} gave {answer!r}, the doc says {example.finds!r}"
    if len(answers) == 2 and not example.finds.startswith("error: "):
        assert answers["CLI"] == answers["Slack"]
