"""The trace engine on small stores, one scenario per test."""

import json
import math
import random
import time

from whodid.tracer import Identity, Person, Query, Tracer
from whodid.tracer.trace import further_back
from whodid.bot import query as grammar
from whodid.tracer.render import render_text, traces_json

from kit import T0, Host, ssh_session, store_with

JUMP = Host("jump-box", "10.0.0.10")
CONFIG = Host("config-server", "10.0.1.20")
JIM_FP, BOB_FP = "SHA256:jim", "SHA256:bob"
IDENT = Identity(people=(Person("jim", ssh_keys=(JIM_FP,)), Person("bob", ssh_keys=(BOB_FP,))))


def shared_account_story():
    """jim and bob both on the jump box, both ssh to config-server as ec2-user within a
    second of each other, both sudo to root; jim deletes the cluster, bob lists it.
    bob's connect is the one nearest in time to jim's server-side login: only the
    4-tuple tells them apart."""
    ev = []
    ev += ssh_session(JUMP, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP)
    ev += ssh_session(JUMP, 10, 300, "bob", 1002, "198.51.100.23", 41870, BOB_FP)
    # the two ssh clients, forked from each person's shell
    ev += [JUMP.fork(1000, 210, 201), JUMP.exec(1000.01, 210, ["ssh", "ec2-user@config-server"], uid=1001, auid=1001),
           JUMP.connect(1000.05, 210, CONFIG.addr, 22, lport=40001),
           JUMP.fork(1000.4, 310, 301), JUMP.exec(1000.41, 310, ["ssh", "ec2-user@config-server"], uid=1002, auid=1002),
           JUMP.connect(1000.45, 310, CONFIG.addr, 22, lport=40002)]
    # server side: jim's login arrives after bob's connect, bob's after jim's
    ev += ssh_session(CONFIG, 1000.5, 400, "ec2-user", 1000, JUMP.addr, 40001, JIM_FP, ses=7)
    ev += ssh_session(CONFIG, 1000.6, 500, "ec2-user", 1000, JUMP.addr, 40002, BOB_FP, ses=8)
    for shell, sudo, root, ses in ((401, 410, 411, 7), (501, 510, 511, 8)):
        ev += [CONFIG.fork(1060, sudo, shell),
               CONFIG.exec(1060.01, sudo, ["sudo", "-i"], uid=1000, euid=0, auid=1000, ses=ses),
               CONFIG.cred(1060.02, sudo, 1000, 0),
               CONFIG.fork(1060.03, root, sudo),
               CONFIG.exec(1060.04, root, ["-bash"], uid=0, auid=1000, ses=ses)]
    ev += [CONFIG.fork(4700, 420, 411),
           CONFIG.exec(4700.01, 420, ["aws", "eks", "delete-cluster", "--name", "prod"], uid=0, auid=1000, ses=7),
           CONFIG.exit(4706, 420),
           CONFIG.fork(4600, 520, 511),
           CONFIG.exec(4600.01, 520, ["aws", "eks", "describe-cluster", "--name", "prod"], uid=0, auid=1000, ses=8),
           CONFIG.exit(4601, 520)]
    return ev


def trace_one(events, pattern, ident=IDENT, **q):
    tracer = Tracer(store_with(events), ident)
    traces = tracer.find(Query(pattern=pattern, **q))
    return traces


def test_shared_account_delete_is_jims_not_bobs():
    (tr,) = trace_one(shared_account_story(), "delete-cluster")
    assert tr.attributed.user == "jim"
    assert tr.attributed.source == "203.0.113.7"
    assert [(s.host, s.edge, s.user) for s in tr.chain] == [
        ("jump-box", "login", "jim"),
        ("jump-box", "fork", "jim"),                 # -bash
        ("jump-box", "fork", "jim"),                 # ssh ec2-user@config-server
        ("config-server", "ssh", "ec2-user"),
        ("config-server", "fork", "ec2-user"),       # -bash
        ("config-server", "sudo", "root"),           # sudo -i
        ("config-server", "fork", "root"),           # -bash
        ("config-server", "fork", "root"),           # aws eks delete-cluster
    ]
    assert not any(s.inferred for s in tr.chain)
    assert tr.chain[3].note == "connection 10.0.0.10:40001 -> 10.0.1.20:22 seen on both hosts"
    assert tr.chain[5].note == "ec2-user -> root via sudo"
    assert tr.summary == "jim -> jump-box -> config-server (ec2-user), sudo to root"
    assert [g["label"] for g in tr.gaps] == ["paused 16m 40s", "paused 1h 00m"]


