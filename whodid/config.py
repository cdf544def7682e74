"""The one configuration object, loaded from one YAML file (plus environment for secrets).

Every key is documented in config.example.yaml; tests/test_config.py loads that file, so
an undocumented or misspelt key cannot slip in on either side.

Loading stops at a config's first problem (a daemon does not start on half a config);
collect() finds them all, for `whodid config check`: each section's keys and types, and each
rule across them (a function registered with @rule, raising ConfigError), run on its own.
A new check is a new @rule, never a line inside another.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from whodid.tracer.changes import Rules, RulesError, parse_rules
from whodid.tracer.identity import DEFAULT_SHARED, Identity, Person
from whodid.tracer.secret_rules import secret_name
from whodid.tracer.trace import Settings
from whodid.tracer.when import TimeError, parse_duration

SEARCH_PATH = ("~/.config/whodid/config.yaml", "/etc/whodid/config.yaml")


class ConfigError(Exception):
    pass


def data_dir() -> Path:
    """Where whodid keeps its files when nobody says: $XDG_DATA_HOME/whodid (~/.local/share/whodid)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "whodid"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNIT = {"B": 1, None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
              "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str) -> int:
    """`16MiB`, `1GiB`, `500MB`, `4096` -> bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{text!r} is not a size; use a number and a unit, like 16MiB or 1GiB")
    return int(float(m.group(1)) * _SIZE_UNIT[m.group(2)])


def maybe_duration(text: str) -> float | None:
    """A duration, or None for "" / 0 / off (meaning: never)."""
    if str(text).strip().lower() in ("", "0", "off", "never", "forever"):
        return None
    return parse_duration(text)


@dataclass
class StoreConfig:
    path: str = ""                      # empty: $WHODID_DB, else data_dir()/whodid.db
    retention: str = "30d"              # "" or off: keep everything
    prune_every: str = "1h"

    @property
    def retention_seconds(self) -> float | None:
        return maybe_duration(self.retention)


@dataclass
class CollectorConfig:
    listen: str = "127.0.0.1:8470"
    tls_cert: str = ""
    tls_key: str = ""
    max_body: str = "16MiB"
    max_batch: str = "64MiB"
    silent_after: str = "15m"
    # what a client may hold before it is authenticated (docs/collector.md, "Limits and deadlines")
    header_timeout: str = "10s"         # the request line and headers, in total
    body_timeout: str = "120s"          # the whole body: 16 MiB at about 140 KB/s
    idle_timeout: str = "30s"           # a kept-alive connection between requests
    max_connections: int = 256          # one thread each; one more is answered 503

    def address(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"`collector.listen` wants HOST:PORT (like 0.0.0.0:8470), got {self.listen!r}")
        return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class TraceConfig:
    default_since: str = "7d"
    limit: int = 5
    gap_threshold: str = "5m"
    hop_window: str = "10m"
    clock_skew: str = "2m"
    max_nodes: int = 2000
    inject_window: str = "10s"
    mux_rtt: str = "5s"
    mux_skew: str = "2s"

    def settings(self) -> Settings:
        return Settings(gap_threshold=parse_duration(self.gap_threshold),
                        hop_window=parse_duration(self.hop_window),
                        clock_skew=parse_duration(self.clock_skew), max_nodes=self.max_nodes,
                        inject_window=parse_duration(self.inject_window),
                        mux_rtt=parse_duration(self.mux_rtt), mux_skew=parse_duration(self.mux_skew))


@dataclass
class IdentityConfig:
    shared_accounts: list[str] = field(default_factory=lambda: list(DEFAULT_SHARED))
    people: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def identity(self) -> Identity:
        people = tuple(Person(name, tuple(p.get("ssh_keys", [])), tuple(p.get("accounts", [])))
                       for name, p in sorted(self.people.items()))
        return Identity(people=people, shared_accounts=tuple(self.shared_accounts))


@dataclass
class UnixSockets:
    """Which unix-socket connects the agent records (agent.unix_sockets; docs/agent.md): a connect
    is kept in the kernel when the connecting program's name is in `comms`, or its path starts
    with one of `prefixes` (an abstract name written `@name`). Only the first 24 bytes of a
    prefix count, and a comm is matched whole or up to a colon (`tmux: client`)."""
    prefixes: list[str] = field(default_factory=lambda: [
        "/tmp/tmux-", "/run/screen/", "/var/run/screen/", "/run/docker.sock", "/var/run/docker.sock",
        "/run/podman/podman.sock", "/run/user/"])
    comms: list[str] = field(default_factory=lambda: ["ssh", "tmux", "screen"])


def _unix_sockets(raw: Any, where: str) -> UnixSockets:
    if isinstance(raw, UnixSockets):
        return raw
    out = _section("agent.unix_sockets", UnixSockets, raw, where)    # the shared mapping and key checks
    for key in UnixSockets.__dataclass_fields__:
        values = getattr(out, key)
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"{where}: `agent.unix_sockets.{key}` must be a list of non-empty strings")
    for prefix in out.prefixes:
        if not prefix.startswith(("/", "@")):
            raise ConfigError(f"{where}: `agent.unix_sockets.prefixes`: {prefix!r} is neither a path (/...) "
                              "nor an abstract name (@...)")
    for comm in out.comms:
        if len(comm.encode()) > 15:
            raise ConfigError(f"{where}: `agent.unix_sockets.comms`: {comm!r} is longer than a comm can be "
                              "(15 bytes)")
    return out


@dataclass
class ConnectionBudget:
    """How many connection records (connect, accept, uconnect, uaccept) each uid may make
    (agent.connection_budget; docs/agent.md): `per_second` a second, up to `burst` saved for a
    burst. TCP connections over it are counted in the kernel per (process, place, minute) and
    sent as one event each with a count; other records over it are not recorded, and said in a
    loss event naming the uid - so one user's connect storm cannot take the ring buffer from
    everyone's exec records. 0 per_second: unlimited."""
    per_second: int = 2000
    burst: int = 10000


BUDGET_MAX = 1_000_000_000          # capture.c keeps credit in record-nanoseconds, in 63 bits


def _connection_budget(raw: Any, where: str) -> ConnectionBudget:
    if isinstance(raw, ConnectionBudget):
        return raw
    out = _section("agent.connection_budget", ConnectionBudget, raw, where)   # mapping, keys, whole numbers
    for key in sorted(ConnectionBudget.__dataclass_fields__):
        value = getattr(out, key)
        if not 0 <= value <= BUDGET_MAX:
            raise ConfigError(f"{where}: `agent.connection_budget.{key}` must be a whole number from 0 to "
                              f"{BUDGET_MAX:,}, got {value!r}")
    if out.per_second and out.burst < 2:
        raise ConfigError(f"{where}: `agent.connection_budget.burst` must be at least 2 (a unix connection "
                          f"is two records), got {out.burst}; or set per_second to 0 for no budget")
    return out


@dataclass
class AgentConfig:
    host_name: str = ""                 # empty: the hostname (UTS namespace)
    watch: list[str] = field(default_factory=lambda: [
        "/etc", "/usr/local/etc", "/opt/*/conf", "/lib/systemd/system", "/usr/lib/systemd/system",
        "/var/spool/cron"])
    redact_patterns: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    auth_log: str = ""                  # empty: journald, /var/log/auth.log or /var/log/secure
    ringbuf_pages: int = 1024
    flush_interval: str = "1s"
    heartbeat: str = "60s"              # how often a running agent marks that it is alive
    collector: str = ""                 # URL of `whodid serve`; empty: local mode (--db / --out)
    token: str = ""                     # $WHODID_AGENT_TOKEN overrides; or token_file
    token_file: str = ""
    ca_file: str = ""
    spool: str = ""                     # empty: /var/lib/whodid/spool.db as root, else data_dir()/spool.db
    spool_max: str = "1GiB"
    spool_when_full: str = "drop-oldest"
    batch_events: int = 5000
    unix_sockets: UnixSockets = field(default_factory=UnixSockets)
    connection_budget: ConnectionBudget = field(default_factory=ConnectionBudget)
    dns_names: bool = True              # record the name each connect's address was answered for
    # resolvers whose answers name connects, besides those /etc/resolv.conf lists (docs/agent.md)
    dns_resolvers: list[str] = field(default_factory=list)

    def agent_token(self) -> str:
        token = os.environ.get("WHODID_AGENT_TOKEN") or self.token
        if not token and self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read agent.token_file {self.token_file}: {exc.strerror}") from None
        return token

    def spool_path(self) -> str:
        if self.spool:
            return self.spool
        return "/var/lib/whodid/spool.db" if os.geteuid() == 0 else str(data_dir() / "spool.db")


@dataclass
class SlackConfig:
    mode: str = "socket"                # socket | http | off
    bot_token: str = ""                 # $SLACK_BOT_TOKEN overrides
    app_token: str = ""                 # $SLACK_APP_TOKEN overrides (Socket Mode)
    signing_secret: str = ""            # $SLACK_SIGNING_SECRET overrides (HTTP mode)
    listen: str = "0.0.0.0:3000"        # HTTP mode
    path: str = "/slack/events"
    api_base_url: str = "https://slack.com/api/"
    command: str = "/whodid"
    allowed_channels: list[str] = field(default_factory=list)
    allowed_usergroups: list[str] = field(default_factory=list)
    allowed_users: list[str] = field(default_factory=list)
    default_since: str = "24h"
    matches: int = 10

    def secret(self, name: str) -> str:
        """A token from its environment variable, else from this file."""
        return os.environ.get(SLACK_ENV[name]) or getattr(self, name)


@dataclass
class WebConfig:
    listen: str = "127.0.0.1:8471"      # the trace pages' HTTP server; "off": none
    base_url: str = ""                  # how people's browsers reach it; empty: http://LISTEN
    link_ttl: str = "7d"                # how long a trace link works

    @property
    def enabled(self) -> bool:
        return self.listen.strip().lower() != "off"

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"http://{self.listen}"


@dataclass
class NetworkConfig:
    """What the fleet's addresses are called (network.names; docs/agent.md): a name -> the
    addresses and networks it stands for, so `to:eks-prod` finds connections to them when the
    host recorded no name (an address from /etc/hosts, a cached answer older than the agent).
    Checked at load: each entry an IP address or a CIDR network."""
    names: dict = field(default_factory=dict)
    # last and weakest: resolve a name no agent recorded and the config does not give, when asked
    resolve: bool = True

    def networks(self) -> dict[str, list]:
        """name (lowercase) -> its ipaddress networks (an address is a /32 or /128)."""
        return {str(name).lower(): [ipaddress.ip_network(v) for v in values] for name, values in self.names.items()}


def _network_names(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: `network.names` must be a mapping of a name to a list of addresses or "
                          "networks, like `eks-prod: [10.0.5.10, 10.0.5.0/24]`")
    for name, values in raw.items():
        if not isinstance(name, str) or not name or not _NETWORK_NAME.match(name):
            raise ConfigError(f"{where}: `network.names`: {name!r} is not a name; use letters, digits, `-`, `_` "
                              "and dots, like eks-prod or eks.us-east-1.amazonaws.com")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: `network.names.{name}` must be a list of addresses or networks, "
                              "like [10.0.5.10, 10.0.5.0/24]")
        for value in values:
            try:
                ipaddress.ip_network(str(value))
            except ValueError as exc:
                host_bits = "has host bits set" in str(exc)
                hint = (f"; did you mean {ipaddress.ip_network(str(value), strict=False)}?" if host_bits
                        else "; expected an IP address (10.0.5.10) or a CIDR network (10.0.5.0/24)")
                raise ConfigError(f"{where}: `network.names.{name}`: {value!r} is not an address or network"
                                  f"{hint}") from None
        raw[name] = [str(v) for v in values]
    return raw


