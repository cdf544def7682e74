"""Where the running kernel keeps a few task_struct fields, read from its own BTF.

The agent's BPF program reads tracepoint arguments and helpers, and - through the offsets
found here - a few kernel structs: a task's audit login uid and session id (task_struct
.loginuid, .sessionid), its pid as each pid namespace sees it (task_struct.thread_pid ->
struct pid.numbers[level] -> struct upid {nr, ns}), and for unix-socket connects a file
descriptor's socket (task_struct.files -> fdtable.fd[fd] -> file.private_data -> socket.sk)
with its peer, bound name and peer credentials (UNIX_MEMBERS), and for TCP accepts the accepted
socket's two ends (INET_MEMBERS). The kernel headers BCC compiles against
need not match the running kernel, so no offset may come from them; the kernel describes its
own types in /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF), and that is the only source.

Pure: `Btf(bytes)` parses the format (Documentation/bpf/btf.rst: a header, a type section,
a string section; a stable kernel ABI), `kernel_offsets` picks the members. No offset is
guessed: a member this kernel lacks (no CONFIG_AUDIT: no loginuid) leaves its group None,
and the agent falls back to /proc for it. No library is used: none on PyPI parses BTF, and
the distribution's libbpf 1.1 would need the same walking through ctypes.
"""

from __future__ import annotations

import array
import struct
from dataclasses import dataclass

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")       # magic version flags hdr_len type_off type_len str_off str_len
TYPE = struct.Struct("<III")              # name_off info size|type
MEMBER = struct.Struct("<III")            # name_off type offset

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

# bytes that follow a type's fixed part: a constant, or this much per vlen entry
_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ENTRY = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_QUALIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}

VMLINUX = "/sys/kernel/btf/vmlinux"


class BtfError(ValueError):
    pass


@dataclass(frozen=True)
class Type:
    kind: int
    name: str
    size_or_type: int          # size for INT/STRUCT/UNION/ENUM..., the referred type id otherwise
    kind_flag: bool
    members: tuple[tuple[str, int, int, int], ...] = ()  # STRUCT/UNION: (name, type id, bit offset, bitfield size)
    array_of: tuple[int, int] | None = None             # ARRAY: (element type id, count)


