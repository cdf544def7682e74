"""The stitching rules, one by one, on plain data (no store)."""

import pytest

from whodid.tracer.identity import Identity, Person
from whodid.tracer.stitch import (INFERRED, OBSERVED, PERSON_UNKNOWN, UNKNOWN, Candidate, HopCandidate, Step,
                                  attribute, gaps, link, pick_hop, privilege, program_name, rank_candidates,
                                  requested_user, summary)


def step(proc=1, host="a", user="jim", argv=("bash",), start=0.0, edge="fork", login=None, login_user=None):
    return Step(node=f"{proc}@{start}", proc=proc, host=host, pid=proc, user=user, login_user=login_user,
                command=" ".join(argv), argv=list(argv), start=start, edge=edge, login=login)


@pytest.mark.parametrize("argv, name", [(["-bash"], "bash"), (["/usr/bin/sudo", "-i"], "sudo"),
                                        (["sshd:", "jim"], "sshd:"), ([], "")])
def test_program_name(argv, name):
    assert program_name(argv) == name


def test_link_kinds():
    bash = step(1, user="ec2-user")
    assert link(bash, step(2, user="ec2-user", argv=["ls"])) == ("fork", None)
    assert link(bash, step(1, user="ec2-user", argv=["ls"])) == ("exec", None)
    assert link(bash, step(3, host="b", user="ec2-user")) == ("ssh", None)
    # the user changes at the setuid-root sudo itself, and the change is named after sudo
    assert link(bash, step(4, user="root", argv=["sudo", "-i"])) == ("sudo", "ec2-user -> root via sudo")
    # su run by root switches down to bob in its child
    su = step(5, user="root", argv=["su", "-", "bob"])
    assert link(su, step(6, user="bob", argv=["-bash"])) == ("su", "root -> bob via su")
    # any other change of effective user is a setuid program
    assert link(bash, step(7, user="root", argv=["/usr/bin/passwd"])) == ("setuid", "ec2-user -> root via passwd (setuid)")


def linked(chain):
    """Edges as trace.py assigns them along a chain: each link sees its neighbours."""
    out = []
    for i in range(1, len(chain)):
        chain[i].edge, chain[i].note = link(chain[i - 1], chain[i], before=chain[i - 2] if i >= 2 else None,
                                            after=chain[i + 1] if i + 1 < len(chain) else None,
                                            last=i == len(chain) - 1)
        out.append((chain[i].edge, chain[i].note))
    return out


def test_sudo_u_ops_is_sudo_to_ops_not_a_stop_at_root():
    # what the kernel records: jim's shell, sudo running setuid-root, the command sudo started as ops
    chain = [step(1, user="jim"), step(2, user="root", argv=["sudo", "-u", "ops", "sh"]),
             step(3, user="ops", argv=["sh"])]
    assert linked(chain) == [("fork", "sudo runs as root on the way from jim to ops"),
                             ("sudo", "jim -> ops via sudo")]
    assert privilege(chain) == ["sudo to ops"]


def test_su_dash_ops_by_a_person_is_su_to_ops():
    chain = [step(1, user="jim"), step(1, user="root", argv=["su", "-", "ops"], start=1),
             step(2, user="ops", argv=["-bash"], start=2)]
    assert linked(chain) == [("exec", "su runs as root on the way from jim to ops"), ("su", "jim -> ops via su")]
    assert privilege(chain) == ["su to ops"]


def test_plain_sudo_is_still_sudo_to_root():
    chain = [step(1, user="jim"), step(2, user="root", argv=["sudo", "systemctl"]),
             step(3, user="root", argv=["systemctl"])]
    assert linked(chain) == [("sudo", "jim -> root via sudo"), ("fork", None)]
    assert privilege(chain) == ["sudo to root"]
    # sudo su - ops: sudo made root, then su made ops
    chain = [step(1, user="jim"), step(2, user="root", argv=["sudo", "su", "-", "ops"]),
             step(3, user="root", argv=["su", "-", "ops"]), step(4, user="ops", argv=["-bash"])]
    assert [e for e, _ in linked(chain)] == ["sudo", "fork", "su"]
    assert privilege(chain) == ["sudo to root", "su to ops"]


