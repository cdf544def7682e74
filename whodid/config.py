"""The one configuration object, loaded from one YAML file (plus environment for secrets).

Every key is documented in config.example.yaml; tests/test_config.py loads that file, so
an undocumented or misspelt key cannot slip in on either side.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from whodid.tracer.changes import Rules, RulesError, parse_rules
from whodid.tracer.identity import DEFAULT_SHARED, Identity, Person
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
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: `{name}` must be a mapping")
    known = set(cls.__dataclass_fields__)
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"{where}: unknown key `{name}.{key}`"
                              + (f"; did you mean `{name}.{hint[0]}`?" if hint else ""))
    obj = cls(**raw)
    for key, f in cls.__dataclass_fields__.items():
        value = getattr(obj, key)
        default = f.default if f.default is not f.default_factory else None
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}: `{name}.{key}` must be a string, got {value!r}")
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: `{name}.{key}` must be true or false, got {value!r}")
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}: `{name}.{key}` must be a whole number, got {value!r}")
    return obj


def load(path: str | None = None) -> Config:
    """Load the config: the given path, else $WHODID_CONFIG, else the first of SEARCH_PATH that
    exists, else the defaults."""
    chosen = path or os.environ.get("WHODID_CONFIG")
    if not chosen:
        chosen = next((p for p in (os.path.expanduser(s) for s in SEARCH_PATH) if os.path.exists(p)), None)
        if not chosen:
            return Config()
    try:
        with open(chosen, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {chosen} does not exist (copy config.example.yaml to start one)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {chosen}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen} is not valid YAML: {exc}") from None
    _refuse_readable_secrets(raw, chosen, mode)
    return from_dict(raw, chosen)


SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"}


def _secrets_in(raw: Any) -> list[str]:
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
    """A config file that holds Slack's tokens or a canary's API token must be its owner's
    alone, as ssh insists of a private key: otherwise any local user can act as the bot."""
    secrets = _secrets_in(raw)
    if secrets and mode & 0o077:
        raise ConfigError(f"{path} holds secrets ({', '.join(secrets)}) and others can read it "
                          f"(mode {mode & 0o777:04o}): run `chmod 600 {path}`, or give them in the "
                          f"environment ({', '.join(SLACK_ENV.values())}) or a canary's token_file")


def from_dict(raw: Any, where: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    for key in raw:
        if key not in SECTIONS and key not in ("canaries", "changes"):
            hint = difflib.get_close_matches(str(key), [*SECTIONS, "canaries", "changes"], n=1)
            raise ConfigError(f"{where}: unknown section `{key}`" + (f"; did you mean `{hint[0]}`?" if hint else ""))
    from whodid.bot.canary.checks import CanaryError, parse_canaries
    try:
        canaries = parse_canaries(raw.get("canaries"))
    except CanaryError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        changes = parse_rules(raw.get("changes"))
    except RulesError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    cfg = Config(**{name: _section(name, cls, raw.get(name), where) for name, cls in SECTIONS.items()},
                 canaries=canaries, changes=changes, source=where)
    for name, person in cfg.identity.people.items():
        if not isinstance(person, dict) or set(person) - PERSON_KEYS:
            raise ConfigError(f"{where}: `identity.people.{name}` takes only {sorted(PERSON_KEYS)}")
        for key, values in person.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{where}: `identity.people.{name}.{key}` must be a list of strings")
    cfg.agent.unix_sockets = _unix_sockets(cfg.agent.unix_sockets, where)
    cfg.agent.connection_budget = _connection_budget(cfg.agent.connection_budget, where)
    cfg.network.names = _network_names(cfg.network.names, where)
    for key in ("watch", "redact_patterns", "exclude"):
        values = getattr(cfg.agent, key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: `agent.{key}` must be a list of strings")
    for pattern in cfg.agent.redact_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: `agent.redact_patterns`: {pattern!r} is not a regex ({exc})") from None
    ring = cfg.agent.ringbuf_pages
    if ring < 1 or ring & (ring - 1):
        raise ConfigError(f"{where}: `agent.ringbuf_pages` must be a power of 2, got {ring}")
    try:
        cfg.trace.settings()
        parse_duration(cfg.trace.default_since)
        parse_duration(cfg.agent.flush_interval)
        if parse_duration(cfg.agent.heartbeat) <= 0:
            raise TimeError("`agent.heartbeat` must be longer than 0s")
        parse_duration(cfg.collector.silent_after)
        for key in ("header_timeout", "body_timeout", "idle_timeout"):
            if parse_duration(getattr(cfg.collector, key)) <= 0:
                raise TimeError(f"`collector.{key}` must be longer than 0s")
        parse_duration(cfg.store.prune_every)
        cfg.store.retention_seconds
    except TimeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        for key in ("max_body", "max_batch"):
            parse_size(getattr(cfg.collector, key))
        parse_size(cfg.agent.spool_max)
        cfg.collector.address()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if cfg.collector.max_connections < 1:
        raise ConfigError(f"{where}: `collector.max_connections` must be at least 1, got {cfg.collector.max_connections}")
    if cfg.agent.spool_when_full not in ("drop-oldest", "drop-newest"):
        raise ConfigError(f"{where}: `agent.spool_when_full` is drop-oldest or drop-newest, "
                          f"got {cfg.agent.spool_when_full!r}")
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
        parse_duration(sl.default_since)
        CollectorConfig(listen=sl.listen).address()
    except TimeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).replace('collector.listen', 'slack.listen')}") from None
    if cfg.web.enabled:
        try:
            CollectorConfig(listen=cfg.web.listen).address()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).replace('collector.listen', 'web.listen')} (or off)") from None
    if cfg.web.base_url and not cfg.web.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `web.base_url` is a URL, like https://whodid.example.com")
    try:
        parse_duration(cfg.web.link_ttl)
    except TimeError as exc:
        raise ConfigError(f"{where}: `web.link_ttl`: {exc}") from None
    from whodid.logs import check as check_logging
    problem = check_logging(cfg.logging.level, cfg.logging.format)
    if problem:
        raise ConfigError(f"{where}: `logging`: {problem}")
    if bool(cfg.collector.tls_cert) != bool(cfg.collector.tls_key):
        raise ConfigError(f"{where}: TLS needs both `collector.tls_cert` and `collector.tls_key`")
    if cfg.agent.collector and not cfg.agent.collector.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `agent.collector` is a URL like https://collector:8470, "
                          f"got {cfg.agent.collector!r}")
    return cfg
