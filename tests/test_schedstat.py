"""/proc/schedstat wake-up placement counters: parsing and the node split."""

import pytest

from vnuma_sched.errors import DataError
from vnuma_sched.probes import report
from vnuma_sched.probes.classify import delta
from vnuma_sched.system import schedstat as S
from vnuma_sched.system.sysroot import SysRoot


def _domain(n, mask, remote, affine, balance=0):
    lb = " ".join(str(i) for i in range(3 * S.LB_FIELDS_PER_TYPE))
    return f"domain{n} {mask} {lb} 1 2 3 4 5 6 7 8 9 {remote} {affine} {balance}"


def schedstat_text(version=16, affine=(5, 7), cross=(11, 13)):
    """Two nodes of two CPUs: domain0 = the node (MC), domain1 = both nodes (NUMA)."""
    lines = [f"version {version}", "timestamp 4295000000"]
    for cpu in range(4):
        node_mask = "3" if cpu < 2 else "c"
        lines += [f"cpu{cpu} 0 0 100 50 40 30 1000 2000 60",
                  _domain(0, node_mask, remote=affine[0], affine=affine[1]),
                  _domain(1, "0000000f", remote=cross[0], affine=cross[1])]
    return "\n".join(lines) + "\n"


CPU_NODE = {0: 0, 1: 0, 2: 1, 3: 1}


def test_mask_cpus_reads_comma_separated_words_low_word_last():
    assert S.mask_cpus("f") == [0, 1, 2, 3]
    assert S.mask_cpus("00000001,00000000") == [32]
    assert S.mask_cpus("c") == [2, 3]
    with pytest.raises(DataError):
        S.mask_cpus("zz")


@pytest.mark.parametrize("version", [15, 16])
def test_wake_counts_split_numa_domains_from_node_domains(version):
    got = S.wake_counts(schedstat_text(version), CPU_NODE)
    assert got == {"cross_node": [44, 52, 0], "in_node": [20, 28, 0]}


def test_unknown_version_and_short_lines_are_data_errors():
    with pytest.raises(DataError, match="version 17"):
        S.parse(schedstat_text(17))
    with pytest.raises(DataError, match="short"):
        S.parse("version 16\ncpu0 0 0 1 1 1 1 1 1 1\ndomain0 3 1 2 3\n")


def test_metrics_are_the_deltas_of_the_cross_node_counters():
    before = {"schedstat": S.wake_counts(schedstat_text(cross=(1, 2)), CPU_NODE)}
    after = {"schedstat": S.wake_counts(schedstat_text(cross=(4, 9)), CPU_NODE)}
    m = report.metrics(delta(before, after))
    assert m["wake_affine_cross_node"] == 4 * 7
    assert m["wake_remote_cross_node"] == 4 * 3
    assert m["wake_affine_in_node"] == 0


def test_unsupported_says_why(tmp_path):
    root = SysRoot(str(tmp_path))
    assert "CONFIG_SCHEDSTATS" in S.unsupported(root)
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/schedstat").write_text(schedstat_text())
    (tmp_path / "proc/sys/kernel/sched_schedstats").write_text("0\n")
    assert "sched_schedstats=0" in S.unsupported(root)
    (tmp_path / "proc/sys/kernel/sched_schedstats").write_text("1\n")
    assert S.unsupported(root) is None
    (tmp_path / "proc/schedstat").write_text(schedstat_text(17))
    assert "version 17" in S.unsupported(root)
