"""The ssh master pairing rule (tracer/sshmux.py): which mux client asked a master connection for
a channel, by order and time; unsure -> candidates, never a silent guess. Small hand-made facts,
one rule each; the timings follow the spike's capture (/work/spike19/t3: connect, accept and the
server's fork within 2 ms on loopback)."""

from whodid.tracer.sshmux import (SESSION, TCP, Channel, MuxClient, asks_for, is_control, opens_own_channel,
                                  pair, ssh_options)

SSH = ("ssh", "-o", "ControlPath=/tmp/cm-%r@%h:%p")


def client(proc, ts, *extra, until=None, host="ops@b"):
    return MuxClient(proc=proc, pid=proc, ts=ts, until=until, argv=(*SSH, *extra, host, "id"))


def chan(proc, ts, kind=SESSION, until=None):
    return Channel(kind=kind, ts=ts, proc=proc, pid=proc, until=until)


def go(channels, clients, target, own_first=False, rtt=5.0, skew=2.0):
    return pair(channels, clients, target, own_first=own_first, rtt=rtt, skew=skew)


def test_ssh_options_read_combined_flags_and_values_up_to_the_destination():
    assert ssh_options(["ssh", "-fN", "-o", "ControlMaster=yes", "ops@b"]) == \
        {"f": None, "N": None, "o": "ControlMaster=yes"}
    assert ssh_options(["ssh", "-S/tmp/cm", "-W", "h:22", "ops@b", "-N"]) == {"S": "/tmp/cm", "W": "h:22"}
    assert ssh_options(["ssh", "-Nf"]) == {"N": None, "f": None}
    assert is_control(["ssh", "-S", "/tmp/cm", "-O", "check", "b"]) and is_control(["ssh", "-Oexit", "b"])
    assert not is_control(["ssh", "b", "-O", "exit"])                  # the remote command's words
    assert asks_for(["ssh", "-W", "%h:%p", "b"]) == TCP and asks_for(["ssh", "b", "id"]) == SESSION
    assert not opens_own_channel(["ssh", "-fN", "-M", "b"]) and opens_own_channel(["ssh", "-M", "b"])
    assert opens_own_channel(["ssh", "-f", "b", "sleep 9"])


def test_each_channel_pairs_with_the_client_that_asked_in_its_turn():
    jim, bob = client(1, 10.0), client(2, 20.0)
    c1, c2 = chan(11, 10.01), chan(12, 20.002)
    assert go([c1, c2], [jim, bob], c2).asker == bob
    assert go([c1, c2], [jim, bob], c1).asker == jim


def test_control_commands_ask_for_nothing_and_are_dropped():
    check, bob = client(1, 10.0, "-O", "check"), client(2, 10.5)
    c = chan(12, 10.6)
    assert go([c], [check, bob], c).asker == bob


def test_a_tcp_channel_pairs_with_a_W_client_and_a_session_with_a_session_client():
    # bob's -W (ProxyJump) and jim's session asked at the same moment: the kinds tell them apart
    bob, jim = client(1, 10.0, "-W", "10.0.0.9:22"), client(2, 10.0)
    tcp, ses = chan(21, 10.01, TCP), chan(22, 10.01)
    assert go([tcp, ses], [bob, jim], tcp).asker == bob
    assert go([tcp, ses], [bob, jim], ses).asker == jim


def test_the_masters_own_first_session_is_its_own():
    first, later = chan(11, 5.0), chan(12, 20.0)
    bob = client(2, 19.99)
    assert go([first, later], [bob], first, own_first=True).own
    assert go([first, later], [bob], later, own_first=True).asker == bob
    # with -N there is no own channel: the first channel is a client's
    assert go([first, later], [client(1, 4.99), bob], first).asker.proc == 1


def test_a_client_outside_the_time_window_cannot_have_asked():
    early, c = client(1, 0.0), chan(11, 60.0)
    p = go([c], [early], c)
    assert p.asker is None and p.candidates == [early]     # the only client, offered, never named
    late = client(2, 63.0)                                   # after the channel, more than the skew
    assert go([c], [late], c).asker is None


def test_a_client_that_exited_before_the_channel_began_did_not_ask_for_it():
    gone, alive = client(1, 10.0, until=10.1), client(2, 10.2)
    c = chan(11, 14.0)
    assert go([c], [gone, alive], c).asker == alive


