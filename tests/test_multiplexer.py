"""The multiplexer rules (tracer/multiplexer.py) on small fixtures: which process is a tmux or
screen server on a chain, which clients were there when a command ran, and what that says
about who could have typed it. Each fixture says the rule it tests."""

from whodid.tracer.multiplexer import decide, injects, kind_of, role, server_kind
from whodid.tracer.sharing import ATTACHED, INJECTED, SCREEN, TMUX, SessionClient
from whodid.tracer.stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN, Attribution, Candidate

T = 1_700_000_000.0


def person(name, account="ec2-user", key=None, login=T - 600):
    return Attribution(user=name, host="host-b", source="10.77.1.2", login_time=login,
                       how=f"ssh publickey as {account} with key {key or name + '-key'}, which belongs to {name}",
                       account=account, key_fp=key or f"{name}-key", confidence=OBSERVED)


def nobody(account="ec2-user", key="SHA256:unmapped", login=T - 300):
    """A login to a shared account whose key names no one (stitch._unknown_login's shape)."""
    own = Candidate(person=account, account=account, host="host-b", login_time=login, source="10.77.1.2",
                    key_fp=key, evidence=["the chain begins at this login"], named=False)
    return Attribution(user=PERSON_UNKNOWN, host="host-b", source="10.77.1.2", login_time=login,
                       how=f"ssh publickey as {account} with key {key}: {account} is a shared account",
                       account=account, key_fp=key, confidence=UNKNOWN, candidates=[own])


def client(who, role_=ATTACHED, pid=500, since=T - 60, until=None, command="tmux attach -t x"):
    return SessionClient(role=role_, proc=pid, host="host-b", pid=pid, command=command, since=since, until=until,
                         who=who, summary=f"{who.user} -> host-b")


# --- which step is a server --------------------------------------------------------------

def test_tmux_and_screen_are_known_by_program_whatever_their_path_or_server_name():
    assert kind_of("/usr/bin/tmux") == TMUX and kind_of("tmux: server") == TMUX
    assert kind_of("screen") == SCREEN and kind_of("SCREEN") == SCREEN
    assert kind_of("bash") is None and kind_of("") is None


def test_a_multiplexer_above_a_shell_is_its_server_but_a_client_in_a_pane_is_not():
    assert server_kind("tmux", "bash") == TMUX          # the pane's shell: its parent is the server
    assert server_kind("SCREEN", "id") == SCREEN        # a command the server started itself
    assert server_kind("tmux", "tmux") is None          # the starting client above its server fork
    assert server_kind("bash", "tmux") is None          # a client run in a shell


# --- which client was there -------------------------------------------------------------

def test_a_client_connected_before_and_alive_at_the_command_was_attached():
    assert role(TMUX, ["tmux", "attach"], T - 100, None, T) == ATTACHED        # still attached (no exit)
    assert role(TMUX, ["tmux", "attach"], T - 100, T + 5, T) == ATTACHED       # detached after
    assert role(TMUX, ["tmux", "attach"], T + 1, None, T) is None              # attached after it ran
    assert role(TMUX, ["tmux", "attach"], T - 100, T - 50, T) is None          # detached long before


def test_a_one_shot_client_that_sent_keys_just_before_injected_and_one_that_only_read_did_not():
    keys = ["tmux", "-L", "s", "send-keys", "-t", "x", "rm -rf /srv", "Enter"]
    assert role(TMUX, keys, T - 2, T - 1.99, T) == INJECTED
    assert role(TMUX, keys, T - 30, T - 29.99, T) is None                      # outside the window
    assert role(TMUX, keys, T - 30, T - 29.99, T, window=60) == INJECTED       # the window is a setting
    assert role(TMUX, ["tmux", "ls"], T - 2, T - 1.99, T) is None
    assert role(SCREEN, ["screen", "-S", "y", "-X", "stuff", "id\n"], T - 2, T - 1.99, T) == INJECTED


def test_someone_who_typed_sleep_then_the_command_and_detached_just_before_it_ran_was_there():
    """bob attached an hour ago, typed `sleep 5; rm -rf /srv` and detached 3 s before rm began."""
    assert role(TMUX, ["tmux", "attach", "-t", "x"], T - 3600, T - 3, T) == ATTACHED
    assert role(SCREEN, ["screen", "-x", "y"], T - 3600, T - 3, T) == ATTACHED
    assert role(TMUX, ["tmux", "attach", "-t", "x"], T - 3600, T - 30, T) is None   # left before the window


