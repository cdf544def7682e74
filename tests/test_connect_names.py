"""A connect's name (`rname`) from the event to the store, network.names in the config, and the
addresses a name stands for at question time (tracer/names.py)."""

import socket
import sqlite3

import pytest

from whodid import config
from whodid.config import ConfigError, from_dict
from whodid.tracer import Store, ingest, migrations, parse_event
from whodid.tracer.names import CONFIG, RESOLVED, SEEN, DestinationNameError, addresses_for, matches, normalise

from kit import Host

H = Host("web-01", "10.0.0.5")


def connect(rname=None, ts=10.0, lport=40000, raddr="203.0.113.10"):
    ev = H.connect(ts, 20, raddr, 443, lport)
    if rname is not None:
        ev["rname"] = rname
    return ev


# --- the schema -------------------------------------------------------------------------------------

def test_rname_is_kept_lowercase_without_its_trailing_dot():
    assert parse_event(connect("EKS.us-east-1.AmazonAWS.com."))["rname"] == "eks.us-east-1.amazonaws.com"
    assert parse_event(connect("_ldap._tcp.corp.example"))["rname"] == "_ldap._tcp.corp.example"


@pytest.mark.parametrize("bad", ["a b.example.com", "evil.example.com\n", "\x1b[31mred", "<!channel>",
                                 "a..b", ".", "", "x" * 64 + ".com", ("a" * 60 + ".") * 5, "bücher.de",
                                 "10.0.0.1:443", 443, ["a.com"], {"n": 1}, True, "a\u202eb.com"])
def test_a_bad_rname_is_dropped_and_the_connection_kept(bad):
    ev = parse_event(connect(bad))
    assert "rname" not in ev
    assert (ev["raddr"], ev["rport"]) == ("203.0.113.10", 443)


# --- the store ---------------------------------------------------------------------------------------

def rnames(store):
    return store.db.execute("SELECT lport, rname FROM conns ORDER BY lport").fetchall()


def test_the_store_keeps_a_connects_name_and_a_resend_with_the_name_fills_it_in():
    store = Store.open(":memory:", create=True)
    report = ingest(store, [H.fork(9, 20, 1), connect("api.example.com", lport=40000), connect(lport=40001),
                            connect("bad name", lport=40002)])
    assert report.rejected == 0
    assert rnames(store) == [(40000, "api.example.com"), (40001, None), (40002, None)]
    # the same facts again, now with names: stored once, the missing name filled in, none replaced
    ingest(store, [connect("api.example.com", lport=40000), connect("other.example.com", lport=40001),
                   connect("api.example.com", lport=40002)])
    ingest(store, [connect("changed.example.com", lport=40000)])
    assert rnames(store) == [(40000, "api.example.com"), (40001, "other.example.com"), (40002, "api.example.com")]