def test_shared_account_describe_is_bobs():
    (tr,) = trace_one(shared_account_story(), "describe-cluster")
    assert tr.attributed.user == "bob"
    assert tr.chain[0].login["rport"] == 41870


def test_without_a_people_map_the_hop_still_reaches_the_personal_login():
    (tr,) = trace_one(shared_account_story(), "delete-cluster", ident=Identity())
    assert (tr.attributed.user, tr.attributed.account) == ("jim", "jim")


def test_any_arrival_order_gives_the_same_answer():
    events = shared_account_story()
    expected = None
    rng = random.Random(1)
    for _ in range(12):
        rng.shuffle(events)
        tracer = Tracer(store_with(events), IDENT)
        q = Query(pattern="aws", scope=2, limit=5)
        got = traces_json(q, tracer.find(q), now=T0 + 10_000)
        # graph node ids are store row ids, which depend on arrival order; everything else must not
        for m in got["matches"]:
            m["graph"] = sorted((n["host"], n["pid"], n["command"], n["role"]) for n in m["graph"]["nodes"])
        expected = expected or got
        assert got == expected


def test_pid_reuse_does_not_merge_two_processes():
    # pid 230 is bob's shell first, and then - after it exited - jim's. The command runs
    # under the second one; the trace must not wander into bob's login.
    h = JUMP
    ev = ssh_session(h, 0, 200, "jim", 1001, "203.0.113.7", 53122)
    ev += ssh_session(h, 5, 300, "bob", 1002, "198.51.100.23", 41870)
    ev += [h.fork(10, 230, 301, start=10), h.exec(10.1, 230, ["bash"], uid=1002, auid=1002, start=10),
           h.exit(20, 230, start=10),
           h.fork(30, 230, 201, start=30), h.exec(30.1, 230, ["bash"], uid=1001, auid=1001, start=30),
           h.fork(40, 240, 230, pstart=30), h.exec(40.1, 240, ["rm", "-rf", "/srv/data"], uid=1001, auid=1001)]
    (tr,) = trace_one(ev, "rm -rf")
    assert tr.attributed.user == "jim"
    assert [s.pid for s in tr.chain] == [200, 201, 230, 240]


def test_missing_parent_is_joined_to_its_login_by_audit_session_and_marked_inferred():
    h = CONFIG
    ev = ssh_session(h, 0, 400, "ec2-user", 1000, "203.0.113.7", 50000, JIM_FP, ses=7)
    # the fork of pid 450 was lost, and its exec names no parent
    ev += [h.exec(100, 450, ["terraform", "destroy"], uid=1000, auid=1000, ses=7)]
    (tr,) = trace_one(ev, "terraform")
    assert tr.attributed.user == "jim"
    assert [s.pid for s in tr.chain] == [400, 450]
    assert tr.chain[1].inferred
    assert "audit session 7" in tr.chain[1].note
    assert any("audit session 7" in c for c in tr.notes)


def test_hop_without_a_recorded_source_port_is_inferred_from_address_and_time():
    ev = ssh_session(JUMP, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP)
    ev += [{"v": 1, "kind": "host", "host": "jump-box", "boot": "boot-1", "ts": T0, "addrs": [JUMP.addr]},
           JUMP.fork(100, 210, 201), JUMP.exec(100.01, 210, ["ssh", "config-server"], uid=1001, auid=1001),
           # the agent saw the connect before the kernel chose a source port
           JUMP.connect(100.05, 210, CONFIG.addr, 22, lport=0)]
    ev += ssh_session(CONFIG, 100.1, 400, "jim", 1001, JUMP.addr, 45555, JIM_FP)
    ev += [CONFIG.fork(200, 420, 401), CONFIG.exec(200.01, 420, ["reboot"], uid=1001, auid=1001)]
    (tr,) = trace_one(ev, "reboot")
    hop = tr.chain[3]
    assert (hop.host, hop.edge, hop.inferred) == ("config-server", "ssh", True)
    assert "source port 45555 was not recorded" in hop.note
    assert tr.chain[0].host == "jump-box"


