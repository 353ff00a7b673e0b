"""Byte offsets of kernel struct members from BTF (/sys/kernel/btf/vmlinux).

The probes read a few task_struct fields from a raw tracepoint. bcc would take
their offsets from the kernel headers it compiles against, which need not be
the running kernel's (Debian's 6.1 headers under a 6.18 kernel, say); BTF
describes the running kernel itself. Pure: parse() takes the bytes.

Format: Documentation/bpf/btf.rst (header, type section, string section).
"""

import struct

from vnuma_sched.errors import DataError

MAGIC = 0xEB9F
KIND_STRUCT, KIND_UNION = 4, 5
_MODIFIERS = {8, 9, 10, 11, 18}            # typedef, volatile, const, restrict, type_tag
# bytes after the 12-byte btf_type, per kind: (fixed, per vlen entry)
_TRAILER = {1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8),
            7: (0, 0), 8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0),
            13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0),
            19: (0, 12)}

# What the migrate probe reads of a task (see bpf/migrate.bpf.c):
# -D name -> member path in struct task_struct (alternatives, first found wins).
TASK_FIELDS = {
    "TASK_PID_OFF": (("pid",),),
    "TASK_COMM_OFF": (("comm",),),
    "TASK_CPUS_PTR_OFF": (("cpus_ptr",),),
    # task_cpu(): thread_info.cpu with THREAD_INFO_IN_TASK (x86 since 5.17), else task->cpu
    "TASK_CPU_OFF": (("thread_info", "cpu"), ("cpu",)),
    # TASK_WAKING is in the low 32 bits: __state (unsigned int) since 5.14, state before
    # (long; read as its first 4 bytes, little-endian)
    "TASK_STATE_OFF": (("__state",), ("state",)),
}


class Types:
    """The structs and unions of a BTF blob: id -> (kind, name, size, members), where
    members are (name, type id, bit offset); other kinds only as modifiers to skip."""

    def __init__(self, structs, modifiers, names):
        self.structs, self.modifiers, self.names = structs, modifiers, names

    def resolve(self, type_id):
        """Follow typedef/const/volatile/restrict/type_tag to the underlying type id."""
        for _ in range(64):
            if type_id not in self.modifiers:
                return type_id
            type_id = self.modifiers[type_id]
        return type_id

    def struct_named(self, name):
        """The id of the (complete) struct called ``name``, or None."""
        return self.names.get(name)

    def member_offset(self, struct_id, path):
        """Byte offset of the member at ``path`` (names, nested through struct members;
        anonymous struct/union members are searched too), or None."""
        offset = 0
        for name in path:
            found = self._find(struct_id, name)
            if found is None:
                return None
            bits, struct_id = found
            if bits % 8:
                return None        # a bitfield: not readable as bytes
            offset += bits // 8
        return offset

    def _find(self, struct_id, name, depth=0):
        """(bit offset, resolved type id) of member ``name``, looking into anonymous
        members; None when absent."""
        entry = self.structs.get(self.resolve(struct_id))
        if entry is None or depth > 8:
            return None
        for member, type_id, bits in entry[3]:
            if member == name:
                return bits, self.resolve(type_id)
        for member, type_id, bits in entry[3]:
            if member == "":
                inner = self._find(type_id, name, depth + 1)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None


def _string(strings, off):
    end = strings.find(b"\0", off)
    return strings[off:end if end >= 0 else len(strings)].decode("utf-8", "replace")


def parse(blob, wanted=None):
    """Types of a BTF blob; only structs named in ``wanted`` (all when None) and their
    anonymous members keep their members. DataError on a malformed blob."""
    if len(blob) < 24:
        raise DataError("btf", "too short for a BTF header")
    for order in "<>":
        if struct.unpack_from(order + "H", blob)[0] == MAGIC:
            break
    else:
        raise DataError("btf", "no BTF magic")
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "5I", blob, 4)
    types = blob[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = blob[hdr_len + str_off:hdr_len + str_off + str_len]
    if len(types) != type_len or len(strings) != str_len:
        raise DataError("btf", "sections run past the end of the data")
    wanted_offs = None if wanted is None else _name_offsets(strings, wanted)
    return _types(types, strings, order, wanted_offs)


def _name_offsets(strings, names):
    """String-section offsets of the exact strings ``names``."""
    out = set()
    for name in names:
        needle = b"\0" + name.encode() + b"\0"
        start = strings.find(needle)
        while start >= 0:
            out.add(start + 1)
            start = strings.find(needle, start + 1)
    return out


def _types(data, strings, order, wanted_offs):
    head, member = struct.Struct(order + "3I"), struct.Struct(order + "3I")
    structs, modifiers, names = {}, {}, {}
    pos, type_id, end = 0, 1, len(data)
    while pos < end:
        if pos + 12 > end:
            raise DataError("btf", f"type {type_id} truncated")
        name_off, info, size_or_type = head.unpack_from(data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind not in _TRAILER:
            raise DataError("btf", f"type {type_id}: unknown kind {kind}")
        fixed, per = _TRAILER[kind]
        body = pos + 12
        pos = body + fixed + per * vlen
        if pos > end:
            raise DataError("btf", f"type {type_id} truncated")
        if kind in _MODIFIERS:
            modifiers[type_id] = size_or_type
        elif kind in (KIND_STRUCT, KIND_UNION) and (
                name_off == 0 or wanted_offs is None or name_off in wanted_offs):
            kflag = info >> 31
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = member.unpack_from(data, body + 12 * i)
                members.append((_string(strings, m_name) if m_name else "", m_type,
                                m_off & 0xFFFFFF if kflag else m_off))
            name = _string(strings, name_off) if name_off else ""
            structs[type_id] = (kind, name, size_or_type, members)
            if name and kind == KIND_STRUCT:
                names.setdefault(name, type_id)
        type_id += 1
    return Types(structs, modifiers, names)


def task_offsets(blob):
    """{-D name: byte offset} of what the migrate probe reads of struct task_struct,
    or (None, why) when the BTF lacks one of them. DataError on a malformed blob."""
    types = parse(blob, {"task_struct", "thread_info"})
    task = types.struct_named("task_struct")
    if task is None:
        return None, "BTF has no struct task_struct"
    out = {}
    for flag, paths in TASK_FIELDS.items():
        off = next((o for o in (types.member_offset(task, p) for p in paths)
                    if o is not None), None)
        if off is None:
            return None, f"BTF has no task_struct.{'.'.join(paths[0])}"
        out[flag] = off
    return out, None
