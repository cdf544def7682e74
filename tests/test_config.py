import re
from dataclasses import fields
from pathlib import Path

import pytest

from whodid import config
from whodid.config import ConfigError, from_dict, load

EXAMPLE = Path(__file__).parent.parent / "config.example.yaml"


def test_the_example_loads_and_documents_every_key():
    cfg = load(str(EXAMPLE))
    assert cfg.identity.identity().person_for_key("SHA256:BgGuuwQsUSRWjwuvtcHvRaDMEn7bExlyncVV4SOkANU") == "jim"
    text = EXAMPLE.read_text()
    for section, cls in config.SECTIONS.items():
        assert re.search(rf"^{section}:", text, re.M), f"section {section} missing from the example"
        for f in fields(cls):
            assert re.search(rf"^  {f.name}:", text, re.M), f"{section}.{f.name} missing from the example"
            # ...and with a comment above it
            block = text.split(f"\n  {f.name}:")[0].rstrip().splitlines()
            assert block[-1].strip().startswith("#"), f"{section}.{f.name} has no comment"


def test_example_defaults_match_the_code_defaults():
    cfg, default = load(str(EXAMPLE)), config.Config()
    assert cfg.trace == default.trace
    assert cfg.store == default.store
    assert cfg.identity.shared_accounts == default.identity.shared_accounts
    assert cfg.agent == default.agent
    assert cfg.collector == default.collector
    assert cfg.slack == default.slack


@pytest.mark.parametrize("raw, words", [
    ({"trace": {"gap_treshold": "5m"}}, "unknown key `trace.gap_treshold`; did you mean `trace.gap_threshold`?"),
    ({"tracer": {}}, "unknown section `tracer`; did you mean `trace`?"),
    ({"trace": {"limit": "five"}}, "`trace.limit` must be a whole number"),
    ({"trace": {"gap_threshold": "soon"}}, "'soon' is not a duration"),
    ({"identity": {"people": {"jim": {"keys": []}}}}, "`identity.people.jim` takes only"),
    ({"identity": {"people": {"jim": {"ssh_keys": "SHA256:x"}}}}, "must be a list of strings"),
    (["not", "a", "mapping"], "top level must be a mapping"),
    ({"agent": {"ringbuf_pages": 1000}}, "`agent.ringbuf_pages` must be a power of 2"),
    ({"agent": {"redact_patterns": ["(unclosed"]}}, "is not a regex"),
    ({"agent": {"watch": "/etc"}}, "`agent.watch` must be a list of strings"),
])
def test_bad_config_says_what_is_wrong(raw, words):
    with pytest.raises(ConfigError) as info:
        from_dict(raw, "test.yaml")
    assert words in str(info.value)


def test_store_path_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("WHODID_DB", raising=False)
    cfg = config.Config()
    assert cfg.store_path() == str(tmp_path / "whodid" / "whodid.db")
    cfg.store.path = "/srv/whodid.db"
    assert cfg.store_path() == "/srv/whodid.db"
    monkeypatch.setenv("WHODID_DB", "/env.db")
    assert cfg.store_path() == "/env.db"
    assert cfg.store_path("/flag.db") == "/flag.db"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("trace: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(str(bad))


def test_the_example_documents_every_key_of_the_change_review():
    from whodid.tracer.changes import KEYS
    text = EXAMPLE.read_text().split("\nchanges:", 1)[1]
    for part, keys in KEYS.items():
        for key in keys:
            assert re.search(rf"^\s*#?\s*(- )?{key}:", text, re.M), f"changes: {part}.{key} missing from the example"


def test_unix_sockets_are_typed_and_checked():
    cfg = from_dict({"agent": {"unix_sockets": {"prefixes": ["/srv/app.sock", "@mux"]}}})
    assert cfg.agent.unix_sockets == config.UnixSockets(prefixes=["/srv/app.sock", "@mux"])
    assert cfg.agent.unix_sockets.comms == ["ssh", "tmux", "screen"]        # what was not given keeps its default
    assert config.Config().agent.unix_sockets.prefixes[0] == "/tmp/tmux-"


@pytest.mark.parametrize("raw, words", [
    ({"unix_sockets": ["/tmp/tmux-"]}, "`agent.unix_sockets` must be a mapping"),
    ({"unix_sockets": {"paths": []}}, "unknown key `agent.unix_sockets.paths`"),
    ({"unix_sockets": {"prefixes": "/tmp/tmux-"}}, "`agent.unix_sockets.prefixes` must be a list"),
    ({"unix_sockets": {"prefixes": ["tmp/tmux-"]}}, "neither a path (/...) nor an abstract name (@...)"),
    ({"unix_sockets": {"comms": ["a-very-long-program-name"]}}, "longer than a comm can be"),
])
def test_bad_unix_sockets_say_what_is_wrong(raw, words):
    with pytest.raises(ConfigError) as info:
        from_dict({"agent": raw}, "test.yaml")
    assert words in str(info.value)


def test_the_connection_budget_is_typed_and_checked():
    assert config.Config().agent.connection_budget == config.ConnectionBudget(per_second=2000, burst=10_000)
    cfg = from_dict({"agent": {"connection_budget": {"per_second": 0}}})
    assert cfg.agent.connection_budget == config.ConnectionBudget(per_second=0, burst=10_000)   # 0: unlimited


@pytest.mark.parametrize("raw, words", [
    ({"connection_budget": 2000}, "`agent.connection_budget` must be a mapping"),
    ({"connection_budget": {"rate": 5}}, "unknown key `agent.connection_budget.rate`"),
    ({"connection_budget": {"per_second": "2k"}}, "`agent.connection_budget.per_second` must be a whole number"),
    ({"connection_budget": {"burst": -1}}, "`agent.connection_budget.burst` must be a whole number from 0"),
    ({"connection_budget": {"per_second": 10**10}}, "from 0 to 1,000,000,000"),
    ({"connection_budget": {"burst": 1}}, "must be at least 2"),
])
def test_a_bad_connection_budget_says_what_is_wrong(raw, words):
    with pytest.raises(ConfigError) as info:
        from_dict({"agent": raw}, "test.yaml")
    assert words in str(info.value)


@pytest.mark.parametrize("raw, words", [
    ({"unix_sockets": {"prefix": ["/srv/"]}}, "did you mean `agent.unix_sockets.prefixes`?"),
    ({"connection_budget": {"per_secnd": 5}}, "did you mean `agent.connection_budget.per_second`?"),
    ({"connection_budget": {"burst": True}}, "`agent.connection_budget.burst` must be a whole number, got True"),
])
def test_agent_subsections_share_the_sections_checks(raw, words):
    """agent.unix_sockets and agent.connection_budget are checked by _section, like every section:
    the same did-you-mean and the same wording."""
    with pytest.raises(ConfigError) as info:
        from_dict({"agent": raw}, "test.yaml")
    assert words in str(info.value)


def test_the_example_documents_every_key_of_the_outputs():
    """Issue 22 item 6: the top-level `outputs` - every key of each type shown, and the
    examples parse once uncommented."""
    import yaml
    from whodid.bot.outputs import KEYS, parse_outputs
    block = EXAMPLE.read_text().split("\noutputs: []", 1)[1].split("\n\n", 1)[0]
    for kind, keys in KEYS.items():
        for key in keys:
            assert re.search(rf"^#\s+(- )?{key}:", block, re.M), f"outputs: {kind}.{key} missing from the example"
    shown = parse_outputs(yaml.safe_load("\n".join(line[1:] for line in block.splitlines() if line.startswith("#  "))))
    assert {o.type for o in shown.values()} == {"webhook", "syslog"}
