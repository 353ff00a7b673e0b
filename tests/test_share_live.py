"""root tier: share's busy children on the live machine, in a cgroup v2 of their own
(not a partition: this machine's CPUs are not parked): one per CPU, pinned, in the
cgroup, running, and gone afterwards."""

import os
import time
from pathlib import Path

import pytest

from vnuma_sched.share import busy as B
from vnuma_sched.system.sysroot import SysRoot

pytestmark = pytest.mark.root


def cgroup2_mount():
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    pytest.fail("no cgroup v2 mounted on this machine")


@pytest.fixture
def group():
    path = cgroup2_mount() / f"vnuma-test-busy-{os.getpid()}"
    path.mkdir()
    yield path
    for _ in range(100):                # reaped children leave the cgroup at once
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    path.rmdir()


def last_cpu(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[36])


def test_busy_runs_one_pinned_child_per_cpu_in_the_cgroup(group):
    cpus = sorted(os.sched_getaffinity(0))
    seen = {}
    with B.busy(SysRoot("/"), cpus, procs=f"{group}/cgroup.procs"):
        kids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        assert len(kids) == len(cpus)
        for pid in kids:
            assert os.sched_getaffinity(pid) in [{c} for c in cpus]
            assert B.run_ns(SysRoot("/"), pid) > 0
            if B._jiffies(SysRoot("/")) is None:    # no ticks to count: run time instead
                assert B.run_ns(SysRoot("/"), pid) >= B.BUSY_NS
            seen[pid] = last_cpu(pid)
    assert sorted(seen.values()) == cpus
    assert (group / "cgroup.procs").read_text() == ""
    for pid in seen:
        assert not Path(f"/proc/{pid}").exists()


def test_busy_kills_its_children_when_the_body_fails(group):
    with pytest.raises(RuntimeError), B.busy(SysRoot("/"), [0],
                                              procs=f"{group}/cgroup.procs"):
        kid = int((group / "cgroup.procs").read_text())
        raise RuntimeError("the partition write failed")
    assert not Path(f"/proc/{kid}").exists()


def test_no_children_under_another_root(tmp_path):
    with B.busy(SysRoot(tmp_path), [0]):
        assert not (tmp_path / "sys").exists()
