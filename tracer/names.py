"""The addresses a destination's name stands for, when a person asks by name
(`to:eks.us-east-1.amazonaws.com`, `to:eks-prod:443`, `to:*.amazonaws.com`).

Three sources, strongest first, each said with what it found (docs/agent.md):

1. **seen at connect** - the addresses the hosts' agents recorded with the name, from the DNS
   answers the host received before connecting (conns.rname). What the host really used. The
   query also matches those rows by their rname directly, so a connection is found even when
   its address has since moved to another name.
2. **config network.names** - the addresses and networks the fleet's config gives the name:
   for hosts whose agents recorded no name (/etc/hosts, a container's own network namespace,
   an answer cached before the agent started) and for aliases (`eks-prod`).
3. **resolved now** - the name resolved at question time, only when neither source above knows
   it. Weaker: cloud endpoints change addresses, so an address resolved now may not be what the
   host saw then, and a shared front end (a CDN) may match connections to other names.

Pure apart from the resolver, which is passed in (socket.getaddrinfo by default), and the
recorded addresses, which come from the store through a callable.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Callable, Iterable

SEEN = "seen at connect"
CONFIG = "config network.names"
RESOLVED = "resolved now"
WEAKER = frozenset({RESOLVED})          # sources a person is told to weigh with care

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# a name as a person may ask for one: a host name or alias, optionally `*.` first (any subdomain)
_PATTERN = re.compile(r"(\*\.)?[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")


class DestinationNameError(ValueError):
    """Not a name whodid can look up."""


def normalise(name: str) -> str:
    """A destination's name as stored and compared: lowercase, no trailing dot. Raises
    DestinationNameError (one line for people) for anything that is not a host name or a `*.` pattern."""
    text = name.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    if len(text) > 253 or not _PATTERN.fullmatch(text):
        raise DestinationNameError(f"{name!r} is not a host name: expected labels of letters, digits, - and _ "
                                   "joined by dots, optionally starting with *. (like *.amazonaws.com)")
    return text


def is_pattern(name: str) -> bool:
    return name.startswith("*.")


def matches(pattern: str, rname: str | None) -> bool:
    """Whether a recorded name is the one asked for: equal ignoring case, or for `*.example.com`
    any name below example.com, at any depth (not example.com itself). In SQL, over conns.rname
    (stored lowercase, holding no GLOB character but the pattern's `*`): `rname GLOB pattern`."""
    if not rname:
        return False
    rname = rname.lower()
    if is_pattern(pattern):
        return rname.endswith(pattern[1:])
    return rname == pattern


def addresses_for(name: str, recorded: Callable[[str], Iterable[str]], config_names: dict,
                  resolver: Callable = socket.getaddrinfo) -> list[tuple[Network, str]]:
    """The networks `name` stands for, each with its source (SEEN, CONFIG or RESOLVED), strongest
    first, each network once. `recorded(name)` gives the addresses stored with that name (the
    name normalised; a `*.` pattern passed as it is); `config_names` is network.names (name ->
    addresses or CIDRs, as strings or ipaddress networks). Resolution happens only when the two
    others know nothing, and never for a pattern; a name that does not resolve, or is not a host
    name at all (`a..b`; normalise() says why to those who ask), gives nothing.

    The tracer takes it with the sources bound: functools.partial(addresses_for, recorded=...,
    config_names=cfg.network.names)."""
    try:
        name = normalise(name)
    except DestinationNameError:
        return []
    found: list[tuple[Network, str]] = []
    have: set[Network] = set()

    def add(value, source: str) -> None:
        try:
            net = value if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
                else ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            return                       # a stored value that is not an address names nothing
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128 and net.network_address.ipv4_mapped:
            net = ipaddress.ip_network(net.network_address.ipv4_mapped)
        if net not in have:
            have.add(net)
            found.append((net, source))

    for addr in recorded(name):
        add(addr, SEEN)
    for key, values in (config_names or {}).items():
        key = str(key).lower().rstrip(".")
        if key == name or is_pattern(name) and matches(name, key):
            for value in ([values] if isinstance(values, str) else values):
                add(value, CONFIG)
    if found or is_pattern(name):
        return found
    try:
        answers = resolver(name, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return found
    for _family, _type, _proto, _canon, sockaddr in answers:
        add(sockaddr[0].split("%")[0], RESOLVED)          # a scoped IPv6 address loses its zone
    return found