def test_a_failed_request_leaves_the_pairing_unsure_and_lists_both():
    # two requests, one channel: either may have failed, and both were alive
    jim, bob = client(1, 10.0), client(2, 10.3)
    c = chan(11, 10.5)
    p = go([c], [jim, bob], c)
    assert p.asker is None and p.candidates == [jim, bob] and "not known" in p.why


def test_the_session_s_end_settles_which_client_asked_when_the_order_cannot():
    jim, bob = client(1, 10.0, until=11.0), client(2, 10.3, until=40.0)
    c = chan(11, 10.5, until=40.01)
    assert go([c], [jim, bob], c, skew=0.5).asker == bob


def test_a_lost_channel_does_not_shift_every_later_pairing():
    # the fork of jim's channel was lost: pairing by position (channel 1 <-> client 1) would give
    # bob's channel to jim and carl's to bob; the time window keeps each with its own asker
    jim, bob, carl = client(1, 10.0), client(2, 30.0), client(3, 50.0)
    c2, c3 = chan(12, 30.01), chan(13, 50.01)
    assert go([c2, c3], [jim, bob, carl], c2).asker == bob
    assert go([c2, c3], [jim, bob, carl], c3).asker == carl


def test_no_client_at_all_gives_no_asker_and_no_candidates():
    c = chan(11, 10.0)
    p = go([c], [], c)
    assert p.asker is None and p.candidates == [] and not p.own


# --- the Tracer over a master (trace.py: _shared_master), on small stores --------------------

from kit import Host, ssh_session, store_with                                    # noqa: E402

from whodid.tracer import Identity, Person, Query, Tracer                         # noqa: E402
from whodid.tracer.sharing import ASKED, SSH_MASTER                               # noqa: E402
from whodid.tracer.stitch import INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN      # noqa: E402

JUMP, DB, TARGET = Host("jump", "10.0.0.10"), Host("db", "10.0.1.20"), Host("target", "10.0.2.30")
JIM_FP, BOB_FP = "SHA256:jim", "SHA256:bob"
IDENT = Identity(people=(Person("jim", ssh_keys=(JIM_FP,)), Person("bob", ssh_keys=(BOB_FP,))))
SOCK = "/tmp/cm-ec2-user@db:22"
MASTER = ["ssh", "-fN", "-o", "ControlMaster=yes", "-o", "ControlPath=/tmp/cm-%r@%h:%p", "-o", "ControlPersist=60",
          "ec2-user@db"]


def master_story(master_argv=MASTER, mux=True, bob=("bob", 1002, BOB_FP)):
    """jim logs in to jump and opens a master to ec2-user@db with his key (ssh -fN: the ssh
    that connected forks the master, pid 211, and exits); bob logs in to jump and, as root
    (sudo), asks jim's master for a session that deletes the cluster on db. On db: the master's
    login (jim's key), its session process (401, no exec) and its fork for bob's session."""
    ev = ssh_session(JUMP, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP)
    ev += [JUMP.fork(100, 210, 201), JUMP.exec(100.01, 210, master_argv, uid=1001, auid=1001, ses=200),
           JUMP.connect(100.05, 210, DB.addr, 22, lport=40001), JUMP.fork(100.8, 211, 210), JUMP.exit(100.81, 210)]
    ev += [DB.exec(0, 100, ["/usr/sbin/sshd", "-D"], snapshot=True), DB.fork(100.1, 400, 100),
           DB.exec(100.11, 400, ["sshd:", "ec2-user", "[priv]"]),
           DB.login(100.3, 400, "ec2-user", JUMP.addr, 40001, key_fp=JIM_FP, ses=7), DB.fork(100.35, 401, 400)]
    ev += ssh_session(JUMP, 200, 300, bob[0], bob[1], "198.51.100.23", 41870, bob[2])
    ev += mux_client(310, 301, bob[1], 300, 300.0, ["ec2-user@db", "./run"], "c-bob", until=310.0,
                     sudo=True, mux=mux)
    ev += channel(410, 300.06, ["aws", "eks", "delete-cluster"], until=309.9)
    return ev


