"""A TCP connection the agent saw established but not begun is said, not silently dropped (live,
BPF). The agent records a connect from two moments: SYN_SENT (who connects, kept in an LRU
table by socket) and ESTABLISHED (the addresses, and the record). A connection begun before the
agent loaded - or whose entry the table had to evict - used to vanish without a word; now it is
counted in the kernel and reported as a loss event.

To make a connection that starts before the agent and completes after it, without a firewall or
netem (neither is on this machine): a listener with backlog 0 whose accept queue is already full
drops every SYN (tcp_conn_request: the accept queue is full), so the client stays in SYN_SENT and
retransmits (1 s, 3 s, 7 s, 15 s...). Once the agent is up, accepting the queued connection makes
room, and the next retransmitted SYN completes the handshake."""

import select
import socket
import time

import pytest

from test_agent_live import REASON
from test_tcp_skipped_live import held_back_listener
from test_unix_live import OutAgent

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"BPF capture unavailable: {REASON}")


def test_a_connection_begun_before_the_agent_is_said_as_a_loss(tmp_path):
    listener, port, queued = held_back_listener()
    early = socket.socket()
    early.setblocking(False)
    assert early.connect_ex(("127.0.0.1", port)) in (115, 11)     # EINPROGRESS: its SYN is dropped
    time.sleep(0.3)
    assert not select.select([], [early], [], 0)[1], "the listener's full queue did not hold the SYN back"
    try:
        with OutAgent(tmp_path, prefixes=["/tmp/tmux-"], comms=["tmux"]) as agent:
            listener.accept()[0].close()                         # room: the next retransmit completes
            assert select.select([], [early], [], 60)[1], "the early connection never completed"
            assert early.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            listener.accept()[0].close()                         # the early one: room again
            late = socket.create_connection(("127.0.0.1", port), timeout=10)  # begun and completed under the agent
            late_port = late.getsockname()[1]
            listener.accept()[0].close()
            late.close()
    finally:
        for s in (early, queued, listener):
            s.close()
    unseen = [e for e in agent.kinds("loss") if "whose start the agent had not seen" in e["what"]]
    assert unseen and sum(e["count"] for e in unseen) >= 1, agent.kinds("loss")
    connects = [e for e in agent.kinds("connect") if e.get("rport") == port]
    assert [e["lport"] for e in connects] == [late_port], connects   # the early one is counted, not recorded


def test_an_aggregate_is_taken_out_of_the_kernels_table_in_one_step():
    """capture.take: the count read and the key deleted at once (no increment between them lost),
    and a key that is not there is None."""
    import ctypes

    from whodid.agent.bccload import load_bcc
    from whodid.agent.capture import take
    bpf = load_bcc().BPF(text="struct v { u64 count; u64 first; u64 last; };"
                              "BPF_HASH(h, u32, struct v, 16); int nothing(void *c) { return 0; }")
    table = bpf["h"]
    key = table.Key(7)
    table[key] = table.Leaf(5, 1, 2)
    assert take(table, key) == (5, 1, 2)
    assert len(table) == 0 and take(table, key) is None
    assert isinstance(key, ctypes.Structure) or isinstance(key, ctypes._SimpleCData)