def test_a_chain_ending_at_sudo_u_ops_names_ops_from_its_arguments():
    chain = [step(1, user="jim"), step(2, user="root", argv=["sudo", "-u", "ops", "true"])]
    assert linked(chain) == [("sudo", "jim -> ops via sudo, as its arguments ask (sudo itself runs as root)")]
    assert privilege(chain) == ["sudo to ops"]
    # root running su - ops, matched at su itself
    chain = [step(1, user="root"), step(2, user="root", argv=["su", "-", "ops", "-c", "id"])]
    assert linked(chain) == [("su", "root -> ops via su, as its arguments ask (su itself runs as root)")]
    assert privilege(chain) == ["su to ops"]


@pytest.mark.parametrize("argv, user", [
    (["sudo", "cmd"], "root"), (["sudo", "-i"], "root"), (["/usr/bin/sudo", "-u", "ops", "cmd"], "ops"),
    (["sudo", "-uops", "cmd"], "ops"), (["sudo", "-iu", "ops"], "ops"), (["sudo", "--user=ops", "cmd"], "ops"),
    (["sudo", "--user", "ops", "cmd"], "ops"), (["sudo", "-g", "adm", "cmd", "-u", "x"], "root"),
    (["sudo", "-u", "#0", "cmd"], "root"), (["sudo", "-u", "#1001", "cmd"], "uid 1001"),
    (["sudoedit", "-u", "ops", "f"], "ops"), (["doas", "-u", "ops", "cmd"], "ops"),
    (["pkexec", "--user", "ops", "cmd"], "ops"),
    (["su"], "root"), (["su", "-"], "root"), (["su", "-", "ops"], "ops"), (["su", "-l", "ops", "-c", "id"], "ops"),
    (["su", "-c", "id", "ops"], "ops"), (["su", "-s", "/bin/sh", "ops"], "ops"), (["su", "--", "ops"], "ops"),
    (["runuser", "-u", "ops", "--", "id"], "ops"), (["runuser", "-l", "ops", "-c", "id"], "ops"),
    (["bash"], None), ([], None)])
def test_requested_user(argv, user):
    assert requested_user(argv) == user


def cand(proc, ts, lport=40000, laddr="10.0.0.10", raddr="10.0.1.20", rport=22, host="jump"):
    return HopCandidate(proc=proc, ts=ts, laddr=laddr, lport=lport, raddr=raddr, rport=rport, host=host)


LOGIN = {"ts": 100.0, "raddr": "10.0.0.10", "rport": 40000, "laddr": "10.0.1.20", "lport": 22}


def test_hop_exact_match_is_observed():
    hit, inferred, note = pick_hop(LOGIN, [cand(7, 99.9)], [], skew=120)
    assert (hit.proc, inferred) == (7, False)
    assert note == "connection 10.0.0.10:40000 -> 10.0.1.20:22 seen on both hosts"


def test_hop_prefers_latest_exact_candidate_not_after_the_login_beyond_skew():
    # The same source port used twice within the window: the later one before the login wins;
    # one 10 minutes after the login cannot be its cause, even with skew.
    hit, _, _ = pick_hop(LOGIN, [cand(1, 10.0), cand(2, 99.0), cand(3, 700.0)], [], skew=120)
    assert hit.proc == 2


def test_hop_allows_clock_skew():
    hit, _, _ = pick_hop(LOGIN, [cand(1, 150.0)], [], skew=120)
    assert hit.proc == 1


def test_hop_exact_candidates_to_another_server_lose_to_the_right_one():
    other = cand(1, 99.9, raddr="10.9.9.9")
    right = cand(2, 99.0)
    assert pick_hop(LOGIN, [other, right], [], skew=120)[0].proc == 2