def test_login_from_outside_the_fleet_is_the_origin():
    ev = ssh_session(CONFIG, 0, 400, "ec2-user", 1000, "198.51.100.23", 41870, BOB_FP)
    ev += [CONFIG.fork(50, 420, 401), CONFIG.exec(50.01, 420, ["aws", "s3", "ls"], uid=1000, auid=1000)]
    (tr,) = trace_one(ev, "aws")
    assert (tr.attributed.user, tr.attributed.source, tr.attributed.host) == ("bob", "198.51.100.23", "config-server")


def test_file_change_is_traced_to_its_writer():
    ev = shared_account_story() + [
        CONFIG.fork(2000, 430, 411), CONFIG.exec(2000.01, 430, ["vim", "/etc/nginx/nginx.conf"], uid=0, auid=1000),
        CONFIG.file(2100, 430, "write", "/etc/nginx/nginx.conf", euid=0),
        CONFIG.fork(2200, 530, 511), CONFIG.exec(2200.01, 530, ["mv", "/tmp/x", "/etc/nginx/conf.d/x.conf"], uid=0),
        CONFIG.file(2200.1, 530, "rename", "/tmp/x", path2="/etc/nginx/conf.d/x.conf"),
    ]
    (tr,) = trace_one(ev, "/etc/nginx/nginx.conf")
    assert tr.attributed.user == "jim"
    assert tr.change["op"] == "write"
    assert tr.poi.command == "vim /etc/nginx/nginx.conf"
    (tr,) = trace_one(ev, "/etc/nginx/conf.d/*")
    assert (tr.attributed.user, tr.change["path2"]) == ("bob", "/etc/nginx/conf.d/x.conf")


def test_glob_and_substring_search_and_filters():
    ev = shared_account_story()
    assert len(trace_one(ev, "aws*prod")) == 2
    assert len(trace_one(ev, "AWS")) == 0                         # substring search is case-sensitive
    assert [t.attributed.user for t in trace_one(ev, "aws", user="bob")] == ["bob"]
    assert [t.attributed.user for t in trace_one(ev, "aws", user="jim")] == ["jim"]
    assert trace_one(ev, "aws", host="jump*") == []
    assert len(trace_one(ev, "aws", since=T0 + 4650)) == 1
    assert len(trace_one(ev, "aws", until=T0 + 4650)) == 1
    assert [t.poi.command.split()[2] for t in trace_one(ev, "aws")] == ["delete-cluster", "describe-cluster"]


def _bob_lists_buckets_after(n):
    """shared_account_story, then bob (root on config-server) runs `aws s3 ls` n times after jim's
    delete: jim's aws is older than n of bob's."""
    ev = shared_account_story()
    for i in range(n):
        ev += [CONFIG.fork(5000 + i, 1000 + i, 511),
               CONFIG.exec(5000.01 + i, 1000 + i, ["aws", "s3", "ls"], uid=0, auid=1000, ses=8),
               CONFIG.exit(5000.5 + i, 1000 + i)]
    return ev


def test_a_user_question_looks_past_the_newest_matches_of_others():
    # the newest 200 aws processes are bob's; jim's delete is the 251st - before, "none involving jim"
    traces = trace_one(_bob_lists_buckets_after(250), "aws", user="jim", limit=1)
    assert [(t.attributed.user, t.poi.command) for t in traces] == [("jim", "aws eks delete-cluster --name prod")]
    assert traces.looked_at is None


