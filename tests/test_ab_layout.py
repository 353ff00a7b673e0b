"""A/B arms that boot a guest layout of their own: parsing, placing on the host,
which arms share boots, what the records say (no guest)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import DATA, one_line

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.experiments import ab, arms
from vnuma_sched.kernel import layout, vm
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology
from vnuma_sched.tunables import profile as P

HOST_ROOT = DATA / "sysfs" / "qemu-2node"     # 2 nodes: CPUs 0-1 and 2-3
HOST = read_topology(SysRoot(HOST_ROOT))
LIMITS = vm.GuestLimits()


def parse(spec, name="a"):
    return arms.parse_arm(name, spec, P.search_path())


def _arms(*items):
    return arms.parse_arms(arms.named_specs(list(items)), P.search_path())


def _place(*items, spec="2x2", pin=None, mem_mb=2048, limits=LIMITS):
    return arms.place(_arms(*items), spec, pin, mem_mb, HOST, limits)


# --- parsing ----------------------------------------------------------------------------

def test_layout_items_beside_knobs():
    arm = parse("topology:2x2,pin kernel.numa_balancing=0 nopvspin")
    assert arm.layout == arms.Layout("2x2", True)
    assert arm.knobs == {"kernel.numa_balancing": "0"} and arm.boot == ["nopvspin"]
    assert arm.to_dict()["layout"] == {"topology": "2x2", "pin": True}
    assert parse("topology:host nopin").layout == arms.Layout("host", False)
    assert parse("pin").layout == arms.Layout(None, True)   # the run's --topology, pinned
    plain = parse("kernel.numa_balancing=0")
    assert plain.layout is None and plain.to_dict()["layout"] is None


def test_a_topology_file_is_a_layout(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"nodes": [{"cpus": [0, 1], "distances": [10]}]}))
    assert parse(f"topology:{path}").layout == arms.Layout(str(path), None)


@pytest.mark.parametrize("spec, needle", [
    ("numa:2x2", "--a 'numa:2x2': unknown layout item (topology:SPEC, pin, nopin, share:per-node=N)"),
    ("pin:yes", "--a 'pin:yes': unknown layout item"),
    ("topology:", "--a 'topology:': topology: needs a SPEC"),
    ("topology:1x4 topology:2x2", "--a 'topology:2x2': the arm already has topology:1x4"),
    ("pin nopin", "--a 'nopin': the arm already says pin"),
])
def test_bad_layout_items(spec, needle):
    with pytest.raises(BadInput) as err:
        parse(spec)
    assert str(err.value) == needle or str(err.value).startswith(needle)


def test_colons_after_an_equals_sign_stay_boot_parameters():
    arm = parse("console=ttyS0:115200")
    assert arm.layout is None and arm.boot == ["console=ttyS0:115200"]


# --- placing on the host ----------------------------------------------------------------

def test_each_arm_gets_its_layout_the_others_the_run_topology():
    topos = _place("ref=kernel.numa_balancing=0", "flat=topology:1x2",
                   "full=topology:2x2,pin", "host=topology:host,nopin")
    assert topos["ref"] == vm.parse_topology("2x2", 2048, HOST, LIMITS)
    assert [n.cpus for n in topos["flat"].nodes] == [(0, 1)] and not topos["flat"].pinned
    assert topos["flat"].mem_mb == 2048            # memory stays --mem
    full = topos["full"]
    assert full.pinned and [(n.host_cpus, n.host_node) for n in full.nodes] == \
        [((0, 1), 0), ((2, 3), 1)]
    assert not topos["host"].pinned and len(topos["host"].nodes) == 2


def test_pin_alone_pins_the_run_topology_and_the_run_pin_is_the_default():
    topos = _place("ref=kernel.numa_balancing=0", "pinned=pin", pin=False)
    assert not topos["ref"].pinned and topos["pinned"].pinned
    assert layout.unpinned(topos["pinned"]) == topos["ref"]


def test_the_run_topology_is_not_parsed_when_every_arm_has_its_own():
    topos = _place("a=topology:1x2", "b=topology:2x1", spec="not-a-topology")
    assert [len(t.nodes) for t in topos.values()] == [1, 2]


@pytest.mark.parametrize("items, kw, needle", [
    (["ref=nopvspin", "flat=topology:1x4"],
     {"limits": vm.GuestLimits(2, "the guest kernel"), "spec": "1x2"},
     "--arm flat: --topology 1x4: 4 vCPUs, more than the guest kernel supports (2)"),
    (["ref=nopvspin", "full=topology:2x4,pin"], {},
     "--arm full: --topology 2x4: 8 vCPUs cannot be pinned 1:1 on this host's 4 CPUs"),
    (["ref=nopvspin", "odd=topology:3x1"], {},
     "--arm odd: --mem 2048M: 2048 MiB does not split evenly across 3 nodes"),
    (["ref=nopvspin", "x=topology:bogus"], {},
     "--arm x: --topology 'bogus': expected NxM"),
    (["ref=nopvspin", "x=topology:1x1"], {"spec": "bogus"},
     "--topology 'bogus': expected NxM"),   # the run's own topology: no arm named
])
def test_a_layout_that_does_not_fit_names_the_arm(items, kw, needle):
    with pytest.raises(BadInput) as err:
        _place(*items, **kw)
    assert str(err.value).startswith(needle), str(err.value)


# --- which arms share boots -------------------------------------------------------------

def test_arms_with_the_same_layout_share_boots_the_others_boot_alone():
    arm_list = _arms("ref=kernel.numa_balancing=0", "flat=topology:1x4",
                     "full=topology:2x2,pin", "ref2=kernel.numa_balancing=3",
                     "same=topology:2x2")
    topos = arms.place(arm_list, "2x2", None, 2048, HOST, LIMITS)
    groups = ab.boot_groups(arm_list, topos)
    assert groups == [["ref", "ref2", "same"], ["flat"], ["full"]]
    assert ab.boot_orders(groups, 2, 1) == [["ref", "ref2", "same"] * 2, ["flat"], ["full"],
                                            ["flat"], ["full"]]
    # the shared group's runs over --boots, the rounds starting with the next group
    assert ab.boot_orders(groups, 2, 2) == [["ref", "ref2", "same"], ["flat"], ["full"],
                                            ["flat"], ["full"], ["ref2", "same", "ref"]]


def test_boot_parameters_still_split_a_layout_group():
    arm_list = _arms("ref=kernel.numa_balancing=0", "pv=nopvspin", "flat=topology:1x2")
    topos = arms.place(arm_list, "2x2", None, 2048, HOST, LIMITS)
    assert ab.boot_groups(arm_list, topos) == [["ref"], ["pv"], ["flat"]]
    # every arm alone: the same order as a boot per run always had
    assert ab.boot_orders([["ref"], ["pv"], ["flat"]], 2, 1) == \
        [[a] for a in ["ref", "pv", "flat", "pv", "flat", "ref"]]
    assert ab.boot_groups(arm_list[:1] + arm_list[2:]) == [["ref", "flat"]]  # no layouts


# --- the records ------------------------------------------------------------------------

class LayoutGuest:
    """vm.run for 'ab': the guest sees the topology it was booted with (its nodes in
    its records and matrices); a placed guest reports a placement as QEMU would."""

    def __init__(self):
        self.boots = []

    def __call__(self, image, topo, cmd, runner, accel, timeout, append=(), workdir=None):
        plan = json.loads(Path(cmd[-1]).read_text())
        self.boots.append((plan["order"], topo, list(append)))
        nodes = len(topo.nodes)
        recs = [{"type": "guest", "kernel": "6.12.117+", "probes": {},
                 "topology": {"nodes": [{"id": i, "cpus": list(n.cpus)}
                                        for i, n in enumerate(topo.nodes)]}}]
        for i, name in enumerate(plan["order"]):
            recs.append({"type": "run", "index": i, "arm": name, "seconds": 1.0,
                         "score": 100.0 + len(self.boots) + i,
                         "matrix": [[1] * nodes for _ in range(nodes)],
                         "metrics": {"cross_node_migrations": nodes * 10 + len(self.boots)}})
        res = vm.VmResult("exited", 0, accel, 1.0,
                          stdout="".join(json.dumps(r) + "\n" for r in recs))
        if topo.pinned:
            res.placement = {"vcpus": [{"vcpu": v, "thread": 1000 + v, "host_cpu": h}
                                       for v, h in layout.vcpu_hosts(topo).items()],
                             "memory": []}
        return res


def _run(tmp_path, monkeypatch, arm_list, runs, boots, spec="2x2"):
    guest, said = LayoutGuest(), []
    monkeypatch.setattr(vm, "run", guest)
    topos = arms.place(arm_list, spec, None, 2048, HOST, LIMITS)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    doc = ab.run("bzImage", topos[arm_list[0].name], wl, arm_list, runs, boots,
                 tmp_path / "out", None, said.append, "tcg", 60, [], topos)
    return doc, guest, said, topos


def test_each_boot_gets_its_arms_layout_and_the_records_say_which(tmp_path, monkeypatch):
    arm_list = _arms("flat=topology:1x2", "full=topology:2x2,pin", "numa=kernel.numa_balancing=0")
    doc, guest, said, topos = _run(tmp_path, monkeypatch, arm_list, 2, 1)
    assert [(order, topo) for order, topo, _ in guest.boots] == [
        (["flat"], topos["flat"]), (["full"], topos["full"]), (["numa"], topos["numa"]),
        (["full"], topos["full"]), (["numa"], topos["numa"]), (["flat"], topos["flat"])]
    assert doc["mode"] == "boot per run" and doc["boots"] == 6
    assert any("arms differ in guest layout: one boot per run, so 6 boots" in s for s in said)
    out = tmp_path / "out"
    recs = [json.loads(ln) for ln in (out / "runs.jsonl").read_text().splitlines()]
    guests = {r["boot"]: r for r in recs if r["type"] == "guest"}
    for r in (r for r in recs if r["type"] == "run"):
        booted = guests[r["boot"]]
        assert booted["layout"] == topos[r["arm"]].to_dict()   # what the host booted
        assert ("placement" in booted) == (r["arm"] == "full")
    assert guests[1]["placement"]["vcpus"][3] == {"vcpu": 3, "thread": 1003, "host_cpu": 3}
    assert guests[1]["layout"]["nodes"][1]["host_cpus"] == [2, 3]
    # results: each arm's topology and layout request, the placed boots
    assert doc["arms"]["flat"]["topology"] == {"nodes": [{"id": 0, "cpus": [0, 1],
                                                          "distances": [10]}]}
    assert doc["arms"]["full"]["layout"] == {"topology": "2x2", "pin": True}
    assert doc["arms"]["numa"]["layout"] is None
    assert doc["arms"]["numa"]["topology"] == topos["numa"].to_dict()
    assert [(p["boot"], p["arms"]) for p in doc["placements"]] == [(1, ["full"]), (3, ["full"])]
    assert json.loads((out / "results.json").read_text()) == doc
    # statistics as for any experiment: every arm against the first, whatever its nodes
    m = doc["metrics"]["cross_node_migrations"]
    assert list(m) == ["flat", "full", "numa"] and m["flat"]["n"] == 2
    assert "ratio" in m["full"] and "ratio" in m["numa"]


def test_arms_sharing_a_layout_share_boots_beside_one_that_boots_alone(tmp_path, monkeypatch):
    arm_list = _arms("ref=kernel.numa_balancing=0", "on=kernel.numa_balancing=3",
                     "flat=topology:1x4")
    doc, guest, said, topos = _run(tmp_path, monkeypatch, arm_list, 3, 1)
    assert [order for order, _, _ in guest.boots] == [["ref", "on"] * 3, ["flat"], ["flat"],
                                                      ["flat"]]
    assert doc["mode"] == "boot per run (flat); one boot (ref on)" and doc["boots"] == 4
    assert any(s.startswith("4 boots: boot per run (flat); one boot (ref on)") for s in said)
    assert doc["placements"] == []
    assert doc["metrics"]["cross_node_migrations"]["flat"]["n"] == 3


# --- the command ------------------------------------------------------------------------

def _kernel(tmp_path, nr_cpus=64):
    build = tmp_path / "build"
    (build / "arch/x86/boot").mkdir(parents=True)
    (build / "arch/x86/boot/bzImage").write_bytes(b"MZ fake")
    (build / ".config").write_text(f"CONFIG_NR_CPUS={nr_cpus}\n")
    return build


def test_ab_cli_boots_each_arm_layout_on_the_host(tmp_path, monkeypatch):
    guest = LayoutGuest()
    monkeypatch.setattr(vm, "run", guest)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [
        "--root", str(HOST_ROOT), "ab", "--kernel", str(_kernel(tmp_path)), "--accel", "tcg",
        "--workload", "perf-pipe", "--runs", "2", "--out", str(out),
        "--arm", "flat=topology:1x4", "--arm", "full=topology:2x2,pin"],
        env={"VNUMA_SCHED_CACHE": str(tmp_path / "c")})
    assert res.exit_code == 0, res.output
    assert "guest flat 4 vCPUs, 1 nodes; full 4 vCPUs, 2 nodes, pinned under tcg" in res.stderr
    assert [(o, len(t.nodes), t.pinned) for o, t, _ in guest.boots] == [
        (["flat"], 1, False), (["full"], 2, True), (["full"], 2, True), (["flat"], 1, False)]
    doc = json.loads((out / "results.json").read_text())
    assert [n["host_cpus"] for n in doc["arms"]["full"]["topology"]["nodes"]] == [[0, 1], [2, 3]]


@pytest.mark.parametrize("args, nr_cpus, needle", [
    (["--arm", "ref=nopvspin", "--arm", "x=numa:2x2"], 64,
     "--arm x 'numa:2x2': unknown layout item"),
    (["--arm", "ref=nopvspin", "--arm", "flat=topology:1x4", "--topology", "1x2"], 2,
     "--arm flat: --topology 1x4: 4 vCPUs, more than the guest kernel (CONFIG_NR_CPUS=2"),
    (["--arm", "ref=nopvspin", "--arm", "full=topology:2x4,pin"], 64,
     "--arm full: --topology 2x4: 8 vCPUs cannot be pinned 1:1 on this host's 4 CPUs"),
    (["--arm", "ref=topology:1x1", "--arm", "on=pin", "--topology", "2x4"], 64,
     "--arm on: --topology 2x4: 8 vCPUs cannot be pinned 1:1 on this host's 4 CPUs"),
])
def test_ab_refuses_a_layout_before_anything(tmp_path, monkeypatch, args, nr_cpus, needle):
    def no_work(*a, **kw):
        raise AssertionError("worked before validating")

    for name in ("run", "choose_accel"):
        monkeypatch.setattr(vm, name, no_work)
    kernel = _kernel(tmp_path, nr_cpus)
    res = CliRunner().invoke(main, ["--root", str(HOST_ROOT), "ab", "--kernel", str(kernel),
                                    "--out", str(tmp_path / "out"), *args],
                             env={"VNUMA_SCHED_CACHE": str(tmp_path / "cache")})
    one_line(res, 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_a_failed_pin_names_its_reason(tmp_path, monkeypatch):
    def pin_fails(image, topo, cmd, runner, accel, timeout, append=(), workdir=None):
        assert topo.pinned
        return vm.VmResult("pin-failed", 255, accel, 1.0, console_tail=["booting"],
                           panic="pinning vCPU 1 (thread 42) to host CPU 3: Invalid argument")

    monkeypatch.setattr(vm, "run", pin_fails)
    arm_list = _arms("full=topology:2x2,pin", "flat=topology:1x2")
    topos = arms.place(arm_list, "2x2", None, 2048, HOST, LIMITS)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    with pytest.raises(ab.GuestFailed, match=r"guest pin-failed \(exit 255\): pinning vCPU 1 "
                                             r"\(thread 42\) to host CPU 3: Invalid argument"):
        ab.run("bzImage", topos["full"], wl, arm_list, 1, 1, tmp_path / "out", None,
               lambda m: None, "tcg", 60, [], topos)
