"""The probes' data model, importable without bcc or root: constants mirroring
bpf/vnuma.h, the migration event layout (ctypes), and names."""

import ctypes
import re
from pathlib import Path

from vnuma_sched import resources

BPF_DIR = resources.bpf_dir()

IPI_RESCHED, IPI_CALL_SINGLE, IPI_CALL_FUNC, IPI_IDLE_NO_IPI = range(4)
NR_IPI = 4
IPI_NAMES = ("resched", "call_single", "call_func", "idle_no_ipi")

CAUSE_WAKE, CAUSE_NEWIDLE, CAUSE_PERIODIC, CAUSE_NOHZ, CAUSE_NUMA, CAUSE_OTHER = range(6)
NR_CAUSES = 6
CAUSE_NAMES = ("wake", "newidle", "periodic", "nohz", "numa", "other")
IDLE_NEWLY = 2
# avoid_seen: what the migrate probe's raw tracepoint handler saw
SEEN_EXAMINED, SEEN_CROSS_CHECKED, SEEN_CROSS_UNREADABLE, SEEN_TASK_UNREADABLE = range(4)
NR_SEEN = 4
SEEN_NAMES = ("examined", "cross_checked", "cross_unreadable", "task_unreadable")
MAX_IDLE_STATES = 8
HIST_SLOTS = 32

# The kernel's enum cpu_idle_type differs: (6.1) CPU_IDLE=0, CPU_NOT_IDLE=1;
# (6.12) __CPU_NOT_IDLE=0, CPU_IDLE=1; CPU_NEWLY_IDLE=2 in both.
CPU_IDLE_ENUM = {(6, 1): 0, (6, 12): 1}


class MigrateEvent(ctypes.Structure):
    """Mirror of struct migrate_event in bpf/vnuma.h."""

    _fields_ = [("ts", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("orig_cpu", ctypes.c_uint32), ("dest_cpu", ctypes.c_uint32),
                ("cur_cpu", ctypes.c_uint32), ("cause", ctypes.c_uint8),
                ("dest_idle", ctypes.c_uint8), ("cross_node", ctypes.c_uint8),
                ("avoidable", ctypes.c_uint8), ("comm", ctypes.c_char * 16),
                ("pad", ctypes.c_uint32), ("allowed", ctypes.c_uint64)]

    def to_dict(self):
        return {"ts": self.ts, "pid": self.pid, "orig_cpu": self.orig_cpu,
                "dest_cpu": self.dest_cpu, "cur_cpu": self.cur_cpu,
                "cause": CAUSE_NAMES[self.cause] if self.cause < NR_CAUSES else "other",
                "dest_idle": bool(self.dest_idle), "cross_node": bool(self.cross_node),
                "avoidable": bool(self.avoidable), "allowed": self.allowed,
                "comm": self.comm.decode("utf-8", "replace")}


def header_defines(path=None):
    """#define NAME <int> pairs of bpf/vnuma.h (for the mirror test)."""
    text = Path(path or BPF_DIR / "vnuma.h").read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(r"^#define\s+(\w+)\s+(\d+|0x[0-9a-f]+)\b",
                                                   text, re.M)}