class Btf:
    """The types of one BTF blob, by id (1-based; 0 is void), decoded when asked for: a kernel's
    BTF has over 100,000 types and the agent wants five structs, so parsing keeps only where
    each type starts (as objects, all of them took 50 MB the agent would not give back)."""

    def __init__(self, data: bytes):
        if len(data) < HEADER.size:
            raise BtfError(f"BTF of {len(data)} bytes is shorter than its header")
        magic, version, _, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BtfError(f"not BTF: magic 0x{magic:04x}, expected 0x{MAGIC:04x} (a big-endian kernel?)")
        if version != 1:
            raise BtfError(f"BTF version {version}; this reader knows version 1")
        self.data = data[hdr_len + type_off:hdr_len + type_off + type_len]
        self.strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        if len(self.data) != type_len or len(self.strings) != str_len:
            raise BtfError("BTF sections run past the end of the data")
        self.starts = array.array("I", [0])          # where each type id's record starts
        self._structs: dict[int, int] = {}            # a struct's name offset -> its id
        types, pos, unpack = self.data, 0, TYPE.unpack_from
        while pos < len(types):
            if pos + TYPE.size > len(types):
                raise BtfError(f"BTF type {len(self.starts)} is cut off")
            name_off, info, _ = unpack(types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind == STRUCT:
                self._structs.setdefault(name_off, len(self.starts))
            elif kind not in _EXTRA and kind not in _PER_ENTRY and kind not in _QUALIFIERS \
                    and kind not in (PTR, FWD, FUNC, FLOAT):
                raise BtfError(f"BTF type {len(self.starts)} has kind {kind}, unknown to this reader")
            self.starts.append(pos)
            pos += TYPE.size + _EXTRA.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen
        if pos != len(types):
            raise BtfError(f"BTF type {len(self.starts) - 1} runs past the type section")

    def type(self, type_id: int) -> Type | None:
        if type_id <= 0 or type_id >= len(self.starts):
            return None
        pos = self.starts[type_id]
        name_off, info, size_or_type = TYPE.unpack_from(self.data, pos)
        kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
        pos += TYPE.size
        members: tuple = ()
        array_of = None
        if kind in (STRUCT, UNION):
            members = tuple((self.name(m_name), m_type, (m_off & 0xFFFFFF) if kind_flag else m_off,
                             (m_off >> 24) if kind_flag else 0)
                            for m_name, m_type, m_off in MEMBER.iter_unpack(self.data[pos:pos + 12 * vlen]))
        elif kind == ARRAY:
            elem, _, count = struct.unpack_from("<III", self.data, pos)
            array_of = (elem, count)
        return Type(kind, self.name(name_off), size_or_type, kind_flag, members, array_of)

    def name(self, offset: int) -> str:
        end = self.strings.find(b"\0", offset)
        if offset >= len(self.strings) or end < 0:
            raise BtfError(f"BTF string offset {offset} is outside the string section")
        return self.strings[offset:end].decode("utf-8", "replace")

    def find_struct(self, name: str) -> int | None:
        """The id of the struct of that name (not a forward declaration of it)."""
        wanted = b"\0" + name.encode() + b"\0"
        at = self.strings.find(wanted)
        while at >= 0:
            found = self._structs.get(at + 1)
            if found is not None:
                return found
            at = self.strings.find(wanted, at + 1)
        return None

    def resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers to the type underneath."""
        for _ in range(64):
            t = self.type(type_id)
            if t is None or t.kind not in _QUALIFIERS:
                return type_id
            type_id = t.size_or_type
        raise BtfError(f"BTF type {type_id}: a loop of typedefs")

    def size(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        t = self.type(type_id)
        if t is None:
            return 0
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return self.size(t.array_of[0]) * t.array_of[1]
        return t.size_or_type

    def member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(byte offset, type id) of a member, looking inside anonymous structs and unions as C
        does; None when the struct has no such member, or it is a bitfield."""
        t = self.type(self.resolve(type_id))
        if t is None or t.kind not in (STRUCT, UNION):
            return None
        for m_name, m_type, bits, bitfield in t.members:
            if m_name == name:
                return (bits // 8, m_type) if bits % 8 == 0 and not bitfield else None
            if not m_name:
                inner = self.member(m_type, name)
                if inner is not None:
                    return bits // 8 + inner[0], inner[1]
        return None

    def offset(self, struct_name: str, path: str, size: int | None = None) -> int | None:
        """Byte offset of a dotted member path (`ns.inum`) in a named struct; None when there is
        no such member, or it is not `size` bytes (what the BPF program reads there)."""
        type_id = self.find_struct(struct_name)
        if type_id is None:
            return None
        total = 0
        for part in path.split("."):
            found = self.member(type_id, part)
            if found is None:
                return None
            total += found[0]
            type_id = found[1]
        if size is not None and self.size(type_id) != size:
            return None
        return total


@dataclass(frozen=True)
class KernelOffsets:
    """What capture.c reads from kernel structs; a group is None when this kernel lacks it."""
    login: tuple[int, int] | None                    # task_struct .loginuid, .sessionid
    pid: tuple[int, int, int, int, int, int] | None  # task_struct .thread_pid .group_leader; pid .level
    #                                                  .numbers; sizeof(struct upid); upid .ns
    upid_nr: int | None = None                       # upid .nr
    ns_inum: int | None = None                       # pid_namespace .ns.inum
    # unix-socket connects (UNIX_MEMBERS: a file descriptor to its struct sock, the peer, the
    # bound name and SO_PEERCRED); needs `pid` too, for the peer's pid
    unix: tuple[int, ...] | None = None
    # an accepted TCP socket's two ends (INET_MEMBERS: the file descriptor to its struct sock, and
    # sock_common's addresses and ports), whether or not accept() was given room for the peer's
    inet: tuple[int, ...] | None = None
    # struct sock .sk_protocol (a u16 since Linux 5.6, a bitfield before) and .skc_state, and
    # inet_sock .inet_sport (kept when the close gives the port back, unlike skc_num): with
    # `inet`, TCP state changes come from the raw tracepoint, which the kernel skips less often,
    # and a connect() that returns finds out whether its state change was skipped (capture.c)
    tcp_state: tuple[int, int, int] | None = None

    def cflags(self) -> list[str]:
        """The -D flags capture.c takes (its header says what each means)."""
        out = [f"-DHAVE_LOGIN={1 if self.login else 0}", f"-DHAVE_PIDS={1 if self.pid else 0}"]
        if self.login:
            out += [f"-DOFF_LOGINUID={self.login[0]}", f"-DOFF_SESSIONID={self.login[1]}"]
        if self.pid:
            names = ("OFF_THREAD_PID", "OFF_GROUP_LEADER", "OFF_PID_LEVEL", "OFF_PID_NUMBERS",
                     "SIZEOF_UPID", "OFF_UPID_NS")
            out += [f"-D{n}={v}" for n, v in zip(names, self.pid)]
            out += [f"-DOFF_UPID_NR={self.upid_nr}", f"-DOFF_NS_INUM={self.ns_inum}"]
        members: dict[str, int] = {}                 # each macro once: the groups share the fd walk
        if self.unix and self.pid:                   # capture.c takes no HAVE_UNIX as 0
            out.append("-DHAVE_UNIX=1")
            members.update((name, v) for (name, _, _, _), v in zip(UNIX_MEMBERS, self.unix))
        if self.inet:
            out.append("-DHAVE_INET=1")
            members.update((name, v) for (name, _, _, _), v in zip(INET_MEMBERS, self.inet))
            if self.tcp_state is not None:
                members["OFF_SK_PROTOCOL"], members["OFF_SKC_STATE"], members["OFF_INET_SPORT"] = self.tcp_state
        return out + [f"-D{name}={v}" for name, v in members.items()]


# What capture.c reads to turn a connect's or an accept's file descriptor into its unix socket:
# (its macro, struct, member, size read there; None: a flexible array, its offset only)
UNIX_MEMBERS = (
    ("OFF_TASK_FILES", "task_struct", "files", 8),
    ("OFF_FILES_FDT", "files_struct", "fdt", 8),
    ("OFF_FDT_FD", "fdtable", "fd", 8),
    ("OFF_FDT_MAX_FDS", "fdtable", "max_fds", 4),
    ("OFF_FILE_PRIVATE_DATA", "file", "private_data", 8),
    ("OFF_SOCKET_SK", "socket", "sk", 8),
    ("OFF_SKC_FAMILY", "sock", "__sk_common.skc_family", 2),
    ("OFF_SK_PEER_PID", "sock", "sk_peer_pid", 8),
    ("OFF_SK_PEER_CRED", "sock", "sk_peer_cred", 8),
    ("OFF_CRED_UID", "cred", "uid", 4),
    ("OFF_UNIX_PEER", "unix_sock", "peer", 8),
    ("OFF_UNIX_ADDR", "unix_sock", "addr", 8),
    ("OFF_UADDR_LEN", "unix_address", "len", 4),
    ("OFF_UADDR_NAME", "unix_address", "name", None),
)


# What capture.c reads to take an accepted TCP connection's two ends from its socket, so that an
# accept(fd, NULL, NULL) is recorded as fully as one that asks for the peer's address: the same
# walk from a file descriptor to its struct sock, then sock_common's addresses and ports.
INET_MEMBERS = UNIX_MEMBERS[:7] + (
    ("OFF_SKC_DADDR", "sock", "__sk_common.skc_daddr", 4),
    ("OFF_SKC_RCV_SADDR", "sock", "__sk_common.skc_rcv_saddr", 4),
    ("OFF_SKC_DPORT", "sock", "__sk_common.skc_dport", 2),           # network byte order
    ("OFF_SKC_NUM", "sock", "__sk_common.skc_num", 2),               # host byte order
    ("OFF_SKC_V6_DADDR", "sock", "__sk_common.skc_v6_daddr", 16),
    ("OFF_SKC_V6_RCV_SADDR", "sock", "__sk_common.skc_v6_rcv_saddr", 16),
)


NONE = KernelOffsets(login=None, pid=None)


def kernel_offsets(btf: Btf) -> KernelOffsets:
    # each member at the size capture.c reads: u32 values, 8-byte pointers (x86-64, arm64)
    loginuid, sessionid = btf.offset("task_struct", "loginuid", 4), btf.offset("task_struct", "sessionid", 4)
    login = (loginuid, sessionid) if loginuid is not None and sessionid is not None else None
    upid = btf.find_struct("upid")
    parts = (btf.offset("task_struct", "thread_pid", 8), btf.offset("task_struct", "group_leader", 8),
             btf.offset("pid", "level", 4), btf.offset("pid", "numbers"),
             btf.size(upid) if upid else None, btf.offset("upid", "ns", 8))
    nr, inum = btf.offset("upid", "nr", 4), btf.offset("pid_namespace", "ns.inum", 4)
    pid = parts if None not in parts and nr is not None and inum is not None else None
    found = tuple(btf.offset(struct_name, member, size) for _, struct_name, member, size in UNIX_MEMBERS)
    unix = found if pid and None not in found else None
    found = tuple(btf.offset(struct_name, member, size) for _, struct_name, member, size in INET_MEMBERS)
    inet = found if None not in found else None
    tcp_state = (btf.offset("sock", "sk_protocol", 2), btf.offset("sock", "__sk_common.skc_state", 1),
                 btf.offset("inet_sock", "inet_sport", 2))
    return KernelOffsets(login=login, pid=pid, upid_nr=nr if pid else None, ns_inum=inum if pid else None,
                         unix=unix, inet=inet, tcp_state=tcp_state if inet and None not in tcp_state else None)


def running_kernel(path: str = VMLINUX) -> tuple[KernelOffsets, str | None]:
    """The running kernel's offsets, and a line for people when some are missing (why, and what
    the agent does instead); NONE and the line when there is no BTF to read."""
    try:
        with open(path, "rb") as fh:
            offsets = kernel_offsets(Btf(fh.read()))
    except OSError as exc:
        return NONE, (f"no kernel BTF ({path}: {exc.strerror}), so the audit session id and login uid come only "
                      "from /proc, --pid-namespace self sees only its own namespace, not nested ones, and "
                      "unix-socket connects are not recorded, nor TCP accepts that do not ask for the peer's "
                      "address; a kernel built with CONFIG_DEBUG_INFO_BTF fixes all of it")
    except BtfError as exc:
        return NONE, (f"could not read the kernel's BTF ({path}: {exc}), so the audit session id and login uid "
                      "come only from /proc, --pid-namespace self sees only its own namespace, and unix-socket "
                      "connects are not recorded, nor TCP accepts that do not ask for the peer's address")
    missing = []
    if offsets.login is None:
        missing.append("this kernel has no audit login uid/session id in task_struct (CONFIG_AUDIT off), so "
                       "ses/auid come only from /proc")
    if offsets.pid is None:
        missing.append("the kernel's BTF lacks struct pid/upid as expected, so a process's pid namespace comes "
                       "only from /proc and --pid-namespace self sees only its own namespace")
    if offsets.unix is None:
        missing.append(UNIX_MISSING)
    elif offsets.inet is None:
        missing.append(INET_MISSING)
    return offsets, ("; ".join(missing) or None)


UNIX_MISSING = ("the kernel's BTF lacks the socket structs unix-socket capture reads (file, socket, sock, "
                "unix_sock), so connects to tmux, screen, ssh control and container runtime sockets are not "
                "recorded, and a TCP accept is recorded only when the server asks for the peer's address")
INET_MISSING = ("the kernel's BTF lacks sock_common's addresses and ports, so a TCP accept is recorded only when "
                "the server asks for the peer's address (accept(fd, NULL, NULL) leaves no record)")