def test_a_user_question_that_stops_looking_says_how_far_it_looked(monkeypatch):
    from whodid.tracer import trace as trace_mod
    from whodid.tracer.render import render_text
    monkeypatch.setattr(trace_mod, "USER_SEARCH_MAX", 100)
    query = Query(pattern="aws", user="jim", limit=1)
    traces = Tracer(store_with(_bob_lists_buckets_after(250)), IDENT).find(query)
    assert traces == [] and traces.looked_at == 100
    text = render_text(query, traces, T0 + 6000)
    assert "among the newest 100 matches" in text and "what involves jim traced the newest 100 matches" in text
    oldest = T0 + 5150.01                          # bob's 150th aws s3 ls, the 100th newest of 250
    assert traces.looked_to == oldest and f"with {further_back(None, oldest, flags=True)}" in text
    doc = traces_json(query, traces, T0 + 6000)
    assert doc["matches"] == [] and doc["looked_at"] == 100 and doc["looked_to"] == further_back(None, oldest)[6:]
    # asked again with the until: it gives, each answer looks further back, and the third finds jim
    tracer, answers = Tracer(store_with(_bob_lists_buckets_after(250)), IDENT), [traces]
    while not answers[-1] and len(answers) < 5:
        words = further_back(T0, answers[-1].looked_to)           # since:... until:..., as Slack says it
        asked = grammar.parse_text(f"aws user:jim {words}", "trace", T0 + 6000, {"limit": "1", "scope": "0"})
        assert asked.since == T0 and asked.until >= answers[-1].looked_to
        answers.append(tracer.find(Query(pattern="aws", user="jim", limit=1, since=asked.since, until=asked.until)))
    assert [a.looked_at for a in answers] == [100, 100, None]
    assert [t.poi.command for t in answers[-1]] == ["aws eks delete-cluster --name prod"]
    # every match looked at: none is none
    everyone = Tracer(store_with(_bob_lists_buckets_after(50)), IDENT).find(Query(pattern="s3", user="jim"))
    assert everyone == [] and everyone.looked_at is None
    assert "Not known" not in render_text(Query(pattern="s3", user="jim"), everyone, T0 + 6000)


def test_a_user_question_that_looked_at_every_match_says_none_even_at_its_cap(monkeypatch):
    from whodid.tracer import trace as trace_mod
    monkeypatch.setattr(trace_mod, "USER_SEARCH_MAX", 100)
    store = store_with(_bob_lists_buckets_after(100))      # exactly the cap of matches for `s3`
    for limit in (1, 20):
        traces = Tracer(store, IDENT).find(Query(pattern="s3", user="jim", limit=limit))
        assert traces == [] and traces.looked_at is None


def test_a_user_question_answers_newest_first_when_a_match_is_stored_between_its_rounds():
    ev = _bob_lists_buckets_after(250)
    store = store_with(ev)
    tracer = Tracer(store, IDENT)
    rounds = []
    first = tracer._matches

    def matches(query, fetch):
        rounds.append(fetch)
        if len(rounds) == 2:            # while it widens, jim lists the clusters, newest of all
            store.write([CONFIG.fork(6000, 2000, 411),
                         CONFIG.exec(6000.01, 2000, ["aws", "eks", "list-clusters"], uid=0, auid=1000, ses=7)])
        return first(query, fetch)
    tracer._matches = matches
    traces = tracer.find(Query(pattern="aws", user="jim", limit=2))
    assert len(rounds) == 2
    assert [t.poi.command for t in traces] == ["aws eks list-clusters", "aws eks delete-cluster --name prod"]


def test_the_window_a_stopped_user_question_suggests_takes_in_every_match_it_did_not_look_at():
    # found by an adversarial pass: float rounding put the suggested until a millisecond short,
    # JSON's looked_to was rounded down, and a time near the calendar's end raised
    from whodid.tracer.events import TS_MAX
    from whodid.tracer.when import parse_time
    from whodid.tracer.trace import whole_ms
    rng = random.Random(7)
    for _ in range(20000):
        ms = rng.randrange(10 ** 12, 2 * 10 ** 12)
        for ts in (math.nextafter(ms / 1000, math.inf), math.nextafter(ms / 1000, -math.inf), ms / 1000,
                   ms / 1000 + rng.random() / 1000):
            assert parse_time(whole_ms(ts, True), 0) >= ts and parse_time(whole_ms(ts, False), 0) <= ts, ts
    assert whole_ms(TS_MAX - 0.0004, True) is None                 # past 9999: no until, and no crash
    assert further_back(T0, TS_MAX - 0.0004) == f"since:{whole_ms(T0, False)}"
    found = trace_mod_found(looked_at=5, looked_to=TS_MAX - 0.0004)
    assert "Not known" in render_text(Query(pattern="s3", user="jim", since=T0), found, T0)
    assert traces_json(Query(pattern="s3", user="jim"), found, T0)["looked_to"] is None
    found = trace_mod_found(looked_at=5, looked_to=5000.0008)
    assert parse_time(traces_json(Query(pattern="s3", user="jim"), found, T0)["looked_to"], 0) >= 5000.0008