def test_hop_by_address_is_marked_inferred_with_the_reason():
    hit, inferred, note = pick_hop(LOGIN, [], [cand(9, 98.0, lport=None)], skew=120)
    assert (hit.proc, inferred) == (9, True)
    assert "inferred" in note and "source port 40000 was not recorded" in note


def test_no_hop_means_the_login_is_the_origin():
    assert pick_hop(LOGIN, [], [], skew=120) == (None, False, None)


JIM_FP, BOB_FP = "SHA256:jimkey", "SHA256:bobkey"
IDENT = Identity(people=(Person("jim", ssh_keys=(JIM_FP,)), Person("bob", ssh_keys=(BOB_FP,),
                                                                    accounts=("robert@laptop-*",))))


def login(user, fp=None, ts=0.0, raddr="203.0.113.7"):
    return {"id": 1, "ts": ts, "user": user, "key_fp": fp, "method": "publickey", "raddr": raddr, "rport": 1}


def test_attribution_by_key_on_a_shared_account():
    chain = [step(1, user="ec2-user", edge="login", login=login("ec2-user", JIM_FP)), step(2, user="root")]
    who = attribute(chain, IDENT)
    assert (who.user, who.account, who.source) == ("jim", "ec2-user", "203.0.113.7")
    assert "belongs to jim" in who.how


def test_attribution_by_account_mapping():
    chain = [step(1, host="laptop-bob", user="robert", edge="login", login=login("robert"))]
    assert attribute(chain, IDENT).user == "bob"


def test_shared_account_without_a_known_key_says_what_to_configure():
    chain = [step(1, user="ec2-user", edge="login", login=login("ec2-user", "SHA256:unknown"))]
    who = attribute(chain, IDENT)
    # issue 17: a shared account is never the person; the account and the login stay as evidence
    assert (who.user, who.account, who.confidence) == (PERSON_UNKNOWN, "ec2-user", UNKNOWN)
    assert any("shared account" in n and "people" in n for n in who.notes)


def test_personal_account_needs_no_mapping():
    chain = [step(1, user="carol", edge="login", login=login("carol", "SHA256:c"))]
    who = attribute(chain, Identity())
    assert (who.user, who.notes) == ("carol", [])


def test_keys_on_later_hops_corroborate_or_conflict():
    origin = step(1, user="jim", edge="login", login=login("jim", JIM_FP))
    hop_jim = step(2, host="b", user="ec2-user", edge="ssh", login=login("ec2-user", JIM_FP))
    hop_bob = step(3, host="c", user="ec2-user", edge="ssh", login=login("ec2-user", BOB_FP))
    assert any(n.startswith("corroborated") for n in attribute([origin, hop_jim], IDENT).notes)
    notes = attribute([origin, hop_bob], IDENT).notes
    assert any(n.startswith("conflict") and "bob" in n for n in notes)
    assert attribute([origin, hop_bob], IDENT).user == "jim"      # the observed chain decides


def test_no_login_names_the_scheduler():
    chain = [step(1, user="root", argv=["/usr/sbin/cron", "-f"]), step(2, user="root", argv=["backup.sh"])]
    who = attribute(chain, IDENT)
    assert who.login_time is None
    # issue 17: root's cron job names no person, and the How says why after naming the scheduler
    assert who.how.startswith("no login: scheduled by cron on a, as root; root is not a person")
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN)


def test_gaps_over_threshold_are_labelled():
    chain = [step(1, start=0), step(2, start=60), step(3, start=60 + 3 * 3600 + 125)]
    assert gaps(chain, 300) == [{"after": 1, "before": 2, "seconds": 10925.0, "label": "paused 3h 02m"}]


def test_summary_names_person_hosts_accounts_and_privilege():
    chain = [step(1, host="jump-box", user="jim", edge="login", login=login("jim", JIM_FP)),
             step(2, host="config-server", user="ec2-user", edge="ssh", login=login("ec2-user", JIM_FP)),
             step(3, host="config-server", user="root", edge="sudo", argv=["sudo", "-i"])]
    who = attribute(chain, IDENT)
    assert summary(chain, who) == "jim -> jump-box -> config-server (ec2-user), sudo to root"