def mux_client(pid, shell, uid, ses, ts, args, conn, until, sudo=False, mux=True):
    """A person's ssh (from their shell; through sudo when `sudo`) asking jim's master (211)."""
    argv = ["ssh", "-o", f"ControlPath={SOCK}", *args]
    ev, ses_uid = [], uid
    if sudo:
        ev += [JUMP.fork(ts, pid - 1, shell), JUMP.exec(ts + 0.01, pid - 1, ["sudo", *argv], uid=uid, euid=0, auid=uid,
                                                       ses=ses),
               JUMP.cred(ts + 0.02, pid - 1, uid, 0), JUMP.fork(ts + 0.03, pid, pid - 1)]
        uid = 0
    else:
        ev += [JUMP.fork(ts + 0.03, pid, shell)]
    ev += [JUMP.exec(ts + 0.04, pid, argv, uid=uid, auid=ses_uid, ses=ses)]
    if mux:
        ev += [JUMP.uconnect(ts + 0.05, pid, SOCK, conn, peer=(211, 211000)),
               JUMP.uaccept(ts + 0.051, 211, conn, peer=(pid, pid * 1000))]
    return ev + [JUMP.exit(until, pid)]


def channel(pid, ts, argv, until):
    """The master connection's session process on db forks a session that runs argv (by a
    script: only the command itself carries its words)."""
    return [DB.fork(ts, pid, 401), DB.exec(ts + 0.01, pid, ["bash", "-c", "./run"], uid=1000, auid=1000, ses=7),
            DB.exec(ts + 0.02, pid, argv, uid=1000, auid=1000, ses=7), DB.exit(until, pid)]


def traced(events, pattern="delete-cluster", ident=IDENT):
    (tr,) = Tracer(store_with(events), ident).find(Query(pattern=pattern, limit=5))
    return tr


def words(tr):
    return "\n".join([tr.attributed.how, *tr.attributed.notes, *tr.notes, *(s.note or "" for s in tr.chain)])


def test_bob_asking_jims_master_as_root_is_bob_never_jim_and_never_corroborated():
    tr = traced(master_story())
    who = tr.attributed
    assert (who.user, who.confidence, who.account) == ("bob", INFERRED, "bob"), who
    assert "corroborated" not in words(tr) and "conflict" not in words(tr), words(tr)
    assert "over jim's master connection (pid 211 on jump), asked for by bob's ssh (pid 310)" in who.notes
    assert [(s.host, s.edge) for s in tr.chain][:1] == [("jump", "login")] and tr.chain[0].login["user"] == "bob"
    hop = next(i for i, s in enumerate(tr.chain) if s.host == "db")
    assert tr.chain[hop].edge == "ssh" and tr.chain[hop].inferred and tr.chain[hop - 1].pid == 310
    (shared,) = tr.shared
    assert (shared.kind, shared.host, shared.pid, shared.path, shared.step) == (SSH_MASTER, "jump", 211, SOCK, hop)
    assert shared.starter.user == "jim"
    (client,) = shared.clients
    assert (client.role, client.pid, client.host, client.who.user) == (ASKED, 310, "jump", "bob")
    assert client.since is not None and client.until is not None


def test_before_the_fix_the_master_s_owner_was_named_and_corroborated_when_no_client_is_known():
    # what whodid said before (and still says for an ssh that is no master by any evidence): the
    # master's own chain, jim, corroborated by his key on db - which is why the pairing matters
    plain = ["ssh", "ec2-user@db"]
    tr = traced(master_story(master_argv=plain, mux=False))
    assert tr.attributed.user == "jim" and any(n.startswith("corroborated") for n in tr.attributed.notes)
    assert tr.shared == []


def test_a_master_by_its_arguments_whose_clients_were_not_recorded_is_person_unknown():
    tr = traced(master_story(mux=False))
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    assert "corroborated" not in words(tr)
    assert [(c.person, c.named) for c in who.candidates] == [("jim", True)]
    assert "started the master connection (pid 211 on jump)" in who.candidates[0].evidence
    assert "no client of its control socket was recorded" in who.how