# a destination's name in network.names: a DNS name or an alias (letters, digits, - _ .), no spaces
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")


@dataclass
class LoggingConfig:
    """How `whodid serve` and `whodid-agent` log (whodid/logs.py); --log-format and --log-level win."""
    format: str = "text"                # text (whodid web: message) | json (one object per line)
    level: str = "info"                 # debug | info | warning | error


SLACK_ENV = {"bot_token": "SLACK_BOT_TOKEN", "app_token": "SLACK_APP_TOKEN", "signing_secret": "SLACK_SIGNING_SECRET"}
SECRET_ENV = frozenset({*SLACK_ENV.values(), "WHODID_AGENT_TOKEN"})


def environ_for_children(environ=None) -> dict[str, str]:
    """The environment for programs whodid runs (canary commands, kubeconfig exec plugins):
    whodid's, without its own secrets - a command's output becomes an alert, and a plugin is
    someone else's binary."""
    return {k: v for k, v in (os.environ if environ is None else environ).items() if k not in SECRET_ENV}


@dataclass
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    slack: SlackConfig = field(default_factory=SlackConfig)
    web: WebConfig = field(default_factory=WebConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    canaries: list = field(default_factory=list)         # bot.canary.checks.Canary, parsed and checked at load
    outputs: dict = field(default_factory=dict)          # name -> bot.outputs.Output: webhooks, syslog
    changes: Rules = field(default_factory=parse_rules)  # change review: patterns, actors, windows, digest
    source: str | None = None           # the file it came from, for messages

    def trace_settings(self) -> Settings:
        settings = self.trace.settings()
        settings.silent_after = parse_duration(self.collector.silent_after)
        return settings

    def store_path(self, override: str | None = None) -> str:
        return (override or os.environ.get("WHODID_DB") or self.store.path
                or str(data_dir() / "whodid.db"))


SECTIONS = {"store": StoreConfig, "trace": TraceConfig, "identity": IdentityConfig, "agent": AgentConfig,
            "collector": CollectorConfig, "slack": SlackConfig, "web": WebConfig, "network": NetworkConfig,
            "logging": LoggingConfig}
PERSON_KEYS = {"ssh_keys", "accounts"}


def _section(name: str, cls, raw: Any, where: str):
    obj, problems = _section_checked(name, cls, raw, where)
    if problems:
        raise problems[0]
    return obj


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80


def _shown(value: Any) -> str:
    """A value as a message shows it: short, whatever its size."""
    return _SHOWN.repr(value)


# string keys that take "off": YAML 1.1 reads the unquoted word as false, which means the same
MAY_BE_OFF = frozenset({"store.retention", "web.listen", "slack.mode"})


def _section_checked(name: str, cls, raw: Any, where: str):
    """(the section, its problems): every key checked, a bad one left at its default, so a
    check can say all of them at once."""
    if raw is None:
        return cls(), []
    if not isinstance(raw, dict):
        return cls(), [ConfigError(f"{where}: `{name}` must be a mapping")]
    known, problems, good = set(cls.__dataclass_fields__), [], {}
    for key, value in raw.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            problems.append(ConfigError(f"{where}: unknown key `{name}.{key}`"
                                        + (f"; did you mean `{name}.{hint[0]}`?" if hint else "")))
            continue
        f = cls.__dataclass_fields__[key]
        # a token of the wrong shape is still a token: said by its type, never echoed
        show = (lambda v: f"a {type(v).__name__} (not shown: it is a secret)") if secret_name(str(key)) else _shown
        default = f.default if f.default is not f.default_factory else None
        kind = str(f.type)              # the annotation, as written: list[str], dict[...], int...
        if kind == "list[str]" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(ConfigError(f"{where}: `{name}.{key}` must be a list of strings, got {show(value)}"))
        elif kind.startswith("dict") and not isinstance(value, dict):
            problems.append(ConfigError(f"{where}: `{name}.{key}` must be a mapping, got {show(value)}"))
        elif isinstance(default, str) and value is False and f"{name}.{key}" in MAY_BE_OFF:
            good[key] = "off"           # YAML 1.1 reads an unquoted `off` as false
        elif isinstance(default, str) and not isinstance(value, str):
            hint = (" (YAML reads an unquoted yes/no/on/off as true/false: put the value in quotes)"
                    if isinstance(value, bool) else "")
            problems.append(ConfigError(f"{where}: `{name}.{key}` must be a string, got {show(value)}{hint}"))
        elif isinstance(default, bool) and not isinstance(value, bool):
            problems.append(ConfigError(f"{where}: `{name}.{key}` must be true or false, got {show(value)}"))
        elif (isinstance(default, int) and not isinstance(default, bool)
              and (isinstance(value, bool) or not isinstance(value, int))):
            problems.append(ConfigError(f"{where}: `{name}.{key}` must be a whole number, got {show(value)}"))
        else:
            good[key] = value
    return cls(**good), problems


def find(path: str | None = None) -> str | None:
    """The config file to read: the given path, else $WHODID_CONFIG, else the first of
    SEARCH_PATH that exists; None: there is none, and the defaults hold."""
    chosen = path or os.environ.get("WHODID_CONFIG")
    if not chosen:
        chosen = next((p for p in (os.path.expanduser(s) for s in SEARCH_PATH) if os.path.exists(p)), None)
    return chosen


MAX_CONFIG = 4 << 20     # a config is a few KB; more is a wrong path (a log, /dev/zero), read no further


def read(path: str) -> tuple[str, int]:
    """(the text, the file's mode) of a config file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_CONFIG + 1)
            if len(text) > MAX_CONFIG:
                raise ConfigError(f"{path} is over {MAX_CONFIG >> 20} MiB, which no config file is; "
                                  "is it the right file?")
            return text, os.fstat(fh.fileno()).st_mode
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (start one with "
                          f"`whodid config example > {path}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None


MAX_VALUES = 100_000     # values in a config with its aliases expanded; the example has a few hundred


def within_bounds(raw: Any, path: str) -> None:
    """Refuse a config whose aliases (&a ... *a) expand it past MAX_VALUES (a "billion laughs"
    file is 9 lists of 9 aliases deep, a few hundred bytes): every check, message and loop
    after this one may then walk or print any value whole. Counting stops at the bound."""
    count, stack = 0, [raw]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{path} holds over {MAX_VALUES:,} values once its aliases (*name) are expanded; "
                              "a config is a few hundred - is an alias repeated inside itself?")
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item


def load(path: str | None = None) -> Config:
    """Load the config: the given path, else $WHODID_CONFIG, else the first of SEARCH_PATH that
    exists, else the defaults."""
    chosen = find(path)
    if not chosen:
        return Config()
    text, mode = read(chosen)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen} is not valid YAML: {exc}") from None
    within_bounds(raw, chosen)
    _refuse_readable_secrets(raw, chosen, mode)
    return from_dict(raw, chosen)


SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"}


def secrets_in(raw: Any) -> list[str]:
    """The keys of a raw config that hold a credential (the agent checks its own token)."""
    found = []
    slack = raw.get("slack") if isinstance(raw, dict) else None
    if isinstance(slack, dict):
        found += [f"slack.{key}" for key in SLACK_ENV if slack.get(key)]
    canaries = raw.get("canaries") if isinstance(raw, dict) else None
    for i, canary in enumerate(canaries if isinstance(canaries, list) else []):
        check = canary.get("check") if isinstance(canary, dict) else None
        if not isinstance(check, dict):
            continue
        name = canary.get("name", i)
        if check.get("token"):
            found.append(f"canaries[{name}].check.token")
        headers = check.get("headers")
        if isinstance(headers, dict) and any(str(h).lower() in SECRET_HEADERS for h in headers):
            found.append(f"canaries[{name}].check.headers")
    return found


def _refuse_readable_secrets(raw: Any, path: str, mode: int) -> None:
    problem = readable_secrets(raw, path, mode)
    if problem:
        raise problem


def readable_secrets(raw: Any, path: str, mode: int) -> ConfigError | None:
    """A config file that holds Slack's tokens or a canary's API token must be its owner's
    alone, as ssh insists of a private key: otherwise any local user can act as the bot."""
    secrets = secrets_in(raw)
    if secrets and mode & 0o077:
        return ConfigError(f"{path} holds secrets ({', '.join(secrets)}) and others can read it "
                           f"(mode {mode & 0o777:04o}): run `chmod 600 {path}`, or give them in the "
                           f"environment ({', '.join(SLACK_ENV.values())}) or a canary's token_file")
    return None


def from_dict(raw: Any, where: str = "config") -> Config:
    """The Config of a raw (parsed YAML) config; ConfigError at its first problem."""
    cfg, problems = collect(raw, where)
    if problems:
        raise problems[0]
    return cfg


def collect(raw: Any, where: str = "config") -> tuple[Config, list[ConfigError]]:
    """(the Config, every problem of a raw config): each section and each rule (RULES) checked
    on its own, so one mistake hides no other (`whodid config check` lists them all). Where a
    part has a problem the Config holds its default, so the rules after it still run."""
    problems: list[ConfigError] = []

    def attempt(check, *args, fallback=None):
        try:
            return check(*args)
        except ConfigError as exc:
            problems.append(exc)
            return fallback

    if not isinstance(raw, dict):
        return Config(source=where), [ConfigError(f"{where}: the top level must be a mapping of sections")]
    for key in raw:
        if key not in SECTIONS and key not in ("canaries", "changes", "outputs"):
            hint = difflib.get_close_matches(str(key), [*SECTIONS, "canaries", "changes", "outputs"], n=1)
            problems.append(ConfigError(f"{where}: unknown section `{key}`"
                                        + (f"; did you mean `{hint[0]}`?" if hint else "")))
    sections = {}
    for name, cls in SECTIONS.items():
        sections[name], found = _section_checked(name, cls, raw.get(name), where)
        problems += found
    bad_canaries = _each_canary(raw.get("canaries"), where)      # each alone, then together (names)
    problems += bad_canaries
    canaries = [] if bad_canaries else attempt(_canaries, raw.get("canaries"), where, fallback=[])
    cfg = Config(**sections, canaries=canaries, source=where,
                 changes=attempt(_changes, raw.get("changes"), where, fallback=parse_rules()),
                 outputs=attempt(_outputs, raw.get("outputs"), where, fallback={}))
    cfg.agent.unix_sockets = attempt(_unix_sockets, cfg.agent.unix_sockets, where, fallback=UnixSockets())
    cfg.agent.connection_budget = attempt(_connection_budget, cfg.agent.connection_budget, where,
                                          fallback=ConnectionBudget())
    cfg.network.names = attempt(_network_names, cfg.network.names, where, fallback={})
    for rule in RULES:
        attempt(rule, cfg, where)
    return cfg, problems


def _canaries(raw: Any, where: str) -> list:
    from whodid.bot.canary.checks import CanaryError, parse_canaries
    try:
        return parse_canaries(raw)
    except CanaryError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _each_canary(raw: Any, where: str) -> list[ConfigError]:
    """The problems of each canary, checked alone (then together: two of one name)."""
    problems = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        try:
            _canaries([item], where)
        except ConfigError as exc:
            problems.append(ConfigError(str(exc).replace("canaries[0]", f"canaries[{i}]")))
    return problems


def _changes(raw: Any, where: str) -> Rules:
    try:
        return parse_rules(raw)
    except RulesError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _outputs(raw: Any, where: str) -> dict:
    from whodid.bot.outputs import OutputError, parse_outputs
    try:                                   # alerts and the digest beyond Slack, named where they go
        return parse_outputs(raw)
    except OutputError as exc:
        raise ConfigError(f"{where}: {exc}") from None


RULES: list = []        # the checks across a loaded Config's keys, run in this order, each on its own


def rule(check):
    RULES.append(check)
    return check


@rule
def _output_names(cfg: Config, where: str) -> None:
    """Every output a canary or the digest names is defined in `outputs`."""
    from whodid.bot.outputs import OutputError, check_names
    try:
        for c in cfg.canaries:
            check_names(c.outputs, cfg.outputs, f"canary {c.name}")
        if cfg.changes.digest:
            check_names(cfg.changes.digest.outputs, cfg.outputs, "changes.digest")
    except OutputError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@rule
def _people(cfg: Config, where: str) -> None:
    for name, person in cfg.identity.people.items():
        if not isinstance(person, dict) or set(person) - PERSON_KEYS:
            raise ConfigError(f"{where}: `identity.people.{name}` takes only {sorted(PERSON_KEYS)}")
        for key, values in person.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{where}: `identity.people.{name}.{key}` must be a list of strings")


@rule
def _agent_lists(cfg: Config, where: str) -> None:
    for key in ("watch", "redact_patterns", "exclude"):
        values = getattr(cfg.agent, key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: `agent.{key}` must be a list of strings")
    for addr in cfg.agent.dns_resolvers:
        try:
            ipaddress.ip_address(str(addr))
        except ValueError:
            raise ConfigError(f"{where}: `agent.dns_resolvers`: {addr!r} is not an IP address; list the DNS "
                              "servers whose answers may name connects, like [10.0.0.2]") from None
    for pattern in cfg.agent.redact_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: `agent.redact_patterns`: {pattern!r} is not a regex ({exc})") from None


@rule
def _ringbuf(cfg: Config, where: str) -> None:
    ring = cfg.agent.ringbuf_pages
    if ring < 1 or ring & (ring - 1):
        raise ConfigError(f"{where}: `agent.ringbuf_pages` must be a power of 2, got {ring}")


# every duration key; those in POSITIVE must also be longer than 0s
DURATIONS = ("trace.default_since", "trace.gap_threshold", "trace.hop_window", "trace.clock_skew",
             "trace.inject_window", "trace.mux_rtt", "trace.mux_skew", "agent.flush_interval", "agent.heartbeat",
             "collector.silent_after", "collector.header_timeout", "collector.body_timeout",
             "collector.idle_timeout", "store.prune_every", "store.retention", "slack.default_since",
             "web.link_ttl")
POSITIVE = ("agent.heartbeat", "collector.header_timeout", "collector.body_timeout", "collector.idle_timeout")


def _value(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _duration_rule(key: str):
    def check(cfg: Config, where: str) -> None:
        try:
            seconds = (maybe_duration if key == "store.retention" else parse_duration)(_value(cfg, key))
        except TimeError as exc:
            raise ConfigError(f"{where}: `{key}`: {exc}") from None
        if key in POSITIVE and seconds <= 0:
            raise ConfigError(f"{where}: `{key}` must be longer than 0s")
    check.__name__ = f"_duration_{key}"
    return check


for _key in DURATIONS:
    rule(_duration_rule(_key))


@rule
def _sizes(cfg: Config, where: str) -> None:
    for key in ("collector.max_body", "collector.max_batch", "agent.spool_max"):
        try:
            parse_size(_value(cfg, key))
        except ConfigError as exc:
            raise ConfigError(f"{where}: `{key}`: {exc}") from None


@rule
def _listen(cfg: Config, where: str) -> None:
    try:
        cfg.collector.address()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@rule
def _collector(cfg: Config, where: str) -> None:
    if cfg.collector.max_connections < 1:
        raise ConfigError(f"{where}: `collector.max_connections` must be at least 1, got {cfg.collector.max_connections}")
    if bool(cfg.collector.tls_cert) != bool(cfg.collector.tls_key):
        raise ConfigError(f"{where}: TLS needs both `collector.tls_cert` and `collector.tls_key`")


@rule
def _agent(cfg: Config, where: str) -> None:
    if cfg.agent.spool_when_full not in ("drop-oldest", "drop-newest"):
        raise ConfigError(f"{where}: `agent.spool_when_full` is drop-oldest or drop-newest, "
                          f"got {cfg.agent.spool_when_full!r}")
    if cfg.agent.collector and not cfg.agent.collector.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `agent.collector` is a URL like https://collector:8470, "
                          f"got {cfg.agent.collector!r}")


@rule
def _slack(cfg: Config, where: str) -> None:
    sl = cfg.slack
    if sl.mode not in ("socket", "http", "off"):
        raise ConfigError(f"{where}: `slack.mode` is socket, http or off, got {sl.mode!r}")
    for key in ("allowed_channels", "allowed_usergroups", "allowed_users"):
        values = getattr(sl, key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: `slack.{key}` must be a list of strings")
    if not sl.command.startswith("/"):
        raise ConfigError(f"{where}: `slack.command` starts with /, like /whodid")
    if not sl.path.startswith("/"):
        raise ConfigError(f"{where}: `slack.path` is a URL path, like /slack/events")
    if not sl.api_base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `slack.api_base_url` is a URL, like https://slack.com/api/")
    try:
        CollectorConfig(listen=sl.listen).address()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).replace('collector.listen', 'slack.listen')}") from None


@rule
def _web(cfg: Config, where: str) -> None:
    if cfg.web.enabled:
        try:
            CollectorConfig(listen=cfg.web.listen).address()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).replace('collector.listen', 'web.listen')} (or off)") from None
    if cfg.web.base_url and not cfg.web.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `web.base_url` is a URL, like https://whodid.example.com")


@rule
def _logging(cfg: Config, where: str) -> None:
    from whodid.logs import check as check_logging
    problem = check_logging(cfg.logging.level, cfg.logging.format)
    if problem:
        raise ConfigError(f"{where}: `logging`: {problem}")