def test_what_types_into_a_session():
    assert injects(TMUX, ["tmux", "send", "-t", "x", "id", "Enter"])            # an alias
    assert injects(TMUX, ["tmux", "-S", "/tmp/s", "paste-buffer"])              # after a valued option
    assert injects(TMUX, ["tmux", "ls", ";", "send-keys", "id", "Enter"])       # a second command
    assert injects(TMUX, ["tmux", "send-k", "id"])                              # unknown (a prefix): may type
    assert not injects(TMUX, ["tmux", "-L", "send-keys", "list-clients"])       # a socket named send-keys
    assert not injects(TMUX, ["tmux", "has-session", "-t", "x"])
    assert injects(SCREEN, ["screen", "-S", "y", "-X", "stuff", "id\n"])
    assert injects(SCREEN, ["screen", "-S", "y", "-X", "STUFF", "id\n"])
    assert not injects(SCREEN, ["screen", "-S", "y", "-X", "quit"])
    assert not injects(SCREEN, ["screen", "-S", "y", "-Q", "windows"])
    assert not injects(SCREEN, ["screen", "-ls"])


# --- what it says about who -------------------------------------------------------------

def test_one_person_attached_is_that_person_inferred_never_typed_by():
    jim = person("jim")
    who, note = decide(TMUX, 4242, jim, [client(person("bob"))])
    assert (who.user, who.confidence, who.account, who.key_fp) == ("bob", INFERRED, "ec2-user", "bob-key")
    assert note == "ran in a tmux session started by jim; bob was the only client attached"
    assert note in who.notes and "typed" not in " ".join(who.notes + [who.how])


def test_one_person_attached_twice_and_sending_keys_is_still_one_person():
    bob = person("bob")
    who, note = decide(TMUX, 4242, person("jim"), [client(bob), client(bob, INJECTED, 501, T - 1, T - 0.99,
                                                                       "tmux send-keys -t x id Enter")])
    assert who.user == "bob" and who.confidence == INFERRED
    assert "bob was the only one attached or sending it input" in note


def test_two_people_attached_is_person_unknown_with_both_and_the_starter():
    jim, bob = person("jim"), person("bob")
    who, note = decide(TMUX, 4242, jim, [client(jim, pid=501), client(bob, pid=502)])
    assert who.user == PERSON_UNKNOWN and who.confidence == UNKNOWN
    assert [c.person for c in who.candidates] == ["jim", "bob"]                   # jim once: attached and starter
    ev = who.candidates[0].evidence
    assert any(e.startswith("attached to the tmux server (pid 4242) from") for e in ev)
    assert "started the tmux server (pid 4242)" in ev
    assert "jim, bob were attached or sending it input" in note


def test_a_lone_client_whose_person_is_unknown_is_not_the_starter():
    """bob as ec2-user with an unmapped key is the only client: not jim, not ec2-user as a person."""
    who, _ = decide(SCREEN, 77, person("jim"), [client(nobody(), command="screen -x y")])
    assert who.user == PERSON_UNKNOWN and who.confidence == UNKNOWN
    cands = {(c.person, c.named) for c in who.candidates}
    assert cands == {("ec2-user", False), ("jim", True)}
    shared = next(c for c in who.candidates if c.person == "ec2-user")
    assert shared.evidence[0].startswith("attached to the screen server (pid 77)")


def test_a_connection_whose_client_is_not_known_makes_the_person_unknown():
    who, note = decide(TMUX, 4242, person("jim"), [client(person("bob"))], unseen=1)
    assert who.user == PERSON_UNKNOWN and "1 client not recorded" in note
    assert {c.person for c in who.candidates} == {"jim", "bob"}


def test_no_client_keeps_the_chains_answer_with_the_note():
    jim = person("jim")
    kept = person("jim")
    kept.notes = ["corroborated: a later key"]
    who, note = decide(TMUX, 4242, jim, [], kept=kept)
    assert who.user == "jim" and who.confidence == OBSERVED
    assert note == ("no client was attached to the tmux server (pid 4242, started by jim) when it ran: "
                    "a detached job or input from a script")
    assert who.notes == ["corroborated: a later key", note] and kept.notes == ["corroborated: a later key"]