def trace_mod_found(**said):
    from whodid.tracer.trace import Found
    found = Found()
    for k, v in said.items():
        setattr(found, k, v)
    return found


def test_a_user_question_stops_at_its_time_budget_and_says_so(monkeypatch):
    from whodid.tracer import trace as trace_mod
    monkeypatch.setattr(trace_mod, "USER_SEARCH_SECONDS", 0.0)     # spent after the first match
    traces = Tracer(store_with(_bob_lists_buckets_after(30)), IDENT).find(Query(pattern="aws", user="jim", limit=1))
    assert traces == [] and traces.looked_at == 1


def test_wider_scopes_add_context_around_the_chain():
    ev = shared_account_story() + [
        # what the delete started, and another command in jim's root shell
        CONFIG.fork(4700.5, 421, 420), CONFIG.exec(4700.6, 421, ["python3", "-m", "awscli"], uid=0),
        CONFIG.fork(3000, 430, 411), CONFIG.exec(3000.01, 430, ["aws", "sts", "get-caller-identity"], uid=0),
        # jim's other session, on the jump box, later the same day
        *ssh_session(JUMP, 5000, 260, "jim", 1001, "203.0.113.7", 53999, JIM_FP),
        JUMP.fork(5010, 270, 261), JUMP.exec(5010.01, 270, ["history"], uid=1001),
    ]
    sizes = {}
    for scope in range(4):
        (tr,) = trace_one(ev, "delete-cluster", scope=scope)
        commands = {d["step"].command for _, d in tr.graph.nodes(data=True)}
        sizes[scope] = commands
    assert "python3 -m awscli" not in sizes[0]
    assert {"python3 -m awscli", "aws sts get-caller-identity"} <= sizes[1]
    assert "history" not in sizes[2] and "history" in sizes[3]
    assert "aws eks describe-cluster --name prod" not in sizes[3]   # bob's, never jim's context
    assert sizes[0] < sizes[1] <= sizes[2] < sizes[3]


def test_a_daemon_on_the_chain_adds_its_children_of_the_day_not_of_the_month():
    """Scope 1 adds the children of the chain's other processes. When one is a daemon (cron, a CI
    runner) those are its jobs: the ones around the matched command are context, those of weeks
    before are not - on a fleet a daemon's month of children is thousands of processes, each
    read from disk for every trace (issue 23, target 5)."""
    t = 30 * 86400
    ev = [CONFIG.fork(0, 100, 1), CONFIG.exec(0.01, 100, ["/usr/sbin/cron", "-f"])]
    for pid, ago, job in ((200, 20 * 86400, "weeks-ago.sh"), (210, 600, "minutes-ago.sh"), (220, 0, "backup.sh")):
        ev += [CONFIG.fork(t - ago, pid, 100), CONFIG.exec(t - ago + 0.01, pid, ["/bin/sh", "-c", job])]
    ev += [CONFIG.fork(t + 1, 221, 220), CONFIG.exec(t + 1.01, 221, ["aws", "s3", "cp", "/backup/x", "s3://b/"])]
    (tr,) = trace_one(ev, "s3 cp", scope=1)
    assert [s.command for s in tr.chain][-3:] == ["/usr/sbin/cron -f", "/bin/sh -c backup.sh", "aws s3 cp /backup/x s3://b/"]
    commands = {d["step"].command for _, d in tr.graph.nodes(data=True)}
    assert "/bin/sh -c minutes-ago.sh" in commands
    assert "/bin/sh -c weeks-ago.sh" not in commands