def test_two_clients_asking_in_the_same_turn_make_the_person_unknown_and_list_both_and_the_owner():
    ev = master_story()
    ev += mux_client(220, 201, 1001, 200, 299.9, ["ec2-user@db", "./run"], "c-jim", until=310.0)
    tr = traced(ev)
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    cands = [(c.person, c.evidence[0].split(" ")[0]) for c in who.candidates]
    assert cands == [("jim", "its"), ("bob", "its"), ("jim", "started")], cands
    assert "not known" in who.how and "corroborated" not in words(tr)
    (shared,) = tr.shared
    assert [c.who.user for c in shared.clients] == ["jim", "bob"] and all(c.role == ASKED for c in shared.clients)


def test_a_failed_request_before_bob_s_is_settled_by_the_session_s_end():
    ev = master_story()
    ev += mux_client(220, 201, 1001, 200, 299.9, ["ec2-user@db", "./run"], "c-jim", until=300.0)
    assert traced(ev).attributed.user == "bob"


def test_jims_own_session_over_his_master_is_jims_inferred_with_the_note():
    ev = master_story()
    ev += mux_client(220, 201, 1001, 200, 500.0, ["ec2-user@db", "./run"], "c-jim", until=502.0)
    ev += channel(420, 500.06, ["rm", "-rf", "/srv"], until=501.9)
    tr = traced(ev, "rm -rf")
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", INFERRED)
    assert "over jim's master connection (pid 211 on jump), asked for by jim's ssh (pid 220)" in tr.attributed.notes
    assert "corroborated" not in words(tr)


def test_the_masters_own_first_session_stays_the_masters_chain():
    own = ["ssh", "-o", "ControlMaster=yes", "-o", "ControlPath=/tmp/cm-%r@%h:%p", "ec2-user@db"]
    ev = master_story(master_argv=own)
    ev += channel(405, 100.4, ["aws", "s3", "ls"], until=150.0)             # the master's own shell
    tr = traced(ev, "s3 ls")
    assert tr.attributed.user == "jim" and tr.shared == []
    assert traced(ev).attributed.user == "bob"                              # the later one is still bob's


def test_proxyjump_through_the_master_is_the_W_client_s():
    ev = master_story()
    ev += mux_client(330, 301, 1002, 300, 600.0, ["-W", f"{TARGET.addr}:22", "ec2-user@db"], "c-bob-w", until=700.0)
    ev += [DB.connect(600.1, 401, TARGET.addr, 22, lport=50000)]
    ev += ssh_session(TARGET, 600.2, 700, "ec2-user", 1000, DB.addr, 50000, BOB_FP, ses=9)
    ev += [TARGET.fork(650, 710, 701), TARGET.exec(650.01, 710, ["terraform", "destroy"], uid=1000, auid=1000, ses=9)]
    tr = traced(ev, "terraform")
    assert (tr.attributed.user, tr.attributed.confidence) == ("bob", INFERRED), (tr.attributed, tr.chain)
    assert [s.host for s in tr.chain if s.edge in ("login", "ssh")] == ["jump", "db", "target"]
    (shared,) = tr.shared
    assert shared.starter.user == "jim" and [c.pid for c in shared.clients] == [330]
    assert "conflict" not in words(tr)


def test_plain_proxyjump_without_a_master_is_unchanged():
    # jim's `ssh -J jim@jump ec2-user@target` from outside: jump's session process connects on
    ev = ssh_session(JUMP, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP)
    ev += [JUMP.fork(5, 202, 200), JUMP.connect(5.1, 202, TARGET.addr, 22, lport=45000)]
    ev += ssh_session(TARGET, 5.2, 700, "ec2-user", 1000, JUMP.addr, 45000, JIM_FP, ses=9)
    ev += [TARGET.fork(9, 710, 701), TARGET.exec(9.01, 710, ["terraform", "destroy"], uid=1000, auid=1000, ses=9)]
    tr = traced(ev, "terraform")
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", OBSERVED) and tr.shared == []
    assert any(n.startswith("corroborated") for n in tr.attributed.notes)


def test_an_unrecorded_client_is_never_paired_with_a_client_that_did_not_ask():
    # bob's client went unrecorded (a renamed ssh, a ControlPath nobody watches); jim's recorded
    # client asked an hour before and has exited: bob's session is person unknown, not jim's
    ev = master_story(mux=False)
    ev += mux_client(220, 201, 1001, 200, 150.0, ["ec2-user@db", "./run"], "c-jim", until=152.0)
    ev += channel(405, 150.06, ["uptime"], until=151.9)
    tr = traced(ev)
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    assert "no client's request pairs with this channel" in who.how
    assert [c.evidence[0].split(" ")[0] for c in who.candidates] == ["its", "started"]