def test_an_unknown_starter_is_said_as_the_login_it_was():
    who, note = decide(TMUX, 4242, nobody(), [client(person("bob"))])
    assert who.user == "bob"
    assert note.startswith("ran in a tmux session started by a login as ec2-user (person unknown);")


# --- the Tracer: the rules on a store (tracer/trace.py, Tracer._shared_multiplexer) -------------

from kit import T0, Host, ssh_session, store_with                          # noqa: E402

from whodid.tracer import Identity, Person, Query, Tracer                  # noqa: E402

B = Host("host-b", "10.0.0.2")
SOCK = "/tmp/tmux-1000/default"
PEOPLE = Identity(people=(Person("jim", ssh_keys=("jim-key",)), Person("bob", ssh_keys=("bob-key",))))


def jims_session():
    """jim logs in as ec2-user (ses 1), starts `tmux new -d -s x` and logs out: the client 210
    forks 211, which forks the server 212 (no exec: daemon()); the pane's shell 213 is the
    server's child, in jim's audit session."""
    return [
        *ssh_session(B, 0, 200, "ec2-user", 1000, "10.0.9.1", 40001, key_fp="jim-key", ses=1),
        B.fork(1, 210, 201), B.exec(1.01, 210, ["tmux", "new", "-d", "-s", "x"], uid=1000, auid=1000, ses=1),
        B.fork(1.02, 211, 210), B.fork(1.03, 212, 211),
        B.fork(1.04, 213, 212), B.exec(1.05, 213, ["-bash"], uid=1000, auid=1000, ses=1),
        B.exit(1.1, 211), B.exit(1.2, 210), B.exit(2, 201), B.exit(2.1, 200),
    ]


def bobs_attach(at=100, until=None, argv=("tmux", "attach", "-t", "x"), pid=310, conn="c-bob"):
    """bob logs in as ec2-user (ses 2) with his key and runs a tmux client that connects to jim's server."""
    evs = [*ssh_session(B, at, pid - 10, "ec2-user", 1000, "10.0.9.2", 40002 + pid, key_fp="bob-key", ses=2),
           B.fork(at + 1, pid, pid - 9), B.exec(at + 1.01, pid, list(argv), uid=1000, auid=1000, ses=2),
           B.uconnect(at + 1.02, pid, SOCK, conn, peer=(212, 212000)),
           B.uaccept(at + 1.03, 212, conn, peer=(pid, pid * 1000), path=SOCK)]
    if until is not None:
        evs.append(B.exit(until, pid))
    return evs


def typed_in_the_pane(at=200, pid=214):
    return [B.fork(at, pid, 213), B.exec(at + 0.01, pid, ["rm", "-rf", "/srv"], uid=1000, auid=1000, ses=1)]


def trace_of(tmp_path, events, identity=PEOPLE):
    store = store_with(events, str(tmp_path / "mux.db"))
    (tr,) = Tracer(store, identity).find(Query(pattern="rm -rf /srv"))
    return tr


def test_bob_attached_to_jims_tmux_when_the_command_ran_is_named_not_jim(tmp_path):
    tr = trace_of(tmp_path, jims_session() + bobs_attach() + typed_in_the_pane())
    assert tr.chain[0].login["key_fp"] == "jim-key"                  # the process tree is jim's
    assert (tr.attributed.user, tr.attributed.confidence) == ("bob", INFERRED)
    (s,) = tr.shared
    assert (s.kind, s.pid, s.path, s.starter.user) == (TMUX, 212, SOCK, "jim")
    assert tr.chain[s.step].argv == ["tmux", "new", "-d", "-s", "x"]  # drawn at the step that started it
    (c,) = s.clients
    assert (c.role, c.pid, c.who.user, c.since, c.until) == (ATTACHED, 310, "bob", T0 + 101.02, None)
    assert "bob was the only client attached" in " ".join(tr.notes)
    assert tr.summary.startswith("bob ->")


def test_bob_gone_before_the_command_ran_leaves_it_jims_with_the_note(tmp_path):
    tr = trace_of(tmp_path, jims_session() + bobs_attach(until=150) + typed_in_the_pane())
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", OBSERVED)
    assert tr.shared[0].clients == []
    assert any(n.startswith("no client was attached to the tmux server (pid 212, started by jim)") for n in tr.notes)


