// whodid agent: what the kernel tells us, from tracepoints and BPF helpers, and a few
// task_struct fields at offsets the running kernel's BTF gives.
//
// No kprobes exist on our kernels, and the installed headers need not match the running
// kernel, so no struct layout comes from a header: tracepoint arguments BCC reads from
// tracefs at load time, helpers, and - when the kernel has BTF - the members agent/btf.py
// finds there, passed in as numbers. What none of these give (effective uid, cwd, tty) the
// agent derives in user space.
//
// Records go to one ring buffer, each starting with struct hdr; agent/decode.py mirrors
// these layouts and is tested on bytes. The loader substitutes:
//   WATCH_PREFIXES  `|| ((w0 & mask) == value ...)`... for file changes worth recording
//   UNIX_PREFIXES   the same, over a unix connect's sun_path, for the sockets worth recording
//   UNIX_COMMS      the same, over the connecting task's comm (c0, c1), for the clients worth recording
// and the compiler flags say
//   USE_PERFBUF     0: the BPF ring buffer; 1: perf buffers, for kernels before 5.8
//   RING_FD         the ring buffer's map, made by the loader (USE_PERFBUF 0; see `emit`)
//   WAKE_BYTES      how full the ring is when its reader is woken (USE_PERFBUF 0; see `emit`)
//   PIDNS_FILTER    0, or 1 with PIDNS_DEV/PIDNS_INO: record only processes of that pid
//                   namespace and of the namespaces nested in it, under their pids there -
//                   one agent per container or simulated host
//   HAVE_LOGIN      1 with OFF_LOGINUID, OFF_SESSIONID: task_struct's audit login uid and
//                   session id (CONFIG_AUDIT), read at exec
//   HAVE_PIDS       1 with OFF_THREAD_PID, OFF_GROUP_LEADER (task_struct), OFF_PID_LEVEL,
//                   OFF_PID_NUMBERS (struct pid), SIZEOF_UPID, OFF_UPID_NR, OFF_UPID_NS (struct
//                   upid) and OFF_NS_INUM (pid_namespace.ns.inum): a task's pid as each pid
//                   namespace sees it, and its own namespace
//   HAVE_UNIX       1 with HAVE_PIDS and the OFF_* of agent/btf.py's UNIX_MEMBERS: unix-socket
//                   connects and the accepts of those connections (absent: 0)
//   HAVE_INET       1 with the OFF_* of agent/btf.py's INET_MEMBERS: a TCP accept's two ends are
//                   read from the accepted socket, whatever the caller asked for (absent: 0, and
//                   the peer comes from the caller's sockaddr, the local end from the passive open)
//   OFF_SK_PROTOCOL, OFF_SKC_STATE, OFF_INET_SPORT with HAVE_INET: struct sock's sk_protocol
//                   (u16) and skc_state (u8), inet_sock's inet_sport: TCP state changes are read
//                   from the raw tracepoint's socket, and connect()'s return sees a skipped one
//                   (see tcp_connect_exit below)
//   CONNECT_RET_OFF  `ret`'s offset in syscalls:sys_exit_connect's record (tracefs): with
//                   HAVE_INET, connect()'s return checks for a skipped state change
//   FAULT_SKIP_ESTABLISHED_DPORT  tests only (Capture's `faults`): the TCP state probe ignores the
//                   ESTABLISHED of connects to this port, as the kernel does when it skips a run
//   BUDGET_PER_SECOND, BUDGET_BURST, BUDGET_FULL_NS: each uid's budget of connection records
//                   (see "the connection budget" below); absent or 0: unlimited
// Without HAVE_PIDS, PIDNS_FILTER keeps only that exact namespace (bpf_get_ns_current_pid_tgid).

#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

// Numbers from the stable user ABI, spelt out so no header version can change them.
#define W_AF_INET       2
#define W_IPPROTO_TCP   6
#define W_O_WRONLY      01
#define W_O_RDWR        02
#define W_O_CREAT       0100
#define W_O_EXCL        0200
#define W_O_TRUNC       01000
#define W_AT_REMOVEDIR  0x200
#define W_CLONE_THREAD  0x00010000
#define W_AF_UNIX       1
#define W_EINPROGRESS   115

#define EV_EXEC_ARGS 1
#define EV_EXEC      2
#define EV_FORK      3
#define EV_EXIT      4
#define EV_CRED      5
#define EV_CONNECT   6
#define EV_PASSIVE   7
#define EV_ACCEPT    8
#define EV_FILE      9
#define EV_UCONNECT  10
#define EV_UACCEPT   11
#define EV_LISTEN    12

#ifndef HAVE_UNIX
#define HAVE_UNIX 0
#endif
#ifndef HAVE_INET
#define HAVE_INET 0
#endif
#define W_AF_INET6      10

#define ARGV_BUF     8192   // argv bytes one record can hold
#define ARG_MAX_LEN  4096   // the most one argument may take; args start below ARGV_BUF - ARG_MAX_LEN
#define MAX_ARGS     64
#define TRUNC_FAULT  2      // argv could not be read: a page was not present
#define PATH_LEN     256

#define F_WRITE   1
#define F_CREATE  2
#define F_RENAME  3
#define F_UNLINK  4
#define F_RMDIR   5
#define F_CHMOD   6
#define F_CHOWN   7

struct hdr {
    u64 ts;          // CLOCK_BOOTTIME, ns
    u32 pid;         // process (thread group) id
    u32 tid;
    u32 uid;         // real uid and gid of the current task
    u32 gid;
    u32 type;
    u32 aux;         // the child's pid in the initial namespace, in fork records; in a connect's,
                     // microseconds since its SYN_SENT
    u32 gpid;        // this process's pid in the initial namespace
    u32 pad;
};

struct exec_args_event {
    struct hdr h;
    u16 argc;
    u8 truncated;
    u8 pad;
    u32 len;
    char argv[ARGV_BUF];
};

#define KNOWN_LOGIN  1   // exec_event.auid and .ses were read from the task
#define KNOWN_PIDNS  2   // exec_event.pidns was

struct exec_event {
    struct hdr h;
    char comm[16];
    char filename[PATH_LEN];
    u32 known;       // KNOWN_* bits: which of the next fields the kernel gave
    u32 auid;        // audit login uid ((u32)-1: unset)
    u32 ses;         // audit session id ((u32)-1: unset)
    u32 pidns;       // inode of the pid namespace the task is in
};

struct exit_event {
    struct hdr h;
    s32 code;
    u32 has_code;
};

struct cred_event {
    struct hdr h;
    u32 call;        // 1 setuid, 2 setreuid, 3 setresuid, 4 setgid, 5 setregid, 6 setresgid
    u32 a, b, c;     // the ids asked for; (u32)-1 means unchanged
};

#define SOCK_LOCAL 1       // sock_event.flags: laddr/lport are this end's (an accept read from its socket)
#define SOCK_LATE 4        // a connect recorded after its ESTABLISHED was skipped, stamped with its SYN_SENT
#define SOCK_AGGREGATE 2   // the first connection of an aggregate (see "aggregation"); in a connecting
                           // hdr's pad: over budget, to be aggregated