# --- stitch: a login carried over a master neither corroborates nor contradicts ---------------

from whodid.tracer.stitch import Step, attribute                                  # noqa: E402


def _login_step(host, pid, user, fp, start, **extra):
    login = {"id": pid, "proc": pid, "ts": start, "user": user, "method": "publickey", "key_fp": fp,
             "raddr": "10.0.0.1", "rport": 40000 + pid, **extra}
    return Step(node=f"{pid}@{start}", proc=pid, host=host, pid=pid, user=user, login_user=None,
                command="sshd", argv=["sshd"], start=start, edge="ssh", login=login)


def test_the_masters_key_on_a_later_login_is_explained_not_called_corroborated_or_conflict():
    origin = _login_step("jump", 1, "bob", BOB_FP, 1.0)
    origin.edge = "login"
    carried = {"master": "jim's master connection (pid 211 on jump)", "asked_by": "bob's ssh (pid 310)"}
    over = _login_step("db", 2, "ec2-user", JIM_FP, 2.0, over_master=carried)
    over.inferred = True
    who = attribute([origin, over], IDENT)
    assert who.user == "bob" and who.confidence == INFERRED
    (note,) = who.notes
    assert not note.startswith(("corroborated", "conflict")), note
    assert "is jim's master connection (pid 211 on jump); bob's ssh (pid 310) asked it" in note
    # the same hop without the mark: the old rule, which is right for a login of its own
    plain = _login_step("db", 2, "ec2-user", JIM_FP, 2.0)
    assert attribute([origin, plain], IDENT).notes[0].startswith("conflict")


def test_the_masters_key_is_no_candidate_for_a_shared_account_asker():
    origin = _login_step("jump", 1, "ec2-user", None, 1.0)
    origin.edge = "login"
    over = _login_step("db", 2, "ec2-user", JIM_FP, 2.0,
                       over_master={"master": "jim's master connection (pid 211 on jump)", "asked_by": None})
    who = attribute([origin, over], IDENT)
    assert who.user == PERSON_UNKNOWN and [c.account for c in who.candidates] == ["ec2-user"]
    over.login.pop("over_master")
    assert [c.person for c in attribute([origin, over], IDENT).candidates] == ["ec2-user", "jim"]


def test_when_no_client_fits_the_nearest_few_are_offered_not_every_client_the_master_ever_had():
    many = [client(i, 100.0 * i) for i in range(1, 40)]
    c = chan(99, 2050.0)                        # between client 20 (2000) and 21 (2100), beyond the window
    p = go([c], many, c)
    assert p.asker is None and [cl.proc for cl in p.candidates] == [18, 19, 20, 21, 22]


def test_two_clients_connecting_together_may_be_served_in_either_order():
    # jim and bob connect 0.2 s apart: their requests may cross, so the order of the connects
    # does not say whose channel came first - unless the sessions' ends do
    jim, bob = client(1, 10.0, until=10.5), client(2, 10.2, until=10.5)
    c1, c2 = chan(11, 10.3, until=10.5), chan(12, 10.31, until=10.5)
    p = go([c1, c2], [jim, bob], c1)
    assert p.asker is None and p.candidates == [jim, bob]
    jim, bob = client(1, 10.0, until=30.0), client(2, 10.2, until=10.5)
    c1, c2 = chan(11, 10.3, until=10.49), chan(12, 10.31, until=29.9)
    assert go([c1, c2], [jim, bob], c1, skew=0.5).asker == bob
    assert go([c1, c2], [jim, bob], c2, skew=0.5).asker == jim
    # a second apart and more: the order holds
    assert go([chan(11, 10.3), chan(12, 12.6)], [client(1, 10.0), client(2, 12.5)], chan(11, 10.3)).asker.proc == 1