def test_bob_with_an_unmapped_key_alone_in_jims_session_is_person_unknown_not_jim(tmp_path):
    ident = Identity(people=(Person("jim", ssh_keys=("jim-key",)),))
    tr = trace_of(tmp_path, jims_session() + bobs_attach() + typed_in_the_pane(), ident)
    assert tr.attributed.user == PERSON_UNKNOWN
    assert {(c.person, c.key_fp) for c in tr.attributed.candidates} == {("ec2-user", "bob-key"), ("jim", "jim-key")}


def test_send_keys_run_inside_the_session_itself_is_its_own_input_not_a_loop(tmp_path):
    """A script in the pane types into its own session: that client's chain passes through the
    same server, which is the session deciding - it is left out, never followed round."""
    inside = [B.fork(150, 220, 213), B.exec(150.01, 220, ["tmux", "send-keys", "-t", "x", "!!", "Enter"],
                                             uid=1000, auid=1000, ses=1),
              B.uconnect(150.02, 220, SOCK, "c-in", peer=(212, 212000)),
              B.uaccept(150.03, 212, "c-in", peer=(220, 220000), path=SOCK), B.exit(150.05, 220)]
    tr = trace_of(tmp_path, jims_session() + inside + typed_in_the_pane(at=151))
    assert tr.attributed.user == "jim" and tr.shared[0].clients == []


def test_bobs_client_run_in_his_own_tmux_is_traced_through_it_to_bob(tmp_path):
    """bob attaches to jim's session from a pane of his own tmux server (pid 320): his client's
    chain is itself decided by his server's clients (bob's own terminal, 330)."""
    bob = [*ssh_session(B, 50, 300, "ec2-user", 1000, "10.0.9.2", 40100, key_fp="bob-key", ses=2),
           B.fork(51, 318, 301), B.exec(51.01, 318, ["tmux", "-L", "bob", "new", "-d"], uid=1000, auid=1000, ses=2),
           B.fork(51.02, 319, 318), B.fork(51.03, 320, 319),
           B.fork(51.04, 321, 320), B.exec(51.05, 321, ["-bash"], uid=1000, auid=1000, ses=2),
           B.exit(51.1, 318), B.exit(52, 301), B.exit(52.1, 300),
           *ssh_session(B, 60, 328, "ec2-user", 1000, "10.0.9.2", 40101, key_fp="bob-key", ses=3),
           B.fork(61, 330, 329), B.exec(61.01, 330, ["tmux", "-L", "bob", "attach"], uid=1000, auid=1000, ses=3),
           B.uconnect(61.02, 330, "/tmp/tmux-1000/bob", "c-bob-own", peer=(320, 320000)),
           B.uaccept(61.03, 320, "c-bob-own", peer=(330, 330000), path="/tmp/tmux-1000/bob"),
           B.fork(100, 340, 321), B.exec(100.01, 340, ["tmux", "attach", "-t", "x"], uid=1000, auid=1000, ses=2),
           B.uconnect(100.02, 340, SOCK, "c-bob-in", peer=(212, 212000)),
           B.uaccept(100.03, 212, "c-bob-in", peer=(340, 340000), path=SOCK)]
    tr = trace_of(tmp_path, jims_session() + bob + typed_in_the_pane())
    (c,) = tr.shared[0].clients
    assert c.pid == 340 and c.who.user == "bob" and tr.attributed.user == "bob"


def test_a_command_typed_in_a_root_shell_opened_long_before_is_whoever_was_there_when_it_ran(tmp_path):
    """`sudo -i` was typed in the pane at 20 s, when no one was attached; bob attached at 101 s and
    the command ran at 200 s in that root shell: the keys were typed when it ran, not at 20 s."""
    root_shell = [B.fork(20, 230, 213), B.exec(20.01, 230, ["sudo", "-i"], uid=1000, euid=0, auid=1000, ses=1),
                  B.fork(20.1, 231, 230), B.exec(20.11, 231, ["-bash"], uid=0, auid=1000, ses=1),
                  B.fork(200, 232, 231), B.exec(200.01, 232, ["rm", "-rf", "/srv"], uid=0, auid=1000, ses=1)]
    tr = trace_of(tmp_path, jims_session() + bobs_attach() + root_shell)
    assert tr.chain[-2].argv == ["-bash"] and tr.chain[-2].user == "root"
    assert tr.attributed.user == "bob" and tr.shared[0].clients[0].who.user == "bob"


