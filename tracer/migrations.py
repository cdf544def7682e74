"""Schema migrations of the store, as explicit numbered steps (PRAGMA user_version).

A step is never edited once released; a change is a new step. The tables hold facts as
the hosts reported them; links between facts (parents, ssh hops, logins) are worked out at
query time, which is why arrival order cannot change an answer.
"""

STEPS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);

CREATE TABLE hosts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    first_ts REAL, last_ts REAL,          -- earliest / latest event time seen from the host
    addrs TEXT, os TEXT, agent TEXT        -- from `host` events, addrs as a JSON list
);

CREATE TABLE boots (
    id INTEGER PRIMARY KEY,
    host INTEGER NOT NULL REFERENCES hosts(id),
    boot TEXT NOT NULL,
    UNIQUE (host, boot)
);

-- uid -> name as each host resolved it: uid 1001 on one host is not uid 1001 on another.
CREATE TABLE users (
    host INTEGER NOT NULL, uid INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (host, uid)
) WITHOUT ROWID;

-- One row per process instance: (boot, pid, start) survives pid reuse.
-- parent comes from the fork event when there is one (parent_by_fork = 1), otherwise from
-- the earliest exec that named a parent (parent_ts = that exec's time).
CREATE TABLE procs (
    id INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL REFERENCES boots(id),
    pid INTEGER NOT NULL,
    start INTEGER NOT NULL,
    parent INTEGER REFERENCES procs(id),
    parent_by_fork INTEGER NOT NULL DEFAULT 0,
    parent_ts REAL,
    fork_ts REAL,
    exit_ts REAL, exit_code INTEGER, exit_signal INTEGER,
    UNIQUE (boot, pid, start)
);
CREATE INDEX procs_parent ON procs (parent);

-- argv is NULL when cmd.split(' ') gives it back exactly (most commands), to save space.
CREATE TABLE execs (
    id INTEGER PRIMARY KEY,
    proc INTEGER NOT NULL REFERENCES procs(id),
    ts REAL NOT NULL,
    cmd TEXT NOT NULL, argv TEXT, truncated INTEGER,
    exe TEXT, cwd TEXT,
    uid INTEGER, euid INTEGER, gid INTEGER, egid INTEGER, auid INTEGER, ses INTEGER,
    tty TEXT, comm TEXT, pidns INTEGER, container TEXT, snapshot INTEGER,
    UNIQUE (proc, ts)
);
CREATE INDEX execs_ts ON execs (ts);

CREATE TABLE creds (
    proc INTEGER NOT NULL REFERENCES procs(id),
    ts REAL NOT NULL, via TEXT NOT NULL,
    old_uid INTEGER, old_euid INTEGER, uid INTEGER, euid INTEGER,
    UNIQUE (proc, ts, via, uid, euid)
);

CREATE TABLE logins (
    id INTEGER PRIMARY KEY,
    proc INTEGER NOT NULL REFERENCES procs(id),
    ts REAL NOT NULL,
    user TEXT NOT NULL, uid INTEGER, method TEXT, key_fp TEXT, key_type TEXT,
    raddr TEXT, rport INTEGER, laddr TEXT, lport INTEGER,
    service TEXT, ses INTEGER, tty TEXT,
    UNIQUE (proc, ts)
);
CREATE INDEX logins_proc ON logins (proc);
CREATE INDEX logins_ts ON logins (ts);

CREATE TABLE conns (
    proc INTEGER NOT NULL REFERENCES procs(id),
    ts REAL NOT NULL,
    dir TEXT NOT NULL,                      -- 'connect' (outbound) or 'accept' (inbound)
    laddr TEXT, lport INTEGER, raddr TEXT, rport INTEGER,
    UNIQUE (proc, ts, dir, lport, raddr, rport)
);
-- An ssh hop: the server's login names the client's (raddr, rport), which is the
-- client's own (laddr, lport) in its connect.
CREATE INDEX conns_local ON conns (lport, laddr);
CREATE INDEX conns_proc ON conns (proc);

CREATE TABLE files (
    proc INTEGER NOT NULL REFERENCES procs(id),
    ts REAL NOT NULL, op TEXT NOT NULL, path TEXT NOT NULL, path2 TEXT,
    mode INTEGER, uid INTEGER, gid INTEGER, euid INTEGER,
    UNIQUE (proc, ts, op, path)
);
CREATE INDEX files_path ON files (path);
CREATE INDEX files_path2 ON files (path2) WHERE path2 IS NOT NULL;
"""),
]

STEPS.append((2, """
-- Records a host's agent knows it lost (ring buffer full, netlink overrun) between since
-- and ts: a trace crossing that window on that host may be missing links.
CREATE TABLE losses (
    host INTEGER NOT NULL REFERENCES hosts(id),
    since REAL NOT NULL, ts REAL NOT NULL, count INTEGER NOT NULL, what TEXT,
    UNIQUE (host, since, ts)
);
"""))

STEPS.append((3, """
-- Group changes (setgid, setregid, setresgid) travel in cred events too.
ALTER TABLE creds ADD COLUMN old_gid INTEGER;
ALTER TABLE creds ADD COLUMN old_egid INTEGER;
ALTER TABLE creds ADD COLUMN gid INTEGER;
ALTER TABLE creds ADD COLUMN egid INTEGER
"""))

STEPS.append((4, """
-- Agents that ship to a collector: one token per host, kept only as its SHA-256, so a copy
-- of the store does not let anyone pose as a host.
CREATE TABLE agents (
    host TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked REAL
);

-- Host inventory, in the collector's own clock: when the host's last batch arrived, and the
-- host's clock offset (collector clock minus host clock, seconds) with its error bound
-- (half the round trip of the measurement), so cross-host times can be compared.
ALTER TABLE hosts ADD COLUMN seen_at REAL;
ALTER TABLE hosts ADD COLUMN clock_offset REAL;
ALTER TABLE hosts ADD COLUMN clock_error REAL;

-- Processes an open incident's trace needs, kept past the retention horizon until `until`.
CREATE TABLE pins (
    proc INTEGER NOT NULL REFERENCES procs(id),
    reason TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (proc, reason)
) WITHOUT ROWID;

-- Events a collector refused (malformed, or claiming another host), kept for people to
-- look at rather than dropped: the newest few thousand.
CREATE TABLE rejects (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL, at REAL NOT NULL, line INTEGER, field TEXT, error TEXT, raw TEXT
);
"""))

STEPS.append((5, """
-- Every question asked of the bot, allowed or refused: who asked what, where, when, and
-- what they got. The audit trail of the audit tool.
CREATE TABLE queries (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    user_id TEXT, user_name TEXT, channel_id TEXT, channel_name TEXT,
    action TEXT NOT NULL,               -- command, or the button pressed
    text TEXT,
    outcome TEXT NOT NULL               -- answered (n matches), no match, refused: why, error
);
CREATE INDEX queries_at ON queries (at);
"""))

STEPS.append((6, """
-- Each canary's state, so a restart neither forgets an open alert nor alerts twice.
CREATE TABLE canaries (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,               -- ok | failing
    since REAL,                         -- first failure of the current run of failures
    failures INTEGER NOT NULL DEFAULT 0,-- consecutive
    last_run REAL, last_summary TEXT,
    alert_channel TEXT, alert_ts TEXT,  -- the alert's message: its thread takes what follows
    alerted_at REAL, recovered_at REAL
);
"""))

STEPS.append((7, """
-- Each distinct command line once, so a search reads the (few) distinct commands rather than
-- every exec of the window: a fleet runs the same cron jobs and daemons all day. Execs point
-- at theirs, and (cmd_id, ts) finds a command's execs in a window without a scan.
CREATE TABLE cmds (id INTEGER PRIMARY KEY, cmd TEXT NOT NULL UNIQUE);
ALTER TABLE execs ADD COLUMN cmd_id INTEGER REFERENCES cmds(id);
INSERT OR IGNORE INTO cmds (cmd) SELECT DISTINCT cmd FROM execs;
UPDATE execs SET cmd_id = (SELECT id FROM cmds WHERE cmds.cmd = execs.cmd);
CREATE INDEX execs_cmd ON execs (cmd_id, ts)
"""))

STEPS.append((8, """
-- "Was this audit session begun by a login?" - asked for every root command of a window by
-- the change review and the canaries' fallback. Without it each question scanned the logins:
-- a day of a 250-host fleet's root commands took a minute.
CREATE INDEX logins_ses ON logins (ses) WHERE ses IS NOT NULL
"""))

STEPS.append((9, """
-- A canary's messages that could not be posted yet (Slack down, rate limited, the bot not in
-- the channel), oldest first, comma-separated: alert, again, recovered. Retried until delivered.
ALTER TABLE canaries ADD COLUMN undelivered TEXT
"""))

STEPS.append((10, """
-- Each run of a host's agent, from its `host` events' run marks: the first and last mark (start,
-- heartbeats, stop) and the clean stop, if any. Between one run's last mark and the next run's
-- first, the agent was not running: an outage, which traces crossing it name.
CREATE TABLE agent_runs (
    host INTEGER NOT NULL REFERENCES hosts(id),
    boot INTEGER NOT NULL REFERENCES boots(id),
    run TEXT NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL,
    started REAL, stopped REAL,
    PRIMARY KEY (host, run)
);
CREATE INDEX agent_runs_first ON agent_runs (host, first);
CREATE INDEX agent_runs_last ON agent_runs (host, last)
"""))

STEPS.append((11, """
-- Unix stream connections to watched sockets (uconnect/uaccept events, issue 19): one row per
-- connection, its two events joined on (boot, conn) in whichever order they arrive (a resend
-- changes nothing). client_proc connected, server_proc accepted, listener_proc called listen()
-- (SO_PEERCRED of the client's socket: the server for tmux and screen, the master for ssh).
-- Each is NULL until an event names it: client_proc from the uconnect, else the uaccept's peer.
-- path is what the client connected to (an abstract name as "@name"), else the uaccept's bound
-- name. bound is the listener's bound name when known. The connection lasts as long as its
-- client process (no close event): the client's exit ends it. client_uid and server_uid are
-- the peers' uids as SO_PEERCRED gave them, client_pid and listener_pid their pids as the
-- agent's pid namespace saw them (kept when no start came to name the process). snapshot = 1
-- while every event of it came from the agent's start-up scan (sock_diag): its times are when
-- the agent found it, not when it was made. Retention (tracer/retention.py) drops a row with
-- its client, or once none of its processes is kept when no client is known.
CREATE TABLE uconns (
    id INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL REFERENCES boots(id),
    conn TEXT NOT NULL,
    client_proc INTEGER REFERENCES procs(id),
    server_proc INTEGER REFERENCES procs(id),
    listener_proc INTEGER REFERENCES procs(id),
    path TEXT, bound TEXT,
    ts_connect REAL, ts_accept REAL,
    client_uid INTEGER, server_uid INTEGER,
    client_pid INTEGER, listener_pid INTEGER,
    snapshot INTEGER NOT NULL DEFAULT 0,
    UNIQUE (boot, conn)
);
-- "who was connected to this server then" (tmux/screen attach, an ssh master's mux clients)
CREATE INDEX uconns_server ON uconns (server_proc) WHERE server_proc IS NOT NULL;
CREATE INDEX uconns_listener ON uconns (listener_proc) WHERE listener_proc IS NOT NULL;
-- "which sockets did this client connect to"
CREATE INDEX uconns_client ON uconns (client_proc) WHERE client_proc IS NOT NULL
"""))

STEPS.append((12, """
-- Connections as evidence (issue 21): asked by destination (to:), by source (from:) and by
-- listening port (listen:). rname is the name the host resolved for raddr when it connected
-- (DNS answers it received, NULL when none was seen). A `listen` event is a row with dir =
-- 'listen', its laddr/lport the socket, raddr '' and rport 0 - not NULL: UNIQUE treats NULLs as
-- distinct, and a replayed listen must stay one row.
ALTER TABLE conns ADD COLUMN rname TEXT;
-- "who connected to 10.0.5.10:6443" and "who came in from 203.0.113.7"
CREATE INDEX conns_remote ON conns (raddr, rport);
-- a name, a CIDR or a listening port: the window's rows, newest first
CREATE INDEX conns_ts ON conns (ts);
CREATE INDEX conns_rname ON conns (rname) WHERE rname IS NOT NULL;
-- "which login did this accepted connection carry" (from:): the login's client end
CREATE INDEX logins_client ON logins (raddr, rport)
"""))

STEPS.append((13, """
-- Connections over a uid's budget arrive counted (the agent's (process, place, minute) key):
-- one row standing for n connections, the first at ts and the last at last_ts (NULL in both for
-- a connection sent on its own). Questions count sum(coalesce(n, 1)).
ALTER TABLE conns ADD COLUMN n INTEGER;
ALTER TABLE conns ADD COLUMN last_ts REAL
"""))

STEPS.append((14, """
-- A process's children when they came to be (a fork, else the exec that named the parent): the
-- context of a trace reads only a window of a daemon's children (cron's, a CI runner's), not the
-- thousands of a month. It also answers every question procs_parent did (its first column).
CREATE INDEX procs_parent_at ON procs (parent, coalesce(fork_ts, parent_ts));
DROP INDEX procs_parent
"""))

STEPS.append((15, """
-- A loss is told apart by what was lost, not by its window alone: one poll of an agent can say
-- several over the same (since, ts) - the ring buffer full, TCP connections whose start it had
-- not seen, each uid over its budget - and UNIQUE (host, since, ts) kept only the first of them.
-- (SQLite cannot drop a table's UNIQUE: the table is made again, its rows copied.)
CREATE TABLE losses_by_what (
    host INTEGER NOT NULL REFERENCES hosts(id),
    since REAL NOT NULL, ts REAL NOT NULL, count INTEGER NOT NULL, what TEXT
);
INSERT INTO losses_by_what (host, since, ts, count, what) SELECT host, since, ts, count, what FROM losses;
DROP TABLE losses;
ALTER TABLE losses_by_what RENAME TO losses;
CREATE UNIQUE INDEX losses_key ON losses (host, since, ts, coalesce(what, ''))
"""))

LATEST = STEPS[-1][0]
