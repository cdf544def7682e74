"""agent/btf.py: the task_struct members capture.c reads, found in BTF - on small hand-made BTF
blobs (each says the layout rule it tests) and on this machine's own kernel."""

import os
import struct

import pytest

from whodid.agent import btf


class Blob:
    """A BTF blob built type by type, as the kernel lays it out (Documentation/bpf/btf.rst)."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""
        self.next_id = 1

    def _name(self, name):
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, name, kind, vlen, size_or_type, tail=b"", kind_flag=False):
        self.types += struct.pack("<III", self._name(name), (kind << 24) | vlen | (kind_flag << 31),
                                  size_or_type) + tail
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name, size):
        return self._add(name, btf.INT, 0, size, struct.pack("<I", size * 8))

    def ptr(self, to):
        return self._add("", btf.PTR, 0, to)

    def typedef(self, name, to):
        return self._add(name, btf.TYPEDEF, 0, to)

    def array(self, elem, count):
        return self._add("", btf.ARRAY, 0, 0, struct.pack("<III", elem, 1, count))

    def enum(self, name, values):
        return self._add(name, btf.ENUM, len(values), 4,
                         b"".join(struct.pack("<Ii", self._name(n), v) for n, v in values))

    def struct(self, name, size, members, kind=btf.STRUCT, kind_flag=False):
        """members: (name, type id, bit offset[, bitfield size])"""
        tail = b""
        for m in members:
            off = m[2] | (m[3] << 24 if kind_flag and len(m) > 3 else 0)
            tail += struct.pack("<III", self._name(m[0]), m[1], off)
        return self._add(name, kind, len(members), size, tail, kind_flag)

    def fwd(self, name):
        return self._add(name, btf.FWD, 0, 0)

    def bytes(self):
        hdr_len = btf.HEADER.size
        return btf.HEADER.pack(btf.MAGIC, 1, 0, hdr_len, 0, len(self.types), len(self.types),
                               len(self.strings)) + self.types + self.strings


def kernel_like(with_audit=True):
    """task_struct, pid, upid and pid_namespace shaped as Linux 6.x has them, at made-up offsets:
    loginuid is a typedef'd struct (kuid_t) inside an anonymous union, as randomized layouts
    and `struct { ... }` groups put members; pid.numbers a flexible array."""
    b = Blob()
    u32 = b.int_("unsigned int", 4)
    i32 = b.int_("int", 4)
    b.enum("pid_type", [("PIDTYPE_PID", 0)])                    # a kind with per-entry data first
    fwd_pid = b.fwd("pid")                                        # a forward declaration is not the struct
    kuid = b.typedef("kuid_t", b.struct("", 4, [("val", u32, 0)]))
    ns_common = b.struct("ns_common", 32, [("stashed", b.ptr(0), 0), ("inum", u32, 128)])
    pid_ns = b.struct("pid_namespace", 96, [("level", u32, 0), ("ns", ns_common, 8 * 40)])
    upid = b.struct("upid", 16, [("nr", i32, 0), ("ns", b.ptr(pid_ns), 64)])
    pid = b.struct("pid", 48, [("count", u32, 0), ("level", u32, 32), ("numbers", b.array(upid, 1), 8 * 32)])
    pid_ptr = b.ptr(pid)
    audit = b.struct("", 8, [("loginuid", kuid, 0), ("sessionid", u32, 32)], kind=btf.UNION)
    task = b.next_id                                              # task_struct; its pointer comes next
    members = [("state", u32, 0), ("flags", u32, 32, 3), ("group_leader", task + 1, 8 * 200),
               ("thread_pid", pid_ptr, 8 * 208)]
    if with_audit:
        members.append(("", audit, 8 * 1000))
    b.struct("task_struct", 1024, members, kind_flag=True)    # kind_flag: offsets carry bitfield sizes
    assert b.ptr(task) == task + 1
    assert fwd_pid < pid
    return b


def test_the_members_are_found_through_typedefs_anonymous_unions_and_bitfield_offsets():
    offs = btf.kernel_offsets(btf.Btf(kernel_like().bytes()))
    assert offs.login == (1000, 1004)
    assert offs.pid == (208, 200, 4, 32, 16, 8)
    assert (offs.upid_nr, offs.ns_inum) == (0, 56)


def test_the_flags_name_every_offset_capture_c_reads():
    flags = btf.kernel_offsets(btf.Btf(kernel_like().bytes())).cflags()
    assert "-DHAVE_LOGIN=1" in flags and "-DOFF_SESSIONID=1004" in flags
    assert "-DHAVE_PIDS=1" in flags and "-DOFF_NS_INUM=56" in flags and "-DSIZEOF_UPID=16" in flags
    assert btf.NONE.cflags() == ["-DHAVE_LOGIN=0", "-DHAVE_PIDS=0"]


def test_a_kernel_without_audit_has_no_login_offsets_and_keeps_the_rest():
    offs = btf.kernel_offsets(btf.Btf(kernel_like(with_audit=False).bytes()))
    assert offs.login is None
    assert offs.pid is not None


def test_a_member_at_a_bit_offset_inside_a_byte_is_not_offered():
    b = Blob()
    u32 = b.int_("unsigned int", 4)
    b.struct("task_struct", 8, [("loginuid", u32, 3), ("sessionid", u32, 32)])
    assert btf.kernel_offsets(btf.Btf(b.bytes())).login is None


@pytest.mark.parametrize("damage, says", [
    (lambda raw: b"\x00\x00" + raw[2:], "not BTF"),
    (lambda raw: raw[:2] + b"\x02" + raw[3:], "version 2"),
    (lambda raw: raw[:-5], "past the end"),
    (lambda raw: raw[:10], "shorter than its header"),
])
def test_damaged_btf_is_refused_with_a_reason(damage, says):
    with pytest.raises(btf.BtfError, match=says):
        btf.Btf(damage(kernel_like().bytes()))


def test_a_struct_claiming_more_members_than_the_section_holds_is_refused():
    b = Blob()
    u32 = b.int_("unsigned int", 4)
    b.struct("task_struct", 8, [("loginuid", u32, 0), ("sessionid", u32, 32)])
    b.types = b.types[:-12]                     # the last member is missing
    with pytest.raises(btf.BtfError, match="runs past the type section"):
        btf.Btf(b.bytes())


def test_a_member_of_another_size_than_capture_c_reads_is_not_offered():
    b = Blob()
    u64 = b.int_("long unsigned int", 8)
    b.struct("task_struct", 16, [("loginuid", u64, 0), ("sessionid", u64, 64)])
    assert btf.kernel_offsets(btf.Btf(b.bytes())).login is None


def test_a_bitfield_member_is_not_offered_even_at_a_whole_byte():
    b = Blob()
    u32 = b.int_("unsigned int", 4)
    b.struct("task_struct", 8, [("loginuid", u32, 0, 20), ("sessionid", u32, 32)], kind_flag=True)
    assert btf.kernel_offsets(btf.Btf(b.bytes())).login is None


def test_an_unknown_kind_is_refused_rather_than_misread():
    b = Blob()
    b._add("future", 30, 0, 0)
    with pytest.raises(btf.BtfError, match="kind 30"):
        btf.Btf(b.bytes())


def test_no_btf_file_means_no_offsets_and_one_line_saying_what_is_lost(tmp_path):
    offs, note = btf.running_kernel(str(tmp_path / "vmlinux"))
    assert offs == btf.NONE
    assert "/proc" in note and "CONFIG_DEBUG_INFO_BTF" in note and "\n" not in note
    (tmp_path / "vmlinux").write_bytes(b"junk" * 16)
    offs, note = btf.running_kernel(str(tmp_path / "vmlinux"))
    assert offs == btf.NONE and "not BTF" in note


def test_a_kernel_without_audit_says_so(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(kernel_like(with_audit=False).bytes())
    offs, note = btf.running_kernel(str(path))
    assert offs.login is None and offs.pid is not None
    assert "CONFIG_AUDIT" in note and "/proc" in note


@pytest.mark.skipif(not os.path.exists(btf.VMLINUX), reason="this kernel has no BTF")
def test_this_kernel_s_btf_has_every_member():
    offs, note = btf.running_kernel()
    assert note is None, note
    # loginuid (kuid_t) and sessionid sit side by side in task_struct; upid is {int nr; ns *}
    assert offs.login[1] == offs.login[0] + 4
    assert offs.pid[4] == 16 and offs.upid_nr == 0 and offs.pid[5] == 8


@pytest.mark.skipif(not os.path.exists(btf.VMLINUX), reason="this kernel has no BTF")
def test_this_kernel_s_btf_has_the_unix_socket_members():
    offs, _ = btf.running_kernel()
    assert offs.unix is not None
    named = dict(zip((m[0] for m in btf.UNIX_MEMBERS), offs.unix))
    # cred.uid follows usage and uid's neighbours; name[] follows refcnt and len in unix_address
    assert named["OFF_UADDR_NAME"] == named["OFF_UADDR_LEN"] + 4
    assert named["OFF_FDT_MAX_FDS"] == 0 and named["OFF_SKC_FAMILY"] < named["OFF_SK_PEER_PID"]
    flags = offs.cflags()
    assert "-DHAVE_UNIX=1" in flags and f"-DOFF_UNIX_PEER={named['OFF_UNIX_PEER']}" in flags


def test_a_kernel_without_the_socket_structs_records_no_unix_connects_and_says_so(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(kernel_like().bytes())          # task_struct and pid only: no file, socket, unix_sock
    offs, note = btf.running_kernel(str(path))
    assert offs.unix is None and offs.pid is not None and offs.login is not None
    assert "-DHAVE_UNIX=1" not in offs.cflags() and not any("OFF_UNIX" in f for f in offs.cflags())
    assert note == btf.UNIX_MISSING and "unix-socket" in note and "\n" not in note


def test_no_btf_says_unix_connects_are_not_recorded(tmp_path):
    _, note = btf.running_kernel(str(tmp_path / "vmlinux"))
    assert "unix-socket connects are not recorded" in note