struct sock_event {
    struct hdr h;
    u16 family;
    u16 lport;
    u16 rport;
    u16 flags;       // SOCK_LOCAL, SOCK_AGGREGATE
    u8 laddr[16];
    u8 raddr[16];
};

struct file_event {
    struct hdr h;
    u32 op;
    u32 relative;    // a path not starting with '/': resolved in user space against the cwd
    u32 mode;
    u32 owner;
    u32 group;
    u32 pad;
    char path[PATH_LEN];
    char path2[PATH_LEN];
};

#define UNIX_PATH 108   // sun_path
#define UKNOWN_PEER_PID  1   // unix_event.peer_pid was read (0 pid or another namespace's: not)
#define UKNOWN_PEER_UID  2

// A unix-socket connect (EV_UCONNECT: the client) or the accept of one (EV_UACCEPT: the server).
// conn_sk and conn_ts name the connection: the client's sock and the connect's time, the same
// in both records.
struct unix_event {
    struct hdr h;
    u32 peer_pid;    // SO_PEERCRED: at connect, who called listen(); at accept, the client
    u32 peer_uid;
    u32 known;       // UKNOWN_* bits
    u32 path_len;    // bytes of path that are the name (connect: the caller's addrlen - 2)
    u32 bound_len;   // bytes of bound that are the listener's bound name; 0: unbound/unknown
    u32 pad;
    u64 conn_sk;
    u64 conn_ts;
    char path[UNIX_PATH];    // connect: what the caller asked for; abstract names start with NUL
    char bound[UNIX_PATH];   // the listener's bound name, from the kernel
};

// No per-CPU scratch buffers: tracepoint programs run preemptibly on this kernel, and two
// tasks sharing a CPU would write over each other's record. Large records are built in
// ring buffer space reserved for them, or in a hash entry owned by the thread.
#if USE_PERFBUF
// Kernels before 5.8 have no BPF ring buffer: per-CPU perf buffers instead. Records lose
// their global order across CPUs there (the agent copes: it keys everything by pid and start).
BPF_PERF_OUTPUT(events);
#else
// The ring buffer is made by the loader and named here by its fd, as BCC's own rewriting of
// `events.ringbuf_output(...)` names a map: BCC 0.26 has no method for bpf_ringbuf_query,
// which needs the map itself (`emit` asks it how full the ring is).
#define RING ((void *)bpf_pseudo_fd(1, RING_FD))
#endif
// An argv record is built in its thread's entry here and sent at the length it used: reserved
// in the ring at its largest (8 KiB) it took ~25 times the ring space it needed, and a 4 MiB
// ring held ~480 execs in flight instead of thousands (docs/agent.md). Entries live only
// within one sys_enter_execve (8 MiB preallocated for 1024 threads inside one at once); a
// thread that finds the table full is counted lost.
BPF_HASH(argv_building, u64, struct exec_args_event, 1024);   // this thread's argv record
BPF_ARRAY(argv_template, struct exec_args_event, 1);          // zeros, never written
BPF_ARRAY(file_template, struct file_event, 1);     // all zeros, never written: a blank to copy
BPF_HASH(clone_flags, u64, u64, 16384);
BPF_HASH(exit_codes, u32, s32, 16384);
BPF_HASH(cred_reqs, u64, struct cred_event, 4096);
// A connect in progress: who, and where to - a later use of the entry checks the socket is still
// going there (its memory may be another socket's by then, if every moment that ends it was skipped).
struct conn_pending {
    struct hdr h;
    u8 daddr[16];
    u16 dport;
    u16 pad[3];
};
BPF_TABLE("lru_hash", u64, struct conn_pending, connecting, 16384);   // SYNs never answered age out
BPF_HASH(accepting, u64, u64, 4096);
BPF_HASH(pending_files, u64, struct file_event, 4096);
BPF_ARRAY(lost, u64, 1);      // records the ring buffer had no room for
// TCP connections seen established whose SYN_SENT the agent had not kept (`connecting`): begun
// before it loaded, or their entry evicted from the LRU table - not recorded, so said as a loss
BPF_ARRAY(unseen_starts, u64, 1);

// --- the connection budget ---------------------------------------------------------------
// Connection records (connect, accept, uconnect, uaccept) are the ones anyone can make by the
// hundred thousand a second: any user may listen under /tmp/tmux-, or connect to loopback. Left
// alone, one user's connect storm fills the ring buffer and takes the room of everyone's exec,
// fork and exit records. So each uid has a token bucket of connection records - BUDGET_PER_SECOND
// of them a second, up to BUDGET_BURST saved - and what is over it is not recorded but counted
// per uid in `over_budget`, which user space turns into loss events that name the uid. Process
// records have no budget: they are what a trace is made of.
//
// The bucket holds credit in record-nanoseconds (a record costs BUDGET_TOKEN; each nanosecond
// adds BUDGET_PER_SECOND), so no division runs here. No lock either (tracing programs cannot take
// bpf_spin_lock): two CPUs refilling one uid at once may both add, so a storm gets a little more
// than its budget - bounded by the number of CPUs - never less.
#ifndef BUDGET_PER_SECOND
#define BUDGET_PER_SECOND 0
#endif
#define NO_PROCESS        0xffffffff   // the uid key of passive TCP opens: softirq, no task to charge
#define OVER_BUDGET_OTHER 0xfffffffe   // counts of uids `over_budget` had no room for (user space adds the key)
#if BUDGET_PER_SECOND
#define BUDGET_TOKEN 1000000000LL
struct budget {
    s64 credit;      // record-nanoseconds left
    u64 last;        // bpf_ktime_get_ns() at the last refill
};
BPF_TABLE("lru_hash", u32, struct budget, budgets, 4096);   // a uid long quiet ages out: full again
BPF_HASH(over_budget, u32, u64, 4096);                       // uid -> records not made, since load

static __always_inline void count_over_budget(u32 uid, u64 records) {
    u64 *n = over_budget.lookup(&uid);
    if (!n) {
        u64 zero = 0;
        over_budget.insert(&uid, &zero);                     // not there yet: a new uid's first drop
        n = over_budget.lookup(&uid);
        if (!n) {
            u32 other = OVER_BUDGET_OTHER;                   // the table is full
            n = over_budget.lookup(&other);
        }
    }
    if (n)
        __sync_fetch_and_add(n, records);
}

// May `uid` make `records` more connection records now? Takes them from its bucket if so.
static __always_inline int budget_take(u32 uid, u64 records) {
    u64 now = bpf_ktime_get_ns();
    s64 cost = records * BUDGET_TOKEN;
    struct budget *b = budgets.lookup(&uid);
    if (!b) {
        struct budget fresh = {.credit = BUDGET_BURST * BUDGET_TOKEN - cost, .last = now};
        budgets.update(&uid, &fresh);
        return 1;
    }
    s64 elapsed = now - b->last;         // another CPU may have refilled later than our `now`
    if (elapsed > 0) {
        if (elapsed > BUDGET_FULL_NS)
            elapsed = BUDGET_FULL_NS;    // long enough to fill it: no overflow below
        s64 room = BUDGET_BURST * BUDGET_TOKEN - b->credit;
        s64 add = elapsed * BUDGET_PER_SECOND;
        b->last = now;
        if (add > room)
            add = room;
        if (add > 0)
            __sync_fetch_and_add(&b->credit, add);
    }
    if (b->credit < cost)
        return 0;
    __sync_fetch_and_add(&b->credit, -cost);
    return 1;
}