def test_hop_through_nat_matches_the_source_port_but_is_marked_inferred():
    # The client connected to a public address; the server saw its private one.
    hit, inferred, note = pick_hop(LOGIN, [cand(4, 99.0, raddr="198.51.100.1")], [], skew=120)
    assert (hit.proc, inferred) == (4, True)
    assert "NAT" in note


# --- issue 17, rule 3: how sure an attribution is (docs/attribution.md) ---------------------------

def test_an_inferred_link_makes_a_named_person_inferred_not_observed():
    origin = step(1, user="jim", edge="login", login=login("jim", JIM_FP))
    hop = step(2, host="b", user="jim", edge="ssh", login=login("jim", JIM_FP))
    assert attribute([origin, hop], IDENT).confidence == OBSERVED
    hop.inferred = True                     # a hop matched by address only (NAT), say
    assert attribute([origin, hop], IDENT).confidence == INFERRED


def test_root_or_a_bare_uid_login_is_never_the_person_even_unshared():
    ident = Identity(shared_accounts=())    # root and bare uids need no listing
    for account in ("root", "uid 4242"):
        who = attribute([step(1, user=account, edge="login", login=login(account))], ident)
        assert (who.user, who.account, who.confidence) == (PERSON_UNKNOWN, account, UNKNOWN)
        assert [c.account for c in who.candidates] == [account]


def test_a_later_hops_key_is_a_candidate_not_the_answer_for_a_shared_origin():
    # the jump box's shared account holds jim's key: whoever used it is not thereby jim
    origin = step(1, user="ec2-user", edge="login", login=login("ec2-user", "SHA256:stranger"))
    hop = step(2, host="b", user="deploy", edge="ssh", login=login("deploy", JIM_FP))
    who = attribute([origin, hop], IDENT)
    assert (who.user, who.confidence) == (PERSON_UNKNOWN, UNKNOWN)
    assert [(c.person, c.account, c.host) for c in who.candidates] == [("ec2-user", "ec2-user", "a"),
                                                                       ("jim", "deploy", "b")]


def test_a_login_uid_on_the_far_side_of_a_hop_is_not_the_origins():
    # gitlab-runner (no login uid) ssh'es as deploy: deploy's login uid is that login's, not the runner's
    chain = [step(1, user="gitlab-runner", argv=["gitlab-runner", "run"]),
             step(2, host="b", user="deploy", edge="ssh", login=login("deploy")),
             step(3, host="b", user="deploy", login_user="deploy")]
    chain[2].login_uid = 1100
    who = attribute(chain, Identity())
    assert (who.user, who.confidence) == ("gitlab-runner", INFERRED)


def test_candidates_rank_by_evidence_then_the_latest_login_and_say_how_many_were_left_out():
    def cand(ts):
        return Candidate(person=f"p{ts}", account="root", host="a", login_time=ts, source=None, key_fp=None)
    found = [(1, cand(1)), (3, cand(2)), (1, cand(5)), (7, cand(0)), (1, cand(4))]
    kept, left = rank_candidates(found, cap=3)
    assert ([c.login_time for c in kept], left) == ([0, 2, 5], 2)
    assert rank_candidates(found)[1] == 0


def test_a_step_in_another_pid_namespace_says_so_and_one_in_the_same_does_not():
    from whodid.tracer.stitch import Step, namespace_change
    def step(pidns, host="a", container=None):
        return Step(node="n", proc=1, host=host, pid=1, user="jim", login_user=None, command="sh",
                    argv=["sh"], start=0.0, pidns=pidns, container=container)
    assert namespace_change(step(4026531836), step(4026532301)) == "in another pid namespace (pid:[4026532301])"
    assert "container web" in namespace_change(step(4026531836), step(4026532301, container="web"))
    assert namespace_change(step(4026531836), step(4026531836)) is None
    assert namespace_change(step(None), step(4026532301)) is None            # not recorded: nothing to say
    assert namespace_change(step(1, host="a"), step(2, host="b")) is None    # an ssh hop, not a namespace