def test_the_starters_own_attached_client_counts_though_it_made_no_connect(tmp_path):
    """jim ran `tmux new -s x` (not -d) and is still in it: his client talks to the server it
    forked over a socketpair, so no connect names it, yet he is attached beside bob."""
    jim = [*ssh_session(B, 0, 200, "ec2-user", 1000, "10.0.9.1", 40001, key_fp="jim-key", ses=1),
           B.fork(1, 210, 201), B.exec(1.01, 210, ["tmux", "new", "-s", "x"], uid=1000, auid=1000, ses=1),
           B.fork(1.02, 211, 210), B.fork(1.03, 212, 211),
           B.fork(1.04, 213, 212), B.exec(1.05, 213, ["-bash"], uid=1000, auid=1000, ses=1), B.exit(1.1, 211)]
    tr = trace_of(tmp_path, jim + bobs_attach() + typed_in_the_pane())
    assert tr.attributed.user == PERSON_UNKNOWN
    assert {(c.role, c.pid, c.who.user) for c in tr.shared[0].clients} == \
        {(ATTACHED, 210, "jim"), (ATTACHED, 310, "bob")}
    alone = trace_of(tmp_path / "alone", jim + typed_in_the_pane())
    assert alone.attributed.user == "jim" and "jim was the only client attached" in alone.shared[0].note


def test_the_picture_badge_over_the_starters_login_does_not_give_it_the_attached_persons_key(tmp_path):
    # the badge sits over the chain's origin, jim's login: "person: bob (key bob-key)" there read
    # as if bob's key had made jim's login
    from whodid.tracer.render.layout import layout
    tr = trace_of(tmp_path, jims_session() + bobs_attach() + typed_in_the_pane())
    person = layout(tr, T0 + 1000).person
    assert "bob" in person and "bob-key" not in person and "this login started it" in person, person


def test_a_crowd_of_clients_lists_the_strongest_five_candidates_with_the_starter_and_says_how_many_more():
    # two thousand clients whose exits were lost made a 900 KB answer; the session keeps them all,
    # the answer lists five: the latest clients known to be there first, and the starter
    crowd = [client(person(f"p{i}", login=T - 9000 + i), pid=1000 + i, since=T - 8000 + i) for i in range(12)]
    crowd[3].doubt = "its parent had exited"
    who, note = decide(TMUX, 212, person("jim"), crowd)
    assert who.confidence == UNKNOWN and len(who.candidates) == 5
    assert [c.person for c in who.candidates] == ["p11", "p10", "p9", "p8", "jim"]
    assert any("8 more candidate logins left out" in n for n in who.notes), who.notes
    assert "p11" in note and "7 more" in note and "p4" not in note


def test_one_recorded_client_beside_an_earlier_unrecorded_connection_is_said_with_it(tmp_path):
    # an accept at 50 s whose client went unrecorded (a renamed tmux, a lost record) has no known
    # end; bob, attached at 101 s, was "the only client attached" without a word of it - whoever
    # came at 50 s may be who typed. As with no recorded client: at most inferred, with the note.
    early = [B.uaccept(50, 212, "c-unseen", path=SOCK)]
    tr = trace_of(tmp_path, jims_session() + early + bobs_attach() + typed_in_the_pane())
    assert (tr.attributed.user, tr.attributed.confidence) == ("bob", INFERRED)
    assert "1 connection from a client the agent did not record" in tr.shared[0].note
    assert any("did not record" in n for n in tr.attributed.notes), tr.attributed.notes


def test_the_starter_stays_listed_in_a_crowd_when_it_is_also_a_client():
    # jim started the server and attached first, long ago: _add merged the starter's evidence into
    # his client's candidate, which the cap then cut as the oldest client - the starter vanished
    crowd = [client(person(f"p{i}", login=T - 9000 + i), pid=1000 + i, since=T - 8000 + i) for i in range(6)]
    crowd.append(client(person("jim"), pid=999, since=T - 8500))
    who, _ = decide(TMUX, 212, person("jim"), crowd)
    assert [c.person for c in who.candidates] == ["p5", "p4", "p3", "p2", "jim"]
    (jim,) = [c for c in who.candidates if c.person == "jim"]
    assert any(e.startswith("started the tmux server") for e in jim.evidence)
