"""Issue 17, rule 2: a broken parent chain falls back to the login of the kernel's audit
session, taken from the nearest process on the chain that has one, labelled inferred with
the reason. Never "who is logged in now": the login must have begun before the process."""

from kit import Host, ssh_session

from test_trace import IDENT, JIM_FP, trace_one

H = Host("web-1", "10.0.2.30")


def broken_chain(ses=7, auid=1001):
    """jim logs in (ses 7). Later the agent restarts: pid 600 is recorded with no parent and
    no session id (snapshot), its child 610 carries ses/auid, and the matched command 620 has
    no ses on itself."""
    ev = ssh_session(H, 0, 200, "jim", 1001, "203.0.113.7", 53122, JIM_FP, ses=7)
    ev += [H.exec(500, 600, ["bash"], uid=1001, snapshot=True),
           H.fork(510, 610, 600), H.exec(510.01, 610, ["make", "deploy"], uid=1001, auid=auid, ses=ses),
           H.fork(520, 620, 610), H.exec(520.01, 620, ["rm", "-rf", "/srv/data"], uid=1001)]
    return ev


def test_a_broken_chain_joins_the_login_by_the_session_of_a_process_deeper_in_the_chain():
    (tr,) = trace_one(broken_chain(), "rm -rf")
    assert tr.attributed.user == "jim"
    assert [s.pid for s in tr.chain] == [200, 600, 610, 620]
    assert tr.chain[0].login["ses"] == 7
    top = tr.chain[1]
    assert top.inferred
    assert top.note == ("inferred: the parent chain breaks at pid 600 (its parent was not recorded); "
                        "joined to jim's login by audit session 7 (of pid 610)")
    assert any("audit session 7" in c for c in tr.notes)


def test_a_later_login_by_someone_else_is_never_chosen():
    ev = broken_chain()
    # bob logs in after the command ran, with his own session: he is "logged in now"
    ev += ssh_session(H, 600, 300, "bob", 1002, "198.51.100.23", 41870, ses=9)
    (tr,) = trace_one(ev, "rm -rf")
    assert tr.attributed.user == "jim"
    assert tr.chain[0].login["ses"] == 7


def test_a_login_that_began_after_the_process_is_not_its_session():
    ev = broken_chain(ses=9)
    # ses 9's login (bob's) begins only after make started: it cannot be make's session
    ev += ssh_session(H, 600, 300, "bob", 1002, "198.51.100.23", 41870, ses=9)
    (tr,) = trace_one(ev, "rm -rf")
    assert tr.attributed.user != "bob"
    assert not any(s.login for s in tr.chain)


def test_a_session_whose_login_uid_is_another_account_is_not_joined():
    # make claims ses 7 but loginuid 1002 (bob): ses 7 is jim's login, so the evidence disagrees
    (tr,) = trace_one(broken_chain(auid=1002), "rm -rf")
    assert not any(s.login for s in tr.chain)
    assert tr.attributed.how.startswith("no login")