// budget_take, and what it refuses counted in over_budget: records not made, said as a loss.
static __always_inline int within_budget(u32 uid, u64 records) {
    if (budget_take(uid, records))
        return 1;
    count_over_budget(uid, records);
    return 0;
}

// --- aggregation: TCP connections over the budget are counted, not dropped -----------------
// A TCP connect or accept over its uid's budget is not a record of its own: it is counted in
// `aggregated` under (process, direction, remote address, the port that stays - the remote one
// of a connect, the local one of an accept -, boot-time minute). The first connection of a key
// is recorded (flag SOCK_AGGREGATE): user space learns the process from it in order, as for any
// record, and after the minute is over reads the count, first and last time, and deletes the
// key - one event per key, so a storm to one place costs one record a minute, and a replayed
// batch holds the same event. Only when the table is full is a connection not recorded at all
// (counted in over_budget, as before).
#define AGG_NS 60000000000ULL      // one minute of CLOCK_BOOTTIME
#define AGG_CONNECT 0
#define AGG_ACCEPT  1
struct agg_key {
    u32 pid;         // as the agent's namespace numbers it (hdr.pid)
    u32 minute;      // hdr.ts / AGG_NS
    u8 dir;          // AGG_CONNECT, AGG_ACCEPT
    u8 pad;
    u16 family;
    u16 port;        // connect: rport; accept: lport (host order)
    u16 pad2;
    u8 addr[16];     // the remote address
};
struct agg_val {
    u64 count;
    u64 first;       // CLOCK_BOOTTIME ns
    u64 last;
};
BPF_HASH(aggregated, struct agg_key, struct agg_val, 16384);

// The connection `e` (its header, addresses and ports filled) is over budget: count it under its
// key, recording the key's first connection.
static __always_inline void aggregate(void *ctx, struct sock_event *e, u8 dir);
#else
#define within_budget(uid, records) 1
#define budget_take(uid, records) 1
#endif

// --- kernel structs, at the running kernel's offsets (see the header) ----------------------

#if HAVE_LOGIN || HAVE_PIDS || HAVE_INET
static __always_inline u64 kread64(u64 addr) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u32 kread32(u64 addr) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u8 kread8(u64 addr) {
    u8 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u16 kread16(u64 addr) {
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}
#endif

#if HAVE_UNIX || HAVE_INET
// The struct sock behind one of the current task's file descriptors; 0 when none. Reading the
// task's own table: a thread closing the fd meanwhile gives a wrong answer, never a fault.
static __always_inline u64 sock_of_fd(u32 fd) {
    u64 task = bpf_get_current_task();
    u64 fdt = kread64(kread64(task + OFF_TASK_FILES) + OFF_FILES_FDT);
    if (!fdt || fd >= kread32(fdt + OFF_FDT_MAX_FDS))
        return 0;
    u64 file = kread64(kread64(fdt + OFF_FDT_FD) + 8 * (u64)fd);
    u64 sock = file ? kread64(file + OFF_FILE_PRIVATE_DATA) : 0;
    return sock ? kread64(sock + OFF_SOCKET_SK) : 0;
}
#endif

#if HAVE_PIDS
#define MAX_PIDNS_LEVEL 32        // the kernel's MAX_PID_NS_LEVEL

// struct upid at a level of a struct pid: {nr, ns}, the pid that level's namespace gives.
static __always_inline u64 upid_at(u64 pid, u32 level) {
    return pid + OFF_PID_NUMBERS + (u64)level * SIZEOF_UPID;
}

static __always_inline u32 ns_inum(u64 upid) {
    return kread32(kread64(upid + OFF_UPID_NS) + OFF_NS_INUM);
}

// The inode of the pid namespace a task is in: its pid's innermost level.
static __always_inline u32 task_pidns(u64 task) {
    u64 pid = kread64(task + OFF_THREAD_PID);
    if (!pid)
        return 0;
    return ns_inum(upid_at(pid, kread32(pid + OFF_PID_LEVEL)));
}
#endif

#if PIDNS_FILTER && HAVE_PIDS
// The agent's namespace sits at one level of every nested pid; found once, kept here.
BPF_ARRAY(agent_level, u32, 1);

// Is the current task in the agent's namespace or one nested in it? Then its pid and tid as
// the agent's namespace sees them - the numbers the agent's /proc shows.
static __always_inline int pid_in_agent_ns(u32 *tgid, u32 *tid) {
    u64 task = bpf_get_current_task();
    u64 pid = kread64(task + OFF_THREAD_PID);
    if (!pid)
        return 0;
    u32 level = kread32(pid + OFF_PID_LEVEL);
    u32 zero = 0;
    u32 *cached = agent_level.lookup(&zero);
    if (!cached)
        return 0;
    u32 at = *cached;
    if (at == 0 || at > MAX_PIDNS_LEVEL + 1) {
        // not known yet (stored plus one): look for the agent's namespace among the task's levels
        at = 0;
        for (u32 i = 0; i <= MAX_PIDNS_LEVEL; i++) {
            if (i > level)
                break;
            if (ns_inum(upid_at(pid, i)) == PIDNS_INO) {
                at = i + 1;
                break;
            }
        }
        if (!at)
            return 0;                        // a process outside: the host's, or a sibling's
        agent_level.update(&zero, &at);
    }
    u32 l = at - 1;
    if (l > level || ns_inum(upid_at(pid, l)) != PIDNS_INO)
        return 0;
    *tid = kread32(upid_at(pid, l) + OFF_UPID_NR);
    u64 leader_pid = kread64(kread64(task + OFF_GROUP_LEADER) + OFF_THREAD_PID);
    *tgid = kread32(upid_at(leader_pid, l) + OFF_UPID_NR);
    return 1;
}
#endif

static __always_inline int fill_hdr(struct hdr *h, u32 type) {
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->gpid = id >> 32;
#if PIDNS_FILTER && HAVE_PIDS
    if (!pid_in_agent_ns(&h->pid, &h->tid))
        return 0;                                   // another namespace's process: not ours
#elif PIDNS_FILTER
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns)))
        return 0;                                   // another namespace's process: not ours
    h->pid = ns.tgid;
    h->tid = ns.pid;
#endif
    h->ts = bpf_ktime_get_boot_ns();
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->type = type;
    h->aux = 0;
    return 1;
}

