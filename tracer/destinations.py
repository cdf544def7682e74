"""Destination specs: what `to:`, `from:` (and `--to`, `--from`) name - `ADDR[:PORT]`.

ADDR is an IP address (`10.0.5.10`, `::1`), a network in CIDR form (`10.0.5.0/24`), or a name
as a host saw it when it connected (`eks.us-east-1.amazonaws.com`, `*.amazonaws.com`: a glob).
An IPv6 address with a port is written in brackets, as in a URL (`[::1]:443`); without
brackets every colon belongs to the address. Parsing is pure and its errors are one line for
people: the text came from someone typing a question.

A Destination does not resolve names: the store matches a name against the name recorded
with each connection (`conns.rname`), and the tracer may add addresses for it from an
injected `addresses_for` (trace.Tracer).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_SPEC = 300
# a DNS name, or a glob of one: labels of letters, digits, `-` and `_` (SRV names, some
# internal zones), with `*` and `?` for globs
_NAME = re.compile(r"^[a-z0-9_*?](?:[a-z0-9_*?.-]{0,252})$")


class DestinationError(ValueError):
    """A destination spec that is not ADDR[:PORT]; the message is for people."""


@dataclass(frozen=True)
class Destination:
    text: str                               # as given (trimmed): what a link pins, what an answer repeats
    networks: tuple[Network, ...] = ()      # an address is a /32 (/128) network
    names: tuple[str, ...] = ()             # lowercase; may hold globs
    port: int | None = None

    def has_address(self, addr: str) -> bool:
        """Is addr (an IP string) one of this destination's networks?"""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def has_name(self, name: str | None) -> bool:
        """Does a recorded name (any case) fit one of this destination's names or globs?"""
        if not name:
            return False
        name = name.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.names)

    @property
    def exact_addresses(self) -> list[str]:
        """The single addresses among the networks (an index finds them)."""
        return [str(n.network_address) for n in self.networks if n.num_addresses == 1]

    @property
    def wide_networks(self) -> list[str]:
        """The networks of more than one address (tested one by one)."""
        return [str(n) for n in self.networks if n.num_addresses > 1]


def parse_destination(spec: str) -> Destination:
    """`ADDR[:PORT]` -> Destination, or DestinationError saying what is wrong and how to write it."""
    if not isinstance(spec, str):
        raise DestinationError(f"a destination is text such as 10.0.5.10:6443, not {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise DestinationError("empty destination; give ADDR[:PORT], e.g. 10.0.5.10:6443, 10.0.5.0/24 or "
                               "eks.us-east-1.amazonaws.com:443")
    if len(text) > MAX_SPEC:
        raise DestinationError(f"destination longer than {MAX_SPEC} characters; give ADDR[:PORT]")
    addr, port = _split_port(text)
    if not addr and port is not None:
        raise DestinationError(f"{text!r} has a port but no address; give ADDR:PORT (for any address, use 0.0.0.0/0:PORT)")
    if not addr:
        raise DestinationError(f"{text!r} has no address; give ADDR[:PORT], e.g. 10.0.5.10:6443")
    network = _network(addr, text)
    if network is not None:
        return Destination(text=text, networks=(network,), port=port)
    if text.startswith("["):
        raise DestinationError(f"{text!r}: brackets hold an IPv6 address ([2001:db8::1]:443); write a name "
                               "without them (eks.example.com:443)")
    name = addr.lower().rstrip(".")
    if not _NAME.match(name) or ".." in name:
        raise DestinationError(f"{addr!r} is not an IP address, a CIDR network or a host name; give ADDR[:PORT], "
                               "e.g. 10.0.5.10:6443, [2001:db8::1]:443, 10.0.5.0/24 or *.amazonaws.com:443")
    return Destination(text=text, names=(name,), port=port)


def endpoint(addr: str, port: int | None) -> str:
    """10.0.5.10:6443, [2001:db8::1]:443 (brackets as in a URL), or the address alone: how an
    address and port are written, here as parse_destination reads them."""
    shown = f"[{addr}]" if ":" in addr and port is not None else addr
    return shown if port is None else f"{shown}:{port}"


def _split_port(text: str) -> tuple[str, int | None]:
    """(address part, port or None). `[v6]:port` and `[v6]`; a bare v6 address has no port."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise DestinationError(f"{text!r} opens a bracket it does not close; write an IPv6 address with a "
                                   "port as [2001:db8::1]:443")
        inner, rest = text[1:close], text[close + 1:]
        if not inner:
            raise DestinationError(f"{text!r} has nothing between its brackets; write [2001:db8::1]:443")
        if rest == "":
            return inner, None
        if not rest.startswith(":"):
            raise DestinationError(f"{text!r}: after ] comes :PORT (as in [2001:db8::1]:443), not {rest!r}")
        return inner, _port(rest[1:], text)
    if text.count(":") > 1:                     # IPv6 without brackets: no port
        return text, None
    if ":" in text:
        addr, _, port = text.partition(":")
        return addr, _port(port, text)
    return text, None


def _port(text: str, spec: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise DestinationError(f"{spec!r}: the port {text!r} is not a number; give a port from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise DestinationError(f"{spec!r}: port {port} is out of range; give a port from 1 to 65535")
    return port


def _network(addr: str, spec: str) -> Network | None:
    """The address or CIDR network addr names, None when it is not one (a name), an error when
    it looks like one but is malformed (`10.0.5.300`, `10.0.5.0/33`)."""
    looks_ip = bool(re.fullmatch(r"[0-9.]+(/\d+)?", addr)) or (":" in addr)
    try:
        net = ipaddress.ip_network(addr, strict=False)
    except ValueError as exc:
        if looks_ip or "/" in addr:
            raise DestinationError(f"{spec!r}: {addr!r} is not a valid address or CIDR network ({exc})") from None
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped and net.prefixlen == 128:
        # connections are stored with IPv4-mapped addresses as plain IPv4 (tracer/events.py)
        return ipaddress.ip_network(str(net.network_address.ipv4_mapped))
    return net
