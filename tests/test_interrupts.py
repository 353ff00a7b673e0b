"""/proc/interrupts and /proc/softirqs parsing: the kernel's layout (an offline CPU
has no column, ERR/MIS one count), deltas, and any table the kernel could print."""

import pytest
from helpers import write
from hypothesis import given
from hypothesis import strategies as st

from vnuma_sched.errors import DataError
from vnuma_sched.system import interrupts as I
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import CPU_ONLINE, parse_cpulist

# a 4-vCPU guest with CPU 1 offline (lines as 6.12 prints them)
TABLE = """\
           CPU0       CPU2       CPU3       
  0:         47          0          0   IO-APIC   2-edge      timer
 24:          0         15          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
 25:        812          0         90 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
NMI:          0          0          0   Non-maskable interrupts
LOC:      12257       9031         41   Local timer interrupts
RES:        795          3          0   Rescheduling interrupts
CAL:        211         19          2   Function call interrupts
ERR:          0
MIS:          3
"""
SOFT = """\
                    CPU0       CPU2       CPU3       
          HI:          0          0          0
       TIMER:       1182        136          4
         RCU:        905        310          7
"""


def test_columns_are_the_online_cpus():
    t = I.parse(TABLE)
    assert t["LOC"].counts == {0: 12257, 2: 9031, 3: 41}
    assert t["LOC"].name() == "LOC (Local timer interrupts)"
    assert t["24"].counts == {0: 0, 2: 15, 3: 0}
    assert t["24"].name() == "irq 24 (PCI-MSIX-0000:00:01.0 0-edge virtio0-config)"
    assert t["MIS"].counts == {-1: 3} and t["MIS"].name() == "MIS"


def test_softirqs():
    t = I.parse(SOFT)
    assert t["TIMER"].counts == {0: 1182, 2: 136, 3: 4} and t["RCU"].what == ""


def test_delta_keeps_what_happened():
    before = I.parse(TABLE)
    after = I.parse(TABLE.replace("     41   Local", "     44   Local")
                    .replace("        795          3", "        795          5"))
    d = I.delta(before, after)
    assert {k: v.counts for k, v in d.items()} == {"LOC": {3: 3}, "RES": {2: 2}}


def test_delta_counts_a_new_cpu_from_zero():
    before = I.parse("  CPU0\nLOC: 5 Local timer interrupts\n")
    after = I.parse("  CPU0 CPU1\nLOC: 7 2 Local timer interrupts\n")
    assert I.delta(before, after)["LOC"].counts == {0: 2, 1: 2}


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("hello\nLOC: 1\n", "line 1: not a header"),
    ("  CPU0\nLOC 1 2\n", "line 2: no 'LABEL:'"),
    ("  CPU0\nLOC: Local timer\n", "line 2: no count"),
])
def test_not_a_table(text, needle):
    with pytest.raises(ValueError, match=needle):
        I.parse(text)


def test_read_names_the_file(tmp_path):
    write(tmp_path, "/proc/interrupts", "garbage\n")
    with pytest.raises(DataError, match="/proc/interrupts: not an interrupts table"):
        I.read(SysRoot(tmp_path))
    write(tmp_path, "/proc/softirqs", SOFT)
    assert I.read(SysRoot(tmp_path), I.SOFTIRQS)["RCU"].counts[2] == 310


NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9._:-]{0,20}", fullmatch=True)


@st.composite
def tables(draw):
    cpus = sorted(draw(st.sets(st.integers(0, 300), min_size=1, max_size=8)))
    rows = draw(st.dictionaries(
        st.one_of(st.integers(0, 5000).map(str), st.from_regex(r"[A-Z]{3}", fullmatch=True)),
        st.tuples(st.lists(st.integers(0, 2**63), min_size=len(cpus), max_size=len(cpus)),
                  st.lists(NAME, max_size=3)), min_size=1, max_size=20))
    return cpus, rows


@given(tables())
def test_any_table_the_kernel_prints_parses_back(table):
    cpus, rows = table
    head = " " * 11 + "".join(f"CPU{c:<8d}" for c in cpus)
    lines = [f"{label:>4}:" + "".join(f" {n:10d}" for n in counts) + "   " + " ".join(words)
             for label, (counts, words) in rows.items()]
    t = I.parse("\n".join([head, *lines]) + "\n")
    assert {k: v.counts for k, v in t.items()} == {
        k: dict(zip(cpus, counts, strict=True)) for k, (counts, _w) in rows.items()}
    assert {k: v.what for k, v in t.items()} == {k: " ".join(w) for k, (_c, w) in rows.items()}


def test_this_machine():
    """The running kernel's files: a column per online CPU, the local timer counted."""
    root = SysRoot("/")
    online = set(parse_cpulist(root.read(CPU_ONLINE)))
    table = I.read(root)
    assert set(table["LOC"].counts) == online and sum(table["LOC"].counts.values()) > 0
    assert set(I.read(root, I.SOFTIRQS)["TIMER"].counts) == online