def test_an_asker_on_a_shared_account_is_person_unknown_by_its_own_login_not_the_masters_key():
    # "bob" logged in to jump as the shared ec2-user with a key nobody mapped: the session is his
    # login's - person unknown, that login the candidate - and jim's key on the master's login is
    # no evidence about who asked
    tr = traced(master_story(bob=("ec2-user", 1000, "SHA256:unmapped")))
    who = tr.attributed
    assert (who.user, who.account) == (PERSON_UNKNOWN, "ec2-user"), who
    assert [(c.account, c.key_fp) for c in who.candidates] == [("ec2-user", "SHA256:unmapped")]
    assert "over jim's master connection (pid 211 on jump), asked for by the ssh of ec2-user (person unknown) " \
        "(pid 310)" in who.notes


def test_a_client_that_fits_another_channel_is_not_given_to_an_unrecorded_client_s_channel():
    # found in the lab (cm-renamed-bob): jim's client asked for c1 (its connect and exit fit);
    # 1.2 s after it ended, c2 opens for a client that was not recorded. Within the skew jim's
    # client could be c2's, but the whole pairing says it was c1's: c2's asker is not known
    jim = client(1, 10.0, until=14.0)
    c1, c2 = chan(11, 10.01, until=13.99), chan(12, 15.2, until=15.3)
    p = go([c1, c2], [jim], c2)
    assert p.asker is None and p.candidates == [jim] and "fits another channel better" in p.why
    assert go([c1, c2], [jim], c1).asker == jim


def test_a_session_found_already_running_is_not_the_masters_owners_by_default():
    # the agent started while bob's session ran: its process is known from /proc (parent and
    # all) but its fork was not seen. The master had recorded clients: no one is named, never
    # jim "corroborated"
    ev = master_story()
    ev += [DB.exec(400.0, 430, ["bash", "-c", "./run"], uid=1000, auid=1000, ses=7, ppid=401, pstart=401000,
                   snapshot=True),
           DB.exec(400.5, 431, ["terraform", "apply"], uid=1000, auid=1000, ses=7, ppid=430, pstart=430000,
                   snapshot=True)]
    tr = traced(ev, "terraform")
    assert (tr.attributed.user, tr.attributed.confidence) == (PERSON_UNKNOWN, UNKNOWN), (tr.attributed, tr.chain)
    assert "corroborated" not in words(tr)


# --- ssh port forwards: a hop through someone's -D/-L (trace.py: _shared_forward) -------------

from whodid.tracer.sharing import SSH_FORWARD, USED                             # noqa: E402
from whodid.tracer.sshmux import forwarded_ports                                 # noqa: E402


def test_forwarded_ports_read_D_L_and_their_o_spellings():
    assert forwarded_ports(["ssh", "-D", "1080", "db"]) == [(None, 1080)]
    assert forwarded_ports(["ssh", "-fNL", "5432:target:22", "db"]) == [(None, 5432)]
    assert forwarded_ports(["ssh", "-o", "DynamicForward=1080", "db"]) == [(None, 1080)]
    assert forwarded_ports(["ssh", "-o", "LocalForward=5432 target:22", "db"]) == [(None, 5432)]
    assert forwarded_ports(["ssh", "-L", "127.0.0.1:5432:t:22", "-D[::1]:9", "db"]) == [("127.0.0.1", 5432), ("::1", 9)]
    assert forwarded_ports(["ssh", "-D", "*:1080", "db"]) == [("*", 1080)]
    assert forwarded_ports(["ssh", "-L", "/tmp/s:t:22", "db"]) == []              # a unix socket: no port
    assert forwarded_ports(["ssh", "-W", "h:22", "db"]) == forwarded_ports(["ssh", "db", "-D", "1080"]) == []


def forwarder(fwd=("-D", "1080")):
    """jim logs in to jump and runs a plain ssh with a forward to ec2-user@db (pid 210, his key);
    db's login (400) and its session process (401)."""
    ev = ssh_session(JUMP, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP)
    ev += [JUMP.fork(100, 210, 201), JUMP.exec(100.01, 210, ["ssh", *fwd, "ec2-user@db"], uid=1001, auid=1001, ses=200),
           JUMP.connect(100.05, 210, DB.addr, 22, lport=40001)]
    ev += [DB.exec(0, 100, ["/usr/sbin/sshd", "-D"], snapshot=True), DB.fork(100.1, 400, 100),
           DB.exec(100.11, 400, ["sshd:", "ec2-user", "[priv]"]),
           DB.login(100.3, 400, "ec2-user", JUMP.addr, 40001, key_fp=JIM_FP, ses=7), DB.fork(100.35, 401, 400)]
    return ev


