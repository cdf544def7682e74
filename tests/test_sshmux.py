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
    assert ssh_options(["ssh", "-fN", "-o", "ControlMaster=yes", "ops@b"]) == {"f": None, "N": None, "o": "ControlMaster=yes"}
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