// The agent reads the ring in batches (agent/capture.py, "Records are read in batches"): it is
// woken only when a record takes the ring past WAKE_BYTES, or by a record that must be read at
// once (`now`: a file change to a relative path), and otherwise by its own timer. The ring's
// default would wake it for the first record after every read - on a trickle, a wake-up for
// nearly every record, which it then had to answer with looks at the fill every few ms.
static __always_inline void emit_now(void *ctx, void *data, u64 size, int now) {
#if USE_PERFBUF
    if (events.perf_submit(ctx, data, size)) {
#else
    u64 flags = now || bpf_ringbuf_query(RING, BPF_RB_AVAIL_DATA) + size >= WAKE_BYTES ?
        BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    if (bpf_ringbuf_output(RING, data, size, flags)) {
#endif
        u32 zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

static __always_inline void emit(void *ctx, void *data, u64 size) {
    emit_now(ctx, data, size, 0);
}

// --- processes ---------------------------------------------------------------------------

static __always_inline int capture_argv(void *ctx, const char *const *argv) {
    struct hdr h = {};
    if (!fill_hdr(&h, EV_EXEC_ARGS))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 zero = 0;
    struct exec_args_event *blank = argv_template.lookup(&zero);
    if (!blank)
        return 0;
    argv_building.update(&id, blank);
    struct exec_args_event *e = argv_building.lookup(&id);
    if (!e) {
        u32 zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
        return 0;
    }
    e->h = h;
    u32 off = 0;
    e->argc = 0;
    e->truncated = 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        const char *argp = NULL;
        // A page the caller never touched (a string literal in a forked child's .rodata)
        // is not mapped yet and cannot be faulted in here: say so, and user space will
        // read the arguments from /proc instead.
        if (bpf_probe_read_user(&argp, sizeof(argp), &argv[i])) {
            e->truncated = TRUNC_FAULT;
            goto done;
        }
        if (!argp)
            goto done;
        if (off >= ARGV_BUF - ARG_MAX_LEN) {
            e->truncated = 1;
            goto done;
        }
        int n = bpf_probe_read_user_str(&e->argv[off & (ARGV_BUF - ARG_MAX_LEN - 1)], ARG_MAX_LEN, argp);
        if (n < 0) {
            e->truncated = TRUNC_FAULT;
            goto done;
        }
        if (n == 0)
            goto done;
        if (n == ARG_MAX_LEN)
            e->truncated = 1;
        off += n;
        e->argc++;
    }
    {
        const char *more = NULL;
        bpf_probe_read_user(&more, sizeof(more), &argv[MAX_ARGS]);
        if (more)
            e->truncated = 1;
    }
done:
    e->len = off;
    emit(ctx, e, offsetof(struct exec_args_event, argv) + (off & (ARGV_BUF - 1)));
    argv_building.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    return capture_argv(args, (const char *const *)args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat) {
    return capture_argv(args, (const char *const *)args->argv);
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct exec_event e = {};
    if (!fill_hdr(&e.h, EV_EXEC))
        return 0;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    TP_DATA_LOC_READ_STR(&e.filename, filename, sizeof(e.filename));
#if HAVE_LOGIN || HAVE_PIDS
    u64 task = bpf_get_current_task();
#endif
#if HAVE_LOGIN
    // read here, not from /proc later: a short-lived process is gone by then
    e.auid = kread32(task + OFF_LOGINUID);
    e.ses = kread32(task + OFF_SESSIONID);
    e.known |= KNOWN_LOGIN;
#endif
#if HAVE_PIDS
    e.pidns = task_pidns(task);
    if (e.pidns)
        e.known |= KNOWN_PIDNS;
#endif
    emit(args, &e, sizeof(e));
    return 0;
}

// Threads are not processes: remember clone flags so the fork tracepoint can tell.
TRACEPOINT_PROBE(syscalls, sys_enter_clone) {
    u64 id = bpf_get_current_pid_tgid();
    u64 flags = args->clone_flags;
    clone_flags.update(&id, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3) {
    u64 id = bpf_get_current_pid_tgid();
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->uargs);   // clone_args.flags is first
    clone_flags.update(&id, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone) {
    u64 id = bpf_get_current_pid_tgid();
    clone_flags.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone3) {
    u64 id = bpf_get_current_pid_tgid();
    clone_flags.delete(&id);
    return 0;
}

// Fires in the parent before the child first runs, so a fork is always ahead of the
// child's own records in the ring buffer.
TRACEPOINT_PROBE(sched, sched_process_fork) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *flags = clone_flags.lookup(&id);
    if (flags && (*flags & W_CLONE_THREAD))
        return 0;
    struct hdr e = {};
    if (!fill_hdr(&e, EV_FORK))
        return 0;
    e.aux = args->child_pid;
    emit(args, &e, sizeof(e));
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    s32 code = args->error_code;
    exit_codes.update(&pid, &code);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 host_pid = id >> 32;
    if (host_pid != (u32)id)
        return 0;                                  // a thread, not the process
    struct exit_event e = {};
    s32 *code = exit_codes.lookup(&host_pid);
    if (code) {
        e.code = *code & 0xff;
        e.has_code = 1;
        exit_codes.delete(&host_pid);
    }
    if (!fill_hdr(&e.h, EV_EXIT))
        return 0;
    emit(args, &e, sizeof(e));
    return 0;
}

// --- credentials -------------------------------------------------------------------------

static __always_inline int cred_enter(u32 call, u32 a, u32 b, u32 c) {
    struct cred_event e = {};
    if (!fill_hdr(&e.h, EV_CRED))
        return 0;
    e.call = call;
    e.a = a;
    e.b = b;
    e.c = c;
    u64 id = bpf_get_current_pid_tgid();
    cred_reqs.update(&id, &e);
    return 0;
}

static __always_inline int cred_exit(void *ctx, long ret) {
    u64 id = bpf_get_current_pid_tgid();
    struct cred_event *e = cred_reqs.lookup(&id);
    if (!e)
        return 0;
    if (ret == 0)
        emit(ctx, e, sizeof(*e));
    cred_reqs.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setuid) { return cred_enter(1, args->uid, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_setreuid) { return cred_enter(2, args->ruid, args->euid, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_setresuid) { return cred_enter(3, args->ruid, args->euid, args->suid); }
TRACEPOINT_PROBE(syscalls, sys_exit_setuid) { return cred_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_setreuid) { return cred_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_setresuid) { return cred_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_setgid) { return cred_enter(4, args->gid, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_setregid) { return cred_enter(5, args->rgid, args->egid, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_setresgid) { return cred_enter(6, args->rgid, args->egid, args->sgid); }
TRACEPOINT_PROBE(syscalls, sys_exit_setgid) { return cred_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_setregid) { return cred_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_setresgid) { return cred_exit(args, args->ret); }

// --- TCP ---------------------------------------------------------------------------------
// At connect() the source port is not chosen yet, and ESTABLISHED is reached in softirq
// context where the current task means nothing: remember the socket and its process at
// SYN_SENT, and emit the 4-tuple at ESTABLISHED. An accept's two ends are read, at accept's
// exit, from the accepted socket (HAVE_INET); without the kernel's BTF, from the caller's
// sockaddr, and the passive open (SYN_RECV -> ESTABLISHED, no process) gives the local end,
// joined in user space. A listen is seen entering LISTEN in the caller's context, and emitted
// when listen() returns 0 (the port of an unbound socket is chosen after the state changes).

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

struct listen_pending {
    struct sock_event e;
    u64 sk;
};
BPF_TABLE("lru_hash", u64, struct listen_pending, listening, 1024);   // a thread killed mid-listen ages out

// A TCP socket's state change, as the classic tracepoint gives it or as the raw one's socket holds it.
struct tcp_change {
    u64 sk;
    int oldstate;
    int newstate;
    u16 protocol;
    u16 family;
    u16 sport;                   // host order
    u16 dport;                   // host order
    u8 saddr[16];                // IPv4: the first 4 bytes
    u8 daddr[16];
    u8 late;                     // from connect()'s return, not the state change (tcp_connect_exit)
};

// The kernel does not run a tracepoint's program when it would nest: a classic tracepoint's
// when any BPF program is running on that CPU, a raw one's when this same program is. A
// connection's ESTABLISHED mostly comes in softirq, often in an interrupt that landed while a
// probe ran, and the agent lost ~1 connect in 100,000 of a storm that way, unsaid. So a connect
// waits in `connecting` from SYN_SENT (always seen: it is in connect(), the outermost program)
// until one of these records it, whichever comes first - each takes the entry out with one
// delete, so only one does:
//   - ESTABLISHED, as before;
//   - connect()'s return, when the socket is established by then (tcp_connect_exit);
//   - the socket leaving ESTABLISHED (the close, in the caller's context, or the peer's FIN):
//     recorded then, late, from the socket, which still holds both ends.
// What none of them saw is counted: an entry a new SYN_SENT on the same socket address finds
// (`unended_connects`), and user space's sweep of entries left long, and at stop. Late records
// carry SOCK_LATE and the SYN_SENT time: the process may have exited by the close.
BPF_ARRAY(unended_connects, u64, 1);
// socket -> the SYN_SENT time of the entry user space has said as a loss (its sweep): not said again
BPF_TABLE("lru_hash", u64, u64, connects_said, 16384);   // as many as `connecting` holds

#if HAVE_INET && defined(OFF_SKC_STATE) && defined(CONNECT_RET_OFF)
#define TCP_AT_RETURN 1
// A connecting thread -> its socket, from SYN_SENT (inside connect()) to connect()'s return.
BPF_TABLE("lru_hash", u64, u64, connect_threads, 4096);   // io_uring's and the kernel's own age out
#else
#define TCP_AT_RETURN 0
#endif

// Which state changes the agent acts on: the rest leave at once, so the program is short
// wherever it runs - an interrupt that lands while it runs costs the inner run.
static __always_inline int tcp_wanted(int oldstate, int newstate) {
    return newstate == TCP_SYN_SENT || oldstate == TCP_SYN_SENT || oldstate == TCP_ESTABLISHED
        || newstate == TCP_LISTEN
#if !HAVE_INET
        || (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED)
#endif
        ;
}

#define SOCK_ADDRS(e, c)                                           \
    do {                                                           \
        (e).family = (c)->family;                                  \
        (e).lport = (c)->sport;                                    \
        (e).rport = (c)->dport;                                    \
        __builtin_memcpy((e).laddr, (c)->saddr, 16);               \
        __builtin_memcpy((e).raddr, (c)->daddr, 16);               \
    } while (0)

static __always_inline int tcp_state(void *ctx, struct tcp_change *c) {
    if (c->protocol != W_IPPROTO_TCP)
        return 0;
    u64 sk = c->sk;
    u32 zero = 0;
    if (c->newstate == TCP_SYN_SENT) {
        // first the entry an earlier connect left on this socket address, whoever connects now
        struct conn_pending *old = connecting.lookup(&sk);
        if (old) {
            u64 *said = connects_said.lookup(&sk);
            if (!said || *said != old->h.ts) {
                u64 *n = unended_connects.lookup(&zero);    // its socket freed, its address reused
                if (n)
                    __sync_fetch_and_add(n, 1);
            }
            connecting.delete(&sk);
        }
        struct conn_pending p = {};
        if (!fill_hdr(&p.h, EV_CONNECT))
            return 0;
        // over budget: still remembered, to be counted (not recorded) once established
        p.h.pad = budget_take(p.h.uid, 1) ? 0 : SOCK_AGGREGATE;
        __builtin_memcpy(p.daddr, c->daddr, 16);
        p.dport = c->dport;
        connecting.update(&sk, &p);
#if TCP_AT_RETURN
        u64 id = bpf_get_current_pid_tgid();
        connect_threads.update(&id, &sk);
#endif
        return 0;
    }
    if (c->oldstate == TCP_SYN_SENT || c->oldstate == TCP_ESTABLISHED) {
#ifdef FAULT_SKIP_ESTABLISHED_DPORT
        // tests only: act as the kernel does when it skips this run (a nested probe)
        if (!c->late && c->oldstate == TCP_SYN_SENT && c->newstate == TCP_ESTABLISHED
            && c->dport == FAULT_SKIP_ESTABLISHED_DPORT)
            return 0;
#endif
        if (c->newstate == TCP_SYN_RECV)
            return 0;                            // a simultaneous open: its close records it
        struct conn_pending *p = connecting.lookup(&sk);
        if (!p) {
            if (c->late || c->oldstate == TCP_ESTABLISHED)
                return 0;                        // recorded already (or not a connect of ours)
#if !PIDNS_FILTER
            // (with a namespace filter another namespace's connects are not kept, on purpose, and
            // this softirq context cannot tell whose a socket is)
            if (c->newstate == TCP_ESTABLISHED) {
                u64 *n = unseen_starts.lookup(&zero);
                if (n)
                    __sync_fetch_and_add(n, 1);
            }
#endif
            return 0;
        }
        if (p->dport != c->dport || *(u64 *)&p->daddr[0] != *(u64 *)&c->daddr[0]
            || *(u64 *)&p->daddr[8] != *(u64 *)&c->daddr[8])
            return 0;                            // another socket in this memory now: not its end
        struct hdr who = p->h;
        if (connecting.delete(&sk) != 0)
            return 0;                            // another path took it a moment ago
        if (c->newstate == TCP_ESTABLISHED || c->oldstate == TCP_ESTABLISHED) {
            struct sock_event e = {};
            e.h = who;
            e.h.pad = 0;
            SOCK_ADDRS(e, c);
            if (c->late || c->oldstate == TCP_ESTABLISHED) {
                e.flags = SOCK_LATE;             // stamped with its SYN_SENT: aux 0
            } else {
                // aux: microseconds since its SYN_SENT, whose process user space names - the
                // process may have exited since (its socket passed on, the SYN retried)
                e.h.ts = bpf_ktime_get_boot_ns();
                u64 us = (e.h.ts - who.ts) / 1000;
                e.h.aux = us > 0xffffffff ? 0xffffffff : us;
            }
#if BUDGET_PER_SECOND
            if (who.pad & SOCK_AGGREGATE)
                aggregate(ctx, &e, AGG_CONNECT);
            else
#endif
                emit(ctx, &e, sizeof(e));
        }
        return 0;
    }
    if (c->newstate == TCP_LISTEN) {
        struct listen_pending p = {.sk = sk};
        if (!fill_hdr(&p.e.h, EV_LISTEN))
            return 0;                            // another namespace's process
        SOCK_ADDRS(p.e, c);
        u64 id = bpf_get_current_pid_tgid();
        listening.update(&id, &p);
        return 0;
    }
#if !HAVE_INET
    if (c->oldstate == TCP_SYN_RECV && c->newstate == TCP_ESTABLISHED) {
        if (!within_budget(NO_PROCESS, 1))
            return 0;
        struct sock_event e = {};
        e.h.ts = bpf_ktime_get_boot_ns();
        e.h.type = EV_PASSIVE;
        SOCK_ADDRS(e, c);
        emit(ctx, &e, sizeof(e));
    }
#endif
    return 0;
}

#if HAVE_INET
// A TCP socket's family, ports and addresses, read with the kernel's BTF offsets.
static __always_inline void tcp_read_sock(struct tcp_change *c, u64 sk) {
    c->sk = sk;
    c->family = kread16(sk + OFF_SKC_FAMILY);
#ifdef OFF_INET_SPORT
    // (not skc_num: a close gives the port back - skc_num 0 - before its state change fires)
    u16 sport = kread16(sk + OFF_INET_SPORT);
    c->sport = (sport >> 8) | ((sport & 0xff) << 8);    // network byte order in the socket
#else
    c->sport = kread16(sk + OFF_SKC_NUM);
#endif
    u16 dport = kread16(sk + OFF_SKC_DPORT);
    c->dport = (dport >> 8) | ((dport & 0xff) << 8);
    if (c->family == W_AF_INET) {
        bpf_probe_read_kernel(&c->saddr, 4, (void *)(sk + OFF_SKC_RCV_SADDR));
        bpf_probe_read_kernel(&c->daddr, 4, (void *)(sk + OFF_SKC_DADDR));
    } else {
        bpf_probe_read_kernel(&c->saddr, 16, (void *)(sk + OFF_SKC_V6_RCV_SADDR));
        bpf_probe_read_kernel(&c->daddr, 16, (void *)(sk + OFF_SKC_V6_DADDR));
    }
}
#endif

#if TCP_AT_RETURN
// connect()'s return: a socket established by now (a blocking connect that returned 0, or a
// non-blocking one whose handshake was over before it returned - loopback, near peers) whose
// connection still waits in `connecting` had its ESTABLISHED skipped: recorded here. The state
// is checked, not the return value: a TCP_FASTOPEN_CONNECT connect returns 0 before its SYN.
static __always_inline int tcp_connect_exit(void *ctx, long ret) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *skp = connect_threads.lookup(&id);
    if (!skp)
        return 0;
    u64 sk = *skp;
    connect_threads.delete(&id);
    if (ret != 0 && ret != -W_EINPROGRESS)
        return 0;                                // failed
    u8 state = kread8(sk + OFF_SKC_STATE);
    if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
        return 0;                                // not yet (or no longer): the next change decides
    struct tcp_change c = {.oldstate = TCP_SYN_SENT, .newstate = TCP_ESTABLISHED, .protocol = W_IPPROTO_TCP,
                           .late = 1};
    tcp_read_sock(&c, sk);
    return tcp_state(ctx, &c);
}
#endif

#if HAVE_INET && defined(OFF_SK_PROTOCOL)
// The raw tracepoint, read from the socket: its guard is its own program's, so another of the
// agent's probes running when the interrupt lands no longer costs a connection's state change.
RAW_TRACEPOINT_PROBE(inet_sock_set_state) {
    int oldstate = (int)ctx->args[1], newstate = (int)ctx->args[2];
    if (!tcp_wanted(oldstate, newstate))
        return 0;
    u64 sk = ctx->args[0];
    if (oldstate == TCP_ESTABLISHED && !connecting.lookup(&sk))
        return 0;                                // every close: most were recorded at ESTABLISHED
    if (kread16(sk + OFF_SK_PROTOCOL) != W_IPPROTO_TCP)
        return 0;
    struct tcp_change c = {.oldstate = oldstate, .newstate = newstate, .protocol = W_IPPROTO_TCP};
    tcp_read_sock(&c, sk);
    return tcp_state(ctx, &c);
}
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != W_IPPROTO_TCP || !tcp_wanted(args->oldstate, args->newstate))
        return 0;
    struct tcp_change c = {};
    c.sk = (u64)args->skaddr;
    c.oldstate = args->oldstate;
    c.newstate = args->newstate;
    c.protocol = args->protocol;
    c.family = args->family;
    c.sport = args->sport;
    c.dport = args->dport;
    if (args->family == W_AF_INET) {
        __builtin_memcpy(c.saddr, args->saddr, 4);
        __builtin_memcpy(c.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(c.saddr, args->saddr_v6, 16);
        __builtin_memcpy(c.daddr, args->daddr_v6, 16);
    }
    return tcp_state(args, &c);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_exit_listen) {
    u64 id = bpf_get_current_pid_tgid();
    struct listen_pending *p = listening.lookup(&id);
    if (!p)
        return 0;
    struct listen_pending q = *p;
    listening.delete(&id);
    if (args->ret != 0 || !within_budget(q.e.h.uid, 1))
        return 0;                                // refused (EADDRINUSE), or over budget
#if HAVE_INET
    if (!q.e.lport)
        q.e.lport = kread16(q.sk + OFF_SKC_NUM); // unbound: listen() chose the port after LISTEN
#endif
    if (!q.e.lport)
        return 0;                                // not known (no BTF): not recorded as port 0
    q.e.h.ts = bpf_ktime_get_boot_ns();
    emit(args, &q.e, sizeof(q.e));
    return 0;
}

#if HAVE_UNIX
static __always_inline int unix_accept_exit(void *ctx, u64 sk);
#endif

// Every accept is remembered (a server may pass no address: tmux, python's unix servers, many
// C servers), the caller's sockaddr pointer with it for TCP's peer address when the socket
// cannot be read (no HAVE_INET).
TRACEPOINT_PROBE(syscalls, sys_enter_accept) {
    u64 id = bpf_get_current_pid_tgid();
    u64 ptr = (u64)args->upeer_sockaddr;
#if HAVE_UNIX || HAVE_INET
    accepting.update(&id, &ptr);
#else
    if (ptr)
        accepting.update(&id, &ptr);
#endif
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4) {
    u64 id = bpf_get_current_pid_tgid();
    u64 ptr = (u64)args->upeer_sockaddr;
#if HAVE_UNIX || HAVE_INET
    accepting.update(&id, &ptr);
#else
    if (ptr)
        accepting.update(&id, &ptr);
#endif
    return 0;
}

#if HAVE_INET
// The accepted TCP connection's two ends, from its sock_common: the caller's sockaddr is not
// needed, so accept(fd, NULL, NULL) is recorded like any other.
static __always_inline int inet_accept_exit(void *ctx, u64 sk) {
    struct sock_event e = {};
    if (!fill_hdr(&e.h, EV_ACCEPT))
        return 0;
    int within = budget_take(e.h.uid, 1);
    // a v4 client of a dual-stack socket is here as v4-mapped: user space makes it plain
    struct tcp_change c = {};
    tcp_read_sock(&c, sk);
    SOCK_ADDRS(e, &c);
    e.flags = SOCK_LOCAL;
#if BUDGET_PER_SECOND
    if (!within) {
        aggregate(ctx, &e, AGG_ACCEPT);
        return 0;
    }
#endif
    emit(ctx, &e, sizeof(e));
    return 0;
}
#endif

#if BUDGET_PER_SECOND
static __always_inline void aggregate(void *ctx, struct sock_event *e, u8 dir) {
    struct agg_key k = {};
    k.pid = e->h.pid;
    k.minute = e->h.ts / AGG_NS;
    k.dir = dir;
    k.family = e->family;
    k.port = dir == AGG_CONNECT ? e->rport : e->lport;
    __builtin_memcpy(k.addr, e->raddr, 16);
    u64 now = e->h.ts;
    struct agg_val *v = aggregated.lookup(&k);
    if (!v) {
        struct agg_val first = {.count = 1, .first = now, .last = now};
        if (aggregated.insert(&k, &first) == 0) {
            e->flags |= SOCK_AGGREGATE;            // the key's first: user space learns its process
            emit(ctx, e, sizeof(*e));
            return;
        }
        v = aggregated.lookup(&k);                 // another CPU inserted it first, or the table is full
        if (!v) {
            count_over_budget(e->h.uid, 1);
            return;
        }
    }
    __sync_fetch_and_add(&v->count, 1);
    if (now > v->last)
        v->last = now;
}
#endif

static __always_inline int accept_exit(void *ctx, long ret) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *ptr = accepting.lookup(&id);
    if (!ptr)
        return 0;
    u64 uptr = *ptr;
    accepting.delete(&id);
    if (ret < 0)
        return 0;
#if HAVE_UNIX || HAVE_INET
    u64 sk = sock_of_fd(ret);
    if (!sk)
        return 0;
    u16 family = kread16(sk + OFF_SKC_FAMILY);
#if HAVE_UNIX
    if (family == W_AF_UNIX)
        return unix_accept_exit(ctx, sk);
#endif
#if HAVE_INET
    if (family == W_AF_INET || family == W_AF_INET6)
        return inet_accept_exit(ctx, sk);
    return 0;
#endif
#endif
    if (!uptr)
        return 0;
    u8 sa[24] = {};                              // sockaddr_in6 up to the address's end
    bpf_probe_read_user(&sa, sizeof(sa), (void *)uptr);
    if (sa[0] == W_AF_UNIX && sa[1] == 0)
        return 0;                                // a unix socket's: no TCP peer to join
    struct sock_event e = {};
    if (!fill_hdr(&e.h, EV_ACCEPT) || !within_budget(e.h.uid, 1))
        return 0;
    e.family = sa[0] | (sa[1] << 8);
    e.rport = (sa[2] << 8) | sa[3];              // network byte order in the sockaddr
    if (e.family == W_AF_INET)
        __builtin_memcpy(e.raddr, &sa[4], 4);
    else
        __builtin_memcpy(e.raddr, &sa[8], 16);
    emit(ctx, &e, sizeof(e));
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args, args->ret); }

// --- unix sockets ------------------------------------------------------------------------
// No unix tracepoint exists: the connect syscall is. At enter, AF_UNIX connects are kept when
// the client's comm (UNIX_COMMS) or the path's first 24 bytes (UNIX_PREFIXES) are watched -
// the per-connect cost of everything else is this compare, and the fd leads to the client's
// sock, which waits in `clients` for the server's accept. At exit (success) the sock gives its
// peer (the server's end), the listener's bound name, SO_PEERCRED. The accept is recorded only
// when its new sock's peer is in `clients`: the server side needs no path compare and no
// configuration.
#if HAVE_UNIX
struct unix_pending {
    u64 uaddr;       // the caller's sockaddr_un
    u64 sk;          // the client's sock
    u64 ts;          // when connect was entered: the connection's time in conn ids
    u32 fd;
    u32 len;         // its addrlen
};
BPF_TABLE("lru_hash", u64, struct unix_pending, unix_connecting, 4096);   // a thread killed mid-connect ages out
BPF_TABLE("lru_hash", u64, u64, unix_clients, 16384);                      // client sock -> connect ts

// SO_PEERCRED of a sock: its peer's pid, as the agent's namespace numbers it, and uid.
static __always_inline void peer_cred(struct unix_event *e, u64 sk) {
    u64 pid = kread64(sk + OFF_SK_PEER_PID);
    if (pid) {
        u32 level = 0;
#if PIDNS_FILTER
        u32 zero = 0;
        u32 *cached = agent_level.lookup(&zero);
        if (!cached || *cached == 0)
            goto uid;                        // not known yet: the caller's own record found it
        level = *cached - 1;
        if (level > kread32(pid + OFF_PID_LEVEL) || ns_inum(upid_at(pid, level)) != PIDNS_INO)
            goto uid;                        // a process outside the agent's namespace
#endif
        e->peer_pid = kread32(upid_at(pid, level) + OFF_UPID_NR);
        if (e->peer_pid)
            e->known |= UKNOWN_PEER_PID;
    }
#if PIDNS_FILTER
uid:
#endif
    {
        u64 cred = kread64(sk + OFF_SK_PEER_CRED);
        if (cred) {
            e->peer_uid = kread32(cred + OFF_CRED_UID);
            e->known |= UKNOWN_PEER_UID;
        }
    }
}

static __always_inline void bound_name(struct unix_event *e, u64 sk) {
    u64 addr = sk ? kread64(sk + OFF_UNIX_ADDR) : 0;
    if (!addr)
        return;
    u32 len = kread32(addr + OFF_UADDR_LEN);            // sizeof(sa_family_t) + the name's
    e->bound_len = len > 2 ? len - 2 : 0;
    bpf_probe_read_kernel(&e->bound, sizeof(e->bound), (void *)(addr + OFF_UADDR_NAME + 2));
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u8 sa[2 + 24] = {};
    if (args->addrlen < 3 || bpf_probe_read_user(&sa, sizeof(sa), (void *)args->uservaddr))
        return 0;
    if (sa[0] != W_AF_UNIX || sa[1] != 0)
        return 0;
    u64 w0 = *(u64 *)&sa[2], w1 = *(u64 *)&sa[10], w2 = *(u64 *)&sa[18];
    char comm[16] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    u64 c0 = *(u64 *)&comm[0], c1 = *(u64 *)&comm[8];
    if (!(0 UNIX_COMMS UNIX_PREFIXES))
        return 0;
    // The client's sock exists already, and goes into `clients` now: the server's accept may
    // return before this connect does.
    u64 sk = sock_of_fd(args->fd);
    if (!sk)
        return 0;
    // the client pays for both records, its connect and the server's accept: a storm against
    // another user's server (root's sshd mux, a tmux) spends the storm's budget, not the server's
    struct hdr who = {};
    if (!fill_hdr(&who, EV_UCONNECT) || !within_budget(who.uid, 2))
        return 0;                                // another namespace's process, or over budget
    struct unix_pending p = {.uaddr = (u64)args->uservaddr, .sk = sk, .ts = bpf_ktime_get_boot_ns(),
                             .fd = args->fd, .len = args->addrlen};
    u64 id = bpf_get_current_pid_tgid();
    unix_clients.update(&sk, &p.ts);
    unix_connecting.update(&id, &p);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u64 id = bpf_get_current_pid_tgid();
    struct unix_pending *p = unix_connecting.lookup(&id);
    if (!p)
        return 0;
    struct unix_pending q = *p;
    unix_connecting.delete(&id);
    u64 sk = q.sk;
    struct unix_event e = {};
    if (args->ret != 0 || !fill_hdr(&e.h, EV_UCONNECT)) {
        unix_clients.delete(&sk);
        return 0;
    }
    e.conn_sk = sk;
    e.conn_ts = q.ts;
    peer_cred(&e, sk);
    bound_name(&e, kread64(sk + OFF_UNIX_PEER));   // the server's end shares the listener's name
    u32 len = q.len - 2;
    e.path_len = len > UNIX_PATH ? UNIX_PATH : len;
    bpf_probe_read_user(&e.path, sizeof(e.path), (void *)(q.uaddr + 2));
    emit(args, &e, sizeof(e));
    return 0;
}

static __always_inline int unix_accept_exit(void *ctx, u64 sk) {
    u64 client = kread64(sk + OFF_UNIX_PEER);
    u64 *ts = unix_clients.lookup(&client);
    if (!ts)
        return 0;                                // a connection nobody recorded: not ours
    struct unix_event e = {};
    e.conn_ts = *ts;
    unix_clients.delete(&client);
    if (!fill_hdr(&e.h, EV_UACCEPT))
        return 0;
    e.conn_sk = client;
    peer_cred(&e, sk);
    bound_name(&e, sk);
    emit(ctx, &e, sizeof(e));
    return 0;
}
#endif

#if TCP_AT_RETURN
// A second program on sys_exit_connect, attached by name (capture.py): in the unix one it would
// share a 512-byte stack with a unix record. BCC makes a tracepoint's argument struct once, so
// `ret` is read at its offset in tracefs's format for the event (CONNECT_RET_OFF).
int tcp_connect_return(void *args) {
    long ret = 0;
    bpf_probe_read_kernel(&ret, sizeof(ret), (char *)args + CONNECT_RET_OFF);
    return tcp_connect_exit(args, ret);
}
#endif

// --- file changes ------------------------------------------------------------------------
// Filtered here by path prefix, so the cost of the many opens nobody asked about stays in
// the kernel. Relative paths go up to user space, which resolves them against the cwd.

// Each watched prefix (its first 24 bytes; user space applies the whole pattern) is
// compared as up to three masked 64-bit words: no loops, so any number of prefixes stays
// cheap for the verifier and the CPU. The loader writes the comparisons (WATCH_PREFIXES).
static __always_inline int watched(const char *p) {
    if (p[0] != '/')
        return 1;
    u64 w0 = *(u64 *)&p[0], w1 = *(u64 *)&p[8], w2 = *(u64 *)&p[16];
    return 0 WATCH_PREFIXES;
}

static __always_inline int file_enter(u32 op, const char *path, const char *path2, u32 mode, u32 owner, u32 group) {
    u32 zero = 0;
    struct file_event *blank = file_template.lookup(&zero);
    if (!blank)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    pending_files.update(&id, blank);
    struct file_event *e = pending_files.lookup(&id);     // this thread's own entry
    if (!e)
        return 0;
    if (bpf_probe_read_user_str(&e->path, sizeof(e->path), path) <= 0)
        goto drop;
    if (path2)
        bpf_probe_read_user_str(&e->path2, sizeof(e->path2), path2);
    if (!watched(e->path) && !(path2 && watched(e->path2)))
        goto drop;
    if (!fill_hdr(&e->h, EV_FILE))
        goto drop;
    e->op = op;
    e->relative = e->path[0] != '/';
    e->mode = mode;
    e->owner = owner;
    e->group = group;
    return 0;
drop:
    pending_files.delete(&id);
    return 0;
}

static __always_inline int file_exit(void *ctx, long ret) {
    u64 id = bpf_get_current_pid_tgid();
    struct file_event *e = pending_files.lookup(&id);
    if (!e)
        return 0;
    if (ret >= 0) {
        // a relative path is resolved in user space against the process's cwd in /proc, while
        // it still runs: the agent is woken to read it now (capture.py)
        emit_now(ctx, e, sizeof(*e), e->relative);
    }
    pending_files.delete(&id);
    return 0;
}

#define WRITE_FLAGS (W_O_WRONLY | W_O_RDWR | W_O_CREAT | W_O_TRUNC)
static __always_inline u32 open_op(int flags) {
    return (flags & W_O_CREAT) && (flags & W_O_EXCL) ? F_CREATE : F_WRITE;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    if (!(args->flags & WRITE_FLAGS))
        return 0;
    return file_enter(open_op(args->flags), args->filename, 0, args->mode, -1, -1);
}
TRACEPOINT_PROBE(syscalls, sys_enter_open) {
    if (!(args->flags & WRITE_FLAGS))
        return 0;
    return file_enter(open_op(args->flags), args->filename, 0, args->mode, -1, -1);
}
TRACEPOINT_PROBE(syscalls, sys_enter_creat) { return file_enter(F_CREATE, args->pathname, 0, args->mode, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2) { return file_enter(F_RENAME, args->oldname, args->newname, 0, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat) { return file_enter(F_RENAME, args->oldname, args->newname, 0, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_rename) { return file_enter(F_RENAME, args->oldname, args->newname, 0, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat) {
    return file_enter(args->flag & W_AT_REMOVEDIR ? F_RMDIR : F_UNLINK, args->pathname, 0, 0, -1, -1);
}
TRACEPOINT_PROBE(syscalls, sys_enter_unlink) { return file_enter(F_UNLINK, args->pathname, 0, 0, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_rmdir) { return file_enter(F_RMDIR, args->pathname, 0, 0, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_fchmodat) { return file_enter(F_CHMOD, args->filename, 0, args->mode, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_chmod) { return file_enter(F_CHMOD, args->filename, 0, args->mode, -1, -1); }
TRACEPOINT_PROBE(syscalls, sys_enter_fchownat) { return file_enter(F_CHOWN, args->filename, 0, 0, args->user, args->group); }
TRACEPOINT_PROBE(syscalls, sys_enter_chown) { return file_enter(F_CHOWN, args->filename, 0, 0, args->user, args->group); }
TRACEPOINT_PROBE(syscalls, sys_enter_lchown) { return file_enter(F_CHOWN, args->filename, 0, 0, args->user, args->group); }

TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_rmdir) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_fchmodat) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_chmod) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_fchownat) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_chown) { return file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_lchown) { return file_exit(args, args->ret); }
