"""root tier: apply and revert a profile on the live machine's real knobs."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vnuma_sched.cli.main import main
from vnuma_sched.system import facts
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import planner

pytestmark = pytest.mark.root

CANDIDATES = {  # knob -> (file, new value given the old one)
    "kernel.sched_schedstats": ("/proc/sys/kernel/sched_schedstats",
                                lambda old: "0" if old.strip() == "1" else "1"),
    "haltpoll.guest_halt_poll_ns": ("/sys/module/haltpoll/parameters/guest_halt_poll_ns",
                                    lambda old: str(int(old) + 1000)),
    "kernel.numa_balancing": ("/proc/sys/kernel/numa_balancing",
                              lambda old: "0" if old.strip() != "0" else "1"),
}


def run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def live_profile(tmp_path, tracefs):
    present = {k: v for k, v in CANDIDATES.items() if Path(v[0]).exists()}
    assert present, "no known writable knob on this machine"
    before = {k: Path(f).read_bytes() for k, (f, _) in present.items()}
    section = {"kernel": "sysctl", "haltpoll": "modules"}
    lines = ["[main]", "summary = live test"]
    for knob, (f, new) in present.items():
        lines += [f"[{section[knob.split('.')[0]]}]", f"{knob} = {new(before[knob].decode())}"]
    (tmp_path / "live-test.ini").write_text("\n".join(lines) + "\n")
    yield tmp_path, present, before
    if Path("/run/vnuma_sched/journal.jsonl").exists():
        run("tune", "revert")


def test_apply_verify_revert_live(live_profile):
    pdir, present, before = live_profile
    res = run("tune", "--profiles", str(pdir), "apply", "live-test")
    assert res.exit_code == 0, res.output
    assert Path("/run/vnuma_sched/journal.jsonl").exists()
    changed = {k: Path(f).read_bytes() for k, (f, _) in present.items()}
    assert all(changed[k] != before[k] for k in present)
    ver = run("tune", "--profiles", str(pdir), "verify", "--json", "live-test")
    assert {k["status"] for k in json.loads(ver.output)["knobs"]} == {"OK"}
    assert run("tune", "revert").exit_code == 0
    assert {k: Path(f).read_bytes() for k, (f, _) in present.items()} == before
    assert not Path("/run/vnuma_sched/journal.jsonl").exists()


def test_plan_dedicated_on_this_machine():
    res = run("tune", "plan", "--json", "vnuma-guest-dedicated")
    assert res.exit_code == 0
    rows = {r["knob"]: r for r in json.loads(res.output)["plan"]}
    gates = facts.patch_gate_states(SysRoot("/"))
    assert (rows["kvm_guest.idle_halt_hint"]["action"] != "unsupported") == \
        gates["kvm_guest.idle_halt_hint"]
    wake = rows["feature.NUMA_WAKE_PREV"]
    if gates["feature.NUMA_WAKE_PREV"]:         # patched (lockdown may still refuse writes)
        assert wake["reason"] != planner.NO_SERIES_FEATURE
    else:                                       # not here, or debugfs cannot be read
        assert wake["action"] == "unsupported"
    assert rows["boot.cpuidle_haltpoll.force"]["action"] in ("boot", "unchanged")