def test_open_logins_found_by_the_boots_processes_give_the_same_answer(monkeypatch):
    # logins_open reads a busy fleet's window from the boot's side (issue 23): same logins
    from whodid.tracer import store as store_mod
    want = [(t.attributed.user, t.attributed.source, [s.node for s in t.chain])
            for t in trace_one(shared_account_story(), "aws")]
    monkeypatch.setattr(store_mod, "LOGINS_BY_PROC", 0)
    got = [(t.attributed.user, t.attributed.source, [s.node for s in t.chain])
           for t in trace_one(shared_account_story(), "aws")]
    assert got == want and [w[0] for w in want] == ["jim", "bob"]


def test_chain_edges_in_the_graph_are_typed():
    (tr,) = trace_one(shared_account_story(), "delete-cluster")
    kinds = [d["kind"] for _, _, d in tr.graph.edges(data=True) if d["chain"]]
    assert kinds == ["fork", "fork", "ssh", "fork", "sudo", "fork", "fork"]
    roles = [d["role"] for _, d in tr.graph.nodes(data=True)]
    assert roles[0] == "origin" and roles[-1] == "poi"


def test_json_contract_fields():
    tracer = Tracer(store_with(shared_account_story()), IDENT)
    q = Query(pattern="delete-cluster")
    doc = traces_json(q, tracer.find(q), now=T0 + 10_000)
    assert doc["schema"] == "whodid.trace/2"
    m = doc["matches"][0]
    assert set(m["attributed_to"]) >= {"user", "host", "source", "login_time", "how"}
    assert m["attributed_to"]["user"] == "jim"
    for s in m["chain"]:
        assert set(s) >= {"host", "pid", "user", "login_user", "command", "start", "edge"}
        assert s["edge"] in {"login", "fork", "exec", "ssh", "sudo", "su", "setuid"}
    assert m["poi"]["command"] == "aws eks delete-cluster --name prod"
    assert m["chain"][-1]["login_user"] == "ec2-user"
    assert m["gaps"][1] == {"after": 6, "before": 7, "seconds": 3639.97, "label": "paused 1h 00m"}
    json.dumps(doc)


def test_login_from_a_fleet_host_with_no_recorded_client_says_so():
    ev = [{"v": 1, "kind": "host", "host": "jump-box", "boot": "boot-1", "ts": T0, "addrs": [JUMP.addr]}]
    ev += ssh_session(CONFIG, 100, 400, "ec2-user", 1000, JUMP.addr, 45555)
    ev += [CONFIG.fork(200, 420, 401), CONFIG.exec(200.01, 420, ["reboot"], uid=1000, auid=1000)]
    (tr,) = trace_one(ev, "reboot")
    assert tr.attributed.host == "config-server"
    assert any("an address of jump-box" in c and "no matching ssh connection" in c for c in tr.notes)


def test_the_json_doc_describes_every_field_we_emit():
    from pathlib import Path
    import re
    doc = (Path(__file__).parent.parent / "docs" / "trace-json.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", doc, flags=re.M):
        documented |= set(re.findall(r"`(\w+)`", cell))
    tracer = Tracer(store_with(shared_account_story()), IDENT)
    q = Query(pattern="delete-cluster")
    out = traces_json(q, tracer.find(q), now=T0 + 10_000)
    m = out["matches"][0]
    emitted = set(out) | set(m) | set(m["attributed_to"]) | set(m["chain"][0]) | set(m["gaps"][0])
    emitted |= set(m["poi"]) - {"exit_code", "change"}
    assert emitted <= documented, f"undocumented: {sorted(emitted - documented)}"