def test_a_version_11_store_gains_the_column_and_keeps_its_connections(tmp_path):
    from whodid.tracer.store import _split_sql
    path = tmp_path / "v11.db"
    conn = sqlite3.connect(path)
    for number, sql in migrations.STEPS:
        if number <= 11:
            for statement in _split_sql(sql):
                conn.execute(statement)
    conn.execute("INSERT INTO hosts (id, name) VALUES (1, 'web')")
    conn.execute("INSERT INTO boots (id, host, boot) VALUES (1, 1, 'b')")
    conn.execute("INSERT INTO procs (id, boot, pid, start) VALUES (1, 1, 10, 10)")
    conn.execute("INSERT INTO conns VALUES (1, 5.0, 'connect', '10.0.0.5', 40000, '10.0.5.10', 443)")
    conn.execute("PRAGMA user_version = 11")
    conn.commit()
    conn.close()
    store = Store.open(path)
    assert store.db.execute("SELECT raddr, rport, rname FROM conns").fetchall() == [("10.0.5.10", 443, None)]
    indexes = {row[1] for row in store.db.execute("PRAGMA index_list(conns)")}
    assert {"conns_rname", "conns_remote"} <= indexes
    plan = " ".join(str(r) for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT proc FROM conns WHERE rname = 'api.example.com'"))
    assert "conns_rname" in plan


# --- config: network.names ---------------------------------------------------------------------------

def test_network_names_are_read_as_networks():
    cfg = from_dict({"network": {"names": {"EKS-prod": ["10.0.5.10", "10.0.5.0/24", "fd00:7::/64"],
                                           "billing": "10.0.7.1"}}})
    nets = cfg.network.networks()
    assert [str(n) for n in nets["eks-prod"]] == ["10.0.5.10/32", "10.0.5.0/24", "fd00:7::/64"]
    assert [str(n) for n in nets["billing"]] == ["10.0.7.1/32"]
    assert config.Config().network.names == {}


@pytest.mark.parametrize("names, words", [
    ({"eks-prod": ["10.0.5.300"]}, "`network.names.eks-prod`: '10.0.5.300' is not an address or network; expected"),
    ({"eks-prod": ["10.0.5.1/24"]}, "'10.0.5.1/24' is not an address or network; did you mean 10.0.5.0/24?"),
    ({"eks-prod": []}, "`network.names.eks-prod` must be a list of addresses or networks"),
    ({"eks-prod": {"a": 1}}, "`network.names.eks-prod` must be a list"),
    ({"eks prod": ["10.0.5.10"]}, "'eks prod' is not a name"),
    ({"<!channel>": ["10.0.5.10"]}, "'<!channel>' is not a name"),
    (["eks-prod"], "`network.names` must be a mapping"),
])
def test_a_bad_network_name_entry_is_named_in_the_error(names, words):
    with pytest.raises(ConfigError) as info:
        from_dict({"network": {"names": names}}, "test.yaml")
    assert words in str(info.value)
    assert str(info.value).startswith("test.yaml: ")


def test_agent_dns_names_is_a_switch():
    assert from_dict({"agent": {"dns_names": False}}).agent.dns_names is False
    with pytest.raises(ConfigError, match="`agent.dns_names` must be true or false"):
        from_dict({"agent": {"dns_names": "no"}})


# --- tracer/names.py ------------------------------------------------------------------------------

def never(*_args):
    raise AssertionError("resolved although a better source knew the name")


def test_recorded_then_config_strongest_first_and_no_resolution_when_they_know():
    found = addresses_for("EKS.us-east-1.amazonaws.com", lambda n: ["203.0.113.10", "::ffff:203.0.113.11"],
                          {"eks.us-east-1.amazonaws.com": ["203.0.113.10", "10.0.5.0/24"]}, resolver=never)
    assert [(str(n), s) for n, s in found] == [("203.0.113.10/32", SEEN), ("203.0.113.11/32", SEEN),
                                               ("10.0.5.0/24", CONFIG)]


def test_an_alias_comes_from_the_config_only():
    asked = []
    found = addresses_for("eks-prod", lambda n: asked.append(n) or [], {"eks-prod": ["10.0.5.10", "10.0.5.11"]},
                          resolver=never)
    assert asked == ["eks-prod"]
    assert [(str(n), s) for n, s in found] == [("10.0.5.10/32", CONFIG), ("10.0.5.11/32", CONFIG)]


def test_a_name_nothing_recorded_is_resolved_now_and_marked_weaker():
    def resolver(name, port, family, type_):
        assert (name, type_) == ("api.example.com", socket.SOCK_STREAM)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::7%eth0", 0, 0, 2))]
    found = addresses_for("api.example.com", lambda n: [], {}, resolver=resolver)
    assert [(str(n), s) for n, s in found] == [("192.0.2.7/32", RESOLVED), ("fe80::7/128", RESOLVED)]


def test_a_name_that_does_not_resolve_gives_nothing():
    def resolver(*_args):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert addresses_for("gone.example.com", lambda n: [], {}, resolver=resolver) == []


def test_a_pattern_matches_names_below_it_and_is_never_resolved():
    found = addresses_for("*.amazonaws.com", lambda n: ["203.0.113.10"],
                          {"eks.us-east-1.amazonaws.com": ["10.0.5.10"], "amazonaws.com": ["10.9.9.9"],
                           "example.com": ["10.8.8.8"]}, resolver=never)
    assert [(str(n), s) for n, s in found] == [("203.0.113.10/32", SEEN), ("10.0.5.10/32", CONFIG)]
    assert matches("*.amazonaws.com", "EKS.us-east-1.amazonaws.com")
    assert not matches("*.amazonaws.com", "amazonaws.com")
    assert not matches("*.amazonaws.com", "evilamazonaws.com")
    assert matches("api.example.com", "API.example.com") and not matches("api.example.com", None)


@pytest.mark.parametrize("bad", ["a b", "*", "**.com", "a.*.com", "<x>", "", "x" * 254])
def test_a_name_that_is_not_one_is_said_so(bad):
    with pytest.raises(DestinationNameError, match="is not a host name"):
        normalise(bad)


def test_a_name_that_is_not_one_stands_for_nothing_when_the_tracer_asks():
    from functools import partial
    lookup = partial(addresses_for, recorded=lambda n: ["10.0.5.10"], config_names={}, resolver=never)
    assert lookup("a..b") == []
    assert [(str(n), s) for n, s in lookup("eks.example.com")] == [("10.0.5.10/32", SEEN)]