def forward_user(pid, shell, uid, ses, ts, port=1080, addr="127.0.0.1"):
    """A person's ssh to target (pid) whose ProxyCommand nc (pid + 1) connects to the forward."""
    return [JUMP.fork(ts, pid, shell),
            JUMP.exec(ts + 0.01, pid, ["ssh", "-o", f"ProxyCommand=nc -X 5 -x localhost:{port} %h %p",
                                       "ec2-user@target"], uid=uid, auid=uid, ses=ses),
            JUMP.fork(ts + 0.02, pid + 1, pid),
            JUMP.exec(ts + 0.03, pid + 1, ["nc", "-X", "5", "-x", f"localhost:{port}", "target", "22"], uid=uid,
                      auid=uid, ses=ses),
            JUMP.connect(ts + 0.04, pid + 1, addr, port, lport=51000 + pid, laddr=addr)]


def through_forward(ts, key=BOB_FP):
    """db's session process 401 connects to target (the forward's channel); a login there with
    `key` runs terraform."""
    ev = [DB.connect(ts, 401, TARGET.addr, 22, lport=50000)]
    ev += ssh_session(TARGET, ts + 0.1, 700, "ec2-user", 1000, DB.addr, 50000, key, ses=9)
    return ev + [TARGET.fork(ts + 50, 710, 701), TARGET.exec(ts + 50.01, 710, ["terraform", "destroy"], uid=1000,
                                                              auid=1000, ses=9)]


def bob_on_jump():
    return ssh_session(JUMP, 200, 300, "bob", 1002, "198.51.100.23", 41870, BOB_FP)


def test_bob_through_jims_L_forward_is_bob_inferred_and_the_forward_is_shown():
    ev = forwarder(("-L", "2222:target:22")) + bob_on_jump() + forward_user(310, 301, 1002, 300, 300.0, port=2222)
    tr = traced(ev + through_forward(300.1), "terraform")
    who = tr.attributed
    assert (who.user, who.confidence) == ("bob", INFERRED), (who, tr.chain)
    assert "through jim's ssh -L 2222:target:22 forward (pid 210 on jump), used by bob's nc (pid 311)" in who.notes
    assert "corroborated" not in words(tr) and "conflict" not in words(tr)
    hop = next(i for i, s in enumerate(tr.chain) if s.host == "db")
    assert tr.chain[hop].inferred and tr.chain[hop - 1].pid == 311
    (shared,) = tr.shared
    assert (shared.kind, shared.pid, shared.path, shared.step, shared.starter.user) == \
        (SSH_FORWARD, 210, "localhost:2222", hop, "jim")
    assert [(c.role, c.pid, c.who.user) for c in shared.clients] == [(USED, 311, "bob")]


def test_the_forward_given_by_o_DynamicForward_is_one_too():
    ev = forwarder(("-o", "DynamicForward=1080")) + bob_on_jump() + forward_user(310, 301, 1002, 300, 300.0)
    tr = traced(ev + through_forward(300.1), "terraform")
    assert (tr.attributed.user, tr.attributed.confidence) == ("bob", INFERRED)
    assert "corroborated" not in words(tr)


def test_jims_own_nc_through_his_own_forward_is_jims_inferred():
    ev = forwarder() + forward_user(220, 201, 1001, 200, 300.0)
    tr = traced(ev + through_forward(300.1, key=JIM_FP), "terraform")
    who = tr.attributed
    assert (who.user, who.confidence) == ("jim", INFERRED), who
    assert "through jim's ssh -D 1080 forward (pid 210 on jump), used by jim's nc (pid 221)" in who.notes
    assert "corroborated" not in words(tr)
    assert [c.who.user for c in tr.shared[0].clients] == ["jim"]


def test_two_peoples_connects_to_the_forward_in_one_window_are_person_unknown():
    ev = forwarder() + bob_on_jump() + forward_user(310, 301, 1002, 300, 300.0)
    ev += forward_user(230, 201, 1001, 200, 299.5)                     # jim's own nc, half a second before
    tr = traced(ev + through_forward(300.1), "terraform")
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    assert [(c.person, c.evidence[0].split(" ")[0]) for c in who.candidates] == \
        [("jim", "its"), ("bob", "its"), ("jim", "started")], who.candidates
    assert "connected to the forwarded port localhost:1080" in who.candidates[0].evidence[0]
    assert "corroborated" not in words(tr)
    assert [c.who.user for c in tr.shared[0].clients] == ["jim", "bob"]