def test_a_process_that_dropped_privileges_without_exec_is_shown_as_its_new_user():
    # nginx's master runs as root; its worker is a fork that setuid()s to www-data and never
    # execs. The worker's write must not be reported as root's.
    h = Host("web-01", "10.0.2.11")
    ev = [h.exec(0, 1, ["/sbin/init"]),
          h.fork(1, 80, 1), h.exec(1.1, 80, ["nginx:", "master"], uid=0),
          h.fork(2, 81, 80), h.cred(2.1, 81, 0, 33),
          {**h.file(50, 81, "write", "/etc/nginx/cache.conf"), "euid": 33}]
    (tr,) = trace_one(ev, "/etc/nginx/cache.conf")
    assert (tr.poi.pid, tr.poi.user, tr.poi.command) == (81, "33", "nginx: master")
    assert tr.poi.inherited
    assert [(s.pid, s.user) for s in tr.chain] == [(80, "root"), (81, "33")]
    assert (tr.chain[1].edge, tr.chain[1].note) == ("setuid", "root -> 33 via setuid() in nginx:")


def test_address_fallback_never_borrows_a_connect_that_belongs_to_another_login():
    # bob's ssh client on the jump box was not recorded; jim's was, and it exactly matches
    # jim's login. Inferring bob's hop "by address and time" must not hand him jim's.
    ev = [{"v": 1, "kind": "host", "host": "jump-box", "boot": "boot-1", "ts": T0, "addrs": [JUMP.addr]}]
    ev += [e for e in shared_account_story() if not (e["kind"] == "connect" and e["pid"] == 310)]
    (tr,) = trace_one(ev, "describe-cluster")
    assert tr.chain[0].host == "config-server"
    assert (tr.attributed.user, tr.attributed.account) == ("bob", "ec2-user")       # by his key
    assert any("an address of jump-box" in c for c in tr.notes)
    (tr,) = trace_one(ev, "delete-cluster")
    assert tr.attributed.user == "jim" and tr.chain[0].host == "jump-box"


def test_a_shell_that_execs_sudo_is_shown_as_its_user_not_root():
    # `ssh host 'sudo -i cmd'`: bash -c execs sudo in the same process; the setuid exec
    # belongs to the sudo image, the bash image before it still ran as ec2-user.
    h = CONFIG
    ev = ssh_session(h, 0, 400, "ec2-user", 1000, "203.0.113.7", 50000, ses=7)
    ev += [h.fork(10, 450, 400), h.exec(10.01, 450, ["bash", "-c", "sudo -i true"], uid=1000, auid=1000),
           h.exec(10.02, 450, ["sudo", "-i", "true"], uid=1000, euid=0, auid=1000),
           h._ev("cred", 10.02, pid=450, start=450000, via="exec", old_uid=1000, old_euid=1000, uid=1000, euid=0),
           h.fork(10.03, 451, 450), h.exec(10.04, 451, ["true"], uid=0, auid=1000)]
    tr = trace_one(ev, "sudo -i true")[0]           # newest first: sudo's own image
    assert tr.poi.command == "sudo -i true"
    assert [(s.command, s.user, s.edge) for s in tr.chain[1:]] == [
        ("bash -c sudo -i true", "ec2-user", "fork"), ("sudo -i true", "root", "sudo")]


def test_a_trace_crossing_a_loss_window_says_so():
    loss = {"v": 1, "kind": "loss", "host": "config-server", "boot": "boot-1", "ts": T0 + 3000, "since": T0 + 2000,
            "count": 17, "what": "ring buffer full"}
    (tr,) = trace_one(shared_account_story() + [loss], "delete-cluster")
    assert any(c.startswith("config-server lost 17 records (ring buffer full)") for c in tr.notes)
    (tr,) = trace_one(shared_account_story() + [dict(loss, since=T0 + 9000, ts=T0 + 9500)], "delete-cluster")
    assert not any("lost" in c for c in tr.notes)             # after the command: irrelevant


def _skewed_hop(skew: float):
    """jim on the jump host ssh-es to prod; the jump host's clock runs `skew` seconds fast."""
    a, b = Host("jump", "10.0.0.1"), Host("prod", "10.0.0.2")
    ev_a = ssh_session(a, 100, 200, "jim", 1001, "192.168.1.5", 51000)
    ev_a += [a.fork(110, 210, 201), a.exec(110.1, 210, ["ssh", "ec2-user@10.0.0.2"], uid=1001, auid=1001),
             a.connect(110.2, 210, "10.0.0.2", 22, 40000)]
    for e in ev_a:
        e["ts"] += skew
    ev_b = ssh_session(b, 110.5, 300, "ec2-user", 1000, "10.0.0.1", 40000)
    ev_b += [b.fork(400, 310, 301), b.exec(400.1, 310, ["aws", "eks", "delete-cluster"], uid=1000, auid=1000)]
    return store_with(ev_a + ev_b)


