"""ab arms that park vCPUs in their guest ('share:per-node=N'): parsing, their own
boots, and the guest agent parking before the probes start (fixture tree)."""


import pytest
import share_trees as ST

from vnuma_sched.errors import BadInput
from vnuma_sched.experiments import ab, arms, guest_agent
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology


def parse(spec):
    return arms.parse_arm("x", spec, [])


def test_share_item():
    arm = parse("share:per-node=1 feature.WA_IDLE=1")
    assert arm.share == {"per_node": 1} and arm.knobs == {"feature.WA_IDLE": "1"}
    assert arm.to_dict()["share"] == {"per_node": 1}
    assert parse("feature.WA_IDLE=1").share is None


@pytest.mark.parametrize("spec,msg", [
    ("share:per-node=0", "share: takes per-node=N"),
    ("share:use=0", "share: takes per-node=N"),
    ("share:per-node=1 share:per-node=2", "already has a share: item"),
])
def test_bad_share_items(spec, msg):
    with pytest.raises(BadInput, match=msg):
        parse(spec)


def test_an_arm_that_parks_boots_on_its_own():
    full = arms.parse_arm("full", "share:per-node=1", [])
    ref = arms.parse_arm("ref", "feature.WA_IDLE=1", [])
    other = arms.parse_arm("other", "feature.WA_IDLE=0", [])
    assert ab.boot_groups([ref, other, full]) == [["ref", "other"], ["full"]]
    assert ab.boot_groups([ref, other]) == [["ref", "other"]]


@pytest.fixture
def root(tmp_path, monkeypatch):
    ST.emulate_kernel(monkeypatch.setattr)
    return ST.build(tmp_path / "root")


def plan_for(*arm_list):
    return {"arms": {a.name: a.to_dict() for a in arm_list},
            "order": [a.name for a in arm_list]}


def test_the_guest_parks_before_its_runs(root):
    sysroot = SysRoot(root)
    plan = plan_for(arms.parse_arm("full", "share:per-node=1", []))
    parked = guest_agent.park_for_boot(plan, sysroot, read_topology(sysroot))
    assert parked["used"] == "0,2" and parked["parked"] == "1,3"
    part = root / ST.PARKED.lstrip("/")
    assert (part / "cpuset.cpus").read_text().strip() == "1,3"
    assert (part / "cpuset.cpus.partition").read_text().strip() == "isolated"


def test_a_boot_without_share_parks_nothing(root):
    sysroot = SysRoot(root)
    before = ST.snapshot(root)
    plan = plan_for(arms.parse_arm("ref", "feature.WA_IDLE=1", []))
    assert guest_agent.park_for_boot(plan, sysroot, read_topology(sysroot)) is None
    assert ST.snapshot(root) == before


def test_arms_of_one_boot_must_agree(root):
    sysroot = SysRoot(root)
    plan = plan_for(arms.parse_arm("a", "share:per-node=1", []),
                    arms.parse_arm("b", "feature.WA_IDLE=1", []))
    with pytest.raises(RuntimeError, match="park differently"):
        guest_agent.park_for_boot(plan, sysroot, read_topology(sysroot))