def test_no_connect_to_the_forward_recorded_is_person_unknown_with_the_forwarder_as_candidate():
    # bob's nc went unrecorded (or bob reached a forward bound beyond localhost from elsewhere)
    ev = forwarder() + bob_on_jump() + through_forward(300.1)
    tr = traced(ev, "terraform")
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    assert [(c.person, c.evidence[0]) for c in who.candidates] == [("jim", "started the forward (pid 210 on jump)")]
    assert "no connect to its forwarded port was recorded" in who.how
    assert "corroborated" not in words(tr)


def test_a_connect_from_another_hosts_loopback_or_by_the_forwarder_itself_is_no_client():
    # db's own 127.0.0.1:1080 is not jump's forward, and the forwarder's own connects are its own
    ev = forwarder() + bob_on_jump() + [DB.fork(299, 450, 100), DB.exec(299.01, 450, ["nc", "localhost", "1080"]),
                                        DB.connect(300.0, 450, "127.0.0.1", 1080, lport=52000, laddr="127.0.0.1"),
                                        JUMP.connect(300.0, 210, "127.0.0.1", 1080, lport=52001, laddr="127.0.0.1")]
    tr = traced(ev + through_forward(300.1), "terraform")
    assert tr.attributed.user == PERSON_UNKNOWN and [c.evidence[0] for c in tr.attributed.candidates] == \
        ["started the forward (pid 210 on jump)"]


def test_a_session_of_the_forwarders_own_is_still_its_own():
    # jim's shell over his `ssh -D 1080 db`: a session (a fork of 401), not a forward's channel
    ev = forwarder() + bob_on_jump() + forward_user(310, 301, 1002, 300, 300.0)
    ev += [DB.fork(120, 405, 401), DB.exec(120.01, 405, ["rm", "-rf", "/srv"], uid=1000, auid=1000, ses=7)]
    tr = traced(ev, "rm -rf")
    assert (tr.attributed.user, tr.attributed.confidence) == ("jim", OBSERVED) and tr.shared == []


def test_a_later_key_of_another_person_past_the_forward_unsettles_the_answer():
    # bob's nc used jim's forward, but the login on target used jim's key (bob, root on jump, may
    # reach jim's agent; or the pairing by time is wrong): not "bob" with a conflict note below it
    ev = forwarder() + bob_on_jump() + forward_user(310, 301, 1002, 300, 300.0)
    tr = traced(ev + through_forward(300.1, key=JIM_FP), "terraform")
    who = tr.attributed
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN), who
    assert [(c.person, c.evidence[0].split(" ")[0]) for c in who.candidates] == \
        [("bob", "its"), ("jim", "the"), ("jim", "started")], who.candidates
    assert "belongs to jim" in who.how and "corroborated" not in words(tr)


def test_every_view_shows_the_forward_and_who_used_it_never_as_a_master():
    from test_shared_views import NOW, matches, shared_lines

    from whodid.tracer.render.html import render_html
    from whodid.tracer.render.text import render_trace
    ev = forwarder() + bob_on_jump() + forward_user(310, 301, 1002, 300, 300.0) + through_forward(300.1)
    tr = traced(ev, "terraform")
    out = render_trace(tr, NOW)
    assert "Shared session: ssh port forward pid 210 on jump, started by jim; used the forward for this hop: bob" in out
    (ss,) = matches(tr)["shared_sessions"]
    assert (ss["kind"], ss["path"], ss["clients"][0]["role"], ss["clients"][0]["person"]) == \
        ("ssh-forward", "localhost:1080", "used", "bob")
    (line,) = shared_lines(tr)
    assert "ssh port forward pid 210 on jump" in line and "*used the forward for this hop:* `bob" in line
    page = render_html(tr, NOW)
    assert "connected to the ssh port forward&#x27;s port (localhost:1080)" in page
    assert "  forwarded port localhost:1080" in out and "socket" not in out
    assert "master" not in out.split("Shared session:")[1].split("\n")[0]