def test_measured_clock_offsets_put_both_hosts_on_one_clock():
    store = _skewed_hop(300.0)
    tracer = Tracer(store, IDENT)
    (tr,) = tracer.find(Query(pattern="delete-cluster", limit=1))
    assert tr.attributed.account == "ec2-user" and tr.chain[0].host == "prod"     # the hop is lost to the skew
    store.note_seen("jump", time.time(), (-300.0, 0.001))      # what jump's agent measured against the collector
    store.note_seen("prod", time.time(), (0.0, 0.001))
    (tr,) = Tracer(store, IDENT).find(Query(pattern="delete-cluster", limit=1))
    assert [s.host for s in tr.chain][0] == "jump" and tr.attributed.user == "jim"
    ssh = next(i for i, s in enumerate(tr.chain) if s.edge == "ssh")
    assert 0 < tr.chain[ssh].start - tr.chain[ssh - 1].start < 1           # not "5 minutes later"
    assert not [g for g in tr.gaps if g.get("seconds", 0) >= 290]


def test_a_silent_host_is_called_out():
    store = _skewed_hop(0.0)
    store.note_seen("jump", time.time(), (0.0, 0.001))
    store.note_seen("prod", time.time() - 3 * 3600, (0.0, 0.001))
    (tr,) = Tracer(store, IDENT).find(Query(pattern="delete-cluster", limit=1))
    notes = [c for c in tr.notes if "silent" in c]
    assert len(notes) == 1 and notes[0].startswith("prod has been silent since") and "3h 00m" in notes[0]


def test_started_adds_what_the_matched_command_started():
    from kit import ssh_session
    h = Host("web", "10.0.0.5")
    ev = ssh_session(h, 100, 200, "jim", 1001, "192.168.1.5", 51000)
    ev += [h.fork(110, 210, 201), h.exec(110.1, 210, ["./deploy.sh"], uid=1001, auid=1001),
           h.fork(111, 211, 210), h.exec(111.1, 211, ["kubectl", "apply", "-f", "x"], uid=1001, auid=1001),
           h.fork(112, 212, 201), h.exec(112.1, 212, ["ls"], uid=1001, auid=1001)]
    tracer = Tracer(store_with(ev), IDENT)
    (plain,) = tracer.find(Query(pattern="deploy.sh", limit=1))
    (more,) = tracer.find(Query(pattern="deploy.sh", limit=1, started=True))
    cmds = lambda tr: {d["step"].command for _, d in tr.graph.nodes(data=True)}
    assert "kubectl apply -f x" not in cmds(plain)
    assert "kubectl apply -f x" in cmds(more) and "ls" not in cmds(more)   # its descendants, not its siblings


def test_earlier_lists_the_persons_commands_before_the_match():
    from kit import ssh_session
    h = Host("web", "10.0.0.5")
    ev = ssh_session(h, 100, 200, "jim", 1001, "192.168.1.5", 51000)
    ev += [h.fork(110, 210, 201), h.exec(110.1, 210, ["cat", "/etc/hosts"], uid=1001, auid=1001),
           h.fork(120, 211, 201), h.exec(120.1, 211, ["aws", "eks", "delete-cluster"], uid=1001, auid=1001),
           h.fork(130, 212, 201), h.exec(130.1, 212, ["echo", "after"], uid=1001, auid=1001)]
    ev += ssh_session(h, 90, 300, "bob", 1002, "192.168.1.6", 52000)
    ev += [h.fork(115, 310, 301), h.exec(115.1, 310, ["rm", "-rf", "/tmp/bob"], uid=1002, auid=1002)]
    tracer = Tracer(store_with(ev), IDENT)
    (tr,) = tracer.find(Query(pattern="delete-cluster", limit=1))
    earlier = [s.command for s in tracer.earlier(tr)]
    assert earlier == ["cat /etc/hosts"]         # jim's, before the match; not bob's, not later
