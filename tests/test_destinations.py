"""Destination specs (`to:`, `from:`): ADDR[:PORT], parsed purely, errors in one line for people."""

import ipaddress

import pytest

from whodid.tracer.destinations import MAX_SPEC, DestinationError, parse_destination


def net(text):
    return ipaddress.ip_network(text)


@pytest.mark.parametrize("spec, networks, names, port", [
    ("10.0.5.10", [net("10.0.5.10/32")], [], None),
    ("10.0.5.10:6443", [net("10.0.5.10/32")], [], 6443),
    (" 10.0.5.10:6443 ", [net("10.0.5.10/32")], [], 6443),
    ("10.0.5.0/24:6443", [net("10.0.5.0/24")], [], 6443),
    ("10.0.5.7/24", [net("10.0.5.0/24")], [], None),            # host bits: the network they belong to
    ("::1", [net("::1/128")], [], None),                          # bare v6: every colon is the address's
    ("2001:db8::1", [net("2001:db8::1/128")], [], None),
    ("[::1]:443", [net("::1/128")], [], 443),
    ("[2001:db8::]", [net("2001:db8::/128")], [], None),
    ("[2001:db8::/32]:80", [net("2001:db8::/32")], [], 80),
    ("::ffff:10.0.0.1", [net("10.0.0.1/32")], [], None),          # stored as plain IPv4 (events.py)
    ("eks.us-east-1.amazonaws.com:443", [], ["eks.us-east-1.amazonaws.com"], 443),
    ("EKS-Prod", [], ["eks-prod"], None),                         # names are lowercase
    ("api.example.org.", [], ["api.example.org"], None),          # the root's dot is no part of it
    ("*.amazonaws.com", [], ["*.amazonaws.com"], None),
    ("eks-?.internal:6443", [], ["eks-?.internal"], 6443),
])
def test_parses(spec, networks, names, port):
    d = parse_destination(spec)
    assert (list(d.networks), list(d.names), d.port, d.text) == (networks, names, port, spec.strip())


@pytest.mark.parametrize("spec, says", [
    ("", "empty destination"),
    ("   ", "empty destination"),
    (":443", "has a port but no address"),
    ("10.0.5.10:", "the port '' is not a number"),
    ("10.0.5.10:https", "the port 'https' is not a number"),
    ("10.0.5.10:0", "port 0 is out of range"),
    ("10.0.5.10:65536", "port 65536 is out of range"),
    ("10.0.5.10:٣", "is not a number"),                        # a digit, but not an ASCII one
    ("10.0.5.300", "not a valid address or CIDR network"),
    ("10.0.5.0/33", "not a valid address or CIDR network"),
    ("[::1", "opens a bracket it does not close"),
    ("[::1]443", "after ] comes :PORT"),
    ("[]:443", "nothing between its brackets"),
    ("[eks]:443", "brackets hold an IPv6 address"),
    ("a b", "not an IP address, a CIDR network or a host name"),
    ("x;drop table conns", "not an IP address, a CIDR network or a host name"),
    ("[a-z].example", "after ] comes :PORT"),                  # SQL GLOB's classes: never a name
    ("a[b]c.example", "not an IP address, a CIDR network or a host name"),
    ("a..b", "not an IP address, a CIDR network or a host name"),
    ("x" * (MAX_SPEC + 1), f"longer than {MAX_SPEC} characters"),
])
def test_refuses_with_one_line_that_says_how(spec, says):
    with pytest.raises(DestinationError) as exc:
        parse_destination(spec)
    message = str(exc.value)
    assert says in message and "\n" not in message


def test_not_text_is_refused():
    with pytest.raises(DestinationError, match="not int"):
        parse_destination(443)


def test_membership():
    d = parse_destination("10.0.5.0/24")
    assert d.has_address("10.0.5.200") and not d.has_address("10.0.6.1") and not d.has_address("nonsense")
    assert (d.exact_addresses, d.wide_networks) == ([], ["10.0.5.0/24"])
    g = parse_destination("*.amazonaws.com")
    assert g.has_name("EKS.us-east-1.AmazonAWS.com.") and not g.has_name("amazonaws.com.evil") and not g.has_name(None)
    assert parse_destination("10.0.5.10").exact_addresses == ["10.0.5.10"]
