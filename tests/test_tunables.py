"""Tunables: registry resolution per kernel layout, profiles, plan, apply, verify,
revert, fault injection, persistence, export, hold (fixture sysroots, no root)."""

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers import REPO
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tunables_trees import build, snapshot

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import engine, journal
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import profile as P


def tree(tmp_path, layout):
    return build(tmp_path / layout, layout)


def prof(text, name="t"):
    return P.parse(text, f"{name}.ini")


def cli(root, *args, profiles=None):
    argv = ["--root", str(root), "tune"]
    if profiles:
        argv += ["--profiles", str(profiles)]
    return CliRunner().invoke(main, argv + list(args))


@pytest.mark.parametrize("layout,knob,path", [
    ("5.4", "sched.migration_cost_ns", "/proc/sys/kernel/sched_migration_cost_ns"),
    ("5.4", "sched.base_slice_ns", "/proc/sys/kernel/sched_min_granularity_ns"),
    ("5.4", "feature.WA_WEIGHT", "/sys/kernel/debug/sched_features"),
    ("6.1", "sched.base_slice_ns", "/sys/kernel/debug/sched/min_granularity_ns"),
    ("6.1", "sched.latency_ns", "/sys/kernel/debug/sched/latency_ns"),
    ("6.12", "sched.base_slice_ns", "/sys/kernel/debug/sched/base_slice_ns"),
    ("6.12", "feature.WA_WEIGHT", "/sys/kernel/debug/sched/features"),
])
def test_paths_move_by_version(tmp_path, layout, knob, path):
    root = SysRoot(tree(tmp_path, layout))
    res = K.resolve(K.REGISTRY[knob], root, engine.kernel_version(root))
    assert res.paths == (path,)


@pytest.mark.parametrize("layout,knob,reason", [
    ("6.12", "sched.latency_ns", "not in kernel 6.12"),
    ("6.12", "kernel.sched_numa_idle_damp", "unpatched kernel"),
    ("6.12", "kvm_guest.idle_halt_hint", "unpatched kernel"),
    ("6.12-lockdown", "sched.migration_cost_ns", "lockdown (integrity)"),
    ("6.12-lockdown", "domain.NUMA.max_newidle_lb_cost", "lockdown (integrity)"),
    ("6.12-nodebugfs", "feature.WA_IDLE", "debugfs not mounted"),
    ("6.12", "domain.PKG.imbalance_pct", "no PKG sched domain here"),
])
def test_unsupported_with_reason(tmp_path, layout, knob, reason):
    root = SysRoot(tree(tmp_path, layout))
    res = K.resolve(K.REGISTRY[knob], root, engine.kernel_version(root))
    assert res.paths == () and reason in res.reason


def test_domain_knob_addressed_by_name(tmp_path):
    root = SysRoot(tree(tmp_path, "6.12"))
    res = K.resolve(K.REGISTRY["domain.NUMA.imbalance_pct"], root, (6, 12))
    assert res.paths == tuple(f"/sys/kernel/debug/sched/domains/cpu{c}/domain1/imbalance_pct"
                              for c in range(4))


@pytest.mark.parametrize("text,needle", [
    ("[sysctl]\n/proc/sys/kernel/x = 1\n", "t.ini:2: '/proc/sys/kernel/x' is not a knob"),
    ("[sysctl]\nkernel..x = 1\n", "t.ini:2:"),
    ("[sysctl]\nkernel.nope = 1\n", "t.ini:2: unknown knob 'kernel.nope'"),
    ("[sysctl]\nkernel.numa_balancing = 9\n", "t.ini:2: kernel.numa_balancing=9 outside 0..3"),
    ("[sysctl]\nkernel.numa_balancing = x\n", "needs an integer"),
    ("[modules]\nkvm_guest.idle_halt_hint = maybe\n", "must be one of auto, on, off"),
    ("[bogus]\n", "t.ini:1: unknown section [bogus]"),
    ("kernel.numa_balancing = 1\n", "t.ini:1: setting outside a section"),
    ("[sysctl]\njust words\n", "t.ini:2: expected key = value"),
    ("[main]\ninclude = ../etc/passwd\n", "is not a profile name"),
    ("[sysctl]\nhaltpoll.guest_halt_poll_ns = 1\n", "is not a sysctl knob"),
])
def test_profile_errors_name_the_line(text, needle):
    with pytest.raises(BadInput) as err:
        prof(text)
    assert needle in str(err.value)


@hsettings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_parser_never_crashes_on_arbitrary_text(text):
    try:
        p = prof(text)
    except BadInput:
        return
    assert all(k in K.REGISTRY for k in p.settings)


@hsettings(max_examples=40, deadline=None)
@given(st.text(alphabet="[]=\n .#abcdeklnrstuy_0123456789/", max_size=120))
def test_arbitrary_profile_never_writes(tmp_path_factory, text):
    root = tree(tmp_path_factory.mktemp("r"), "6.12-patched")
    pdir = tmp_path_factory.mktemp("p")
    (pdir / "fuzz.ini").write_text(text)
    before = snapshot(root)
    res = cli(root, "apply", "fuzz", profiles=pdir)
    if res.exit_code != 0:
        assert snapshot(root) == before


def test_shipped_profiles_load_and_include(tmp_path):
    dirs = P.search_path()
    names = set(P.available(dirs))
    assert {"vnuma-guest-dedicated", "vnuma-guest-shared", "upstream-defaults"} <= names
    ded = P.load("vnuma-guest-dedicated", dirs)
    assert ded.settings["kernel.sched_numa_idle_damp"] == "3"
    assert ded.settings["kvm_guest.wait_poll_ns"] == "0"  # from upstream-defaults
    assert ded.origin["kvm_guest.wait_poll_ns"].endswith("upstream-defaults.ini:20")


def test_include_loop(tmp_path):
    (tmp_path / "a.ini").write_text("[main]\ninclude = b\n")
    (tmp_path / "b.ini").write_text("[main]\ninclude = a\n")
    with pytest.raises(BadInput, match="include loop"):
        P.load("a", [tmp_path])


def test_plan_on_patched_kernel(tmp_path):
    root = SysRoot(tree(tmp_path, "6.12-patched"))
    rows = {r.knob: r for r in engine.plan(P.load("vnuma-guest-dedicated", P.search_path()),
                                           root)}
    assert rows["kernel.sched_numa_idle_damp"].action == "set"
    assert rows["kvm_guest.idle_halt_hint"].current == "auto"
    assert rows["sched.migration_cost_ns"].action == "unchanged"
    assert rows["domain.NUMA.max_newidle_lb_cost"].action == "set"
    assert "tune hold" in rows["domain.NUMA.max_newidle_lb_cost"].reason
    assert rows["boot.cpuidle_haltpoll.force"].action == "boot"


def test_apply_verify_revert_is_byte_identical(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    before = snapshot(root)
    res = cli(root, "apply", "vnuma-guest-dedicated")
    assert res.exit_code == 0, res.output
    sysroot = SysRoot(root)
    assert sysroot.read("/proc/sys/kernel/sched_numa_idle_damp") == "3"
    assert sysroot.read("/sys/module/kvm_guest/parameters/idle_halt_hint") == "on"
    assert sysroot.read("/sys/kernel/debug/sched/domains/cpu3/domain1/max_newidle_lb_cost") \
        == "500000"
    ver = cli(root, "verify", "--json")
    statuses = {k["knob"]: k["status"] for k in json.loads(ver.output)["knobs"]}
    assert statuses["kernel.sched_numa_idle_damp"] == "OK"
    assert statuses["boot.cpuidle_haltpoll.force"] == "DIFF" and ver.exit_code == 1
    assert cli(root, "revert").exit_code == 0
    assert snapshot(root) == before


def test_feature_writes_use_no_prefix(tmp_path):
    root = tree(tmp_path, "6.12")
    p = prof("[features]\nWA_WEIGHT = 0\nNEXT_BUDDY = 1\n")
    rows = engine.plan(p, SysRoot(root))
    writes = []

    class Spy(SysRoot):
        def write(self, path, value):
            writes.append((path, value))

    engine.apply(rows, Spy(root), p)
    assert writes == [("/sys/kernel/debug/sched/features", "NO_WA_WEIGHT"),
                      ("/sys/kernel/debug/sched/features", "NEXT_BUDDY")]


class FailingRoot(SysRoot):
    """Fails the n-th write (fault injection for the unit tier)."""

    def __init__(self, root, fail_at):
        super().__init__(root)
        self.fail_at, self.n = fail_at, 0

    def write(self, path, value):
        self.n += 1
        if self.n == self.fail_at:
            raise DataError(path, "write failed: Invalid argument")
        super().write(path, value)


def test_failed_write_restores_everything_written(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    before = snapshot(root)
    p = P.load("vnuma-guest-dedicated", P.search_path())
    failing = FailingRoot(root, fail_at=4)
    with pytest.raises(engine.ApplyError, match="every earlier write was restored"):
        engine.apply(engine.plan(p, failing), failing, p)
    assert snapshot(root) == before
    assert journal.load(SysRoot(root)) is None


def test_killed_between_writes_then_revert(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    before = snapshot(root)
    code = f"""
import os, signal
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import engine, profile as P
p = P.load("vnuma-guest-dedicated", P.search_path())
r = SysRoot({str(root)!r})
def between(n):
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)
engine.apply(engine.plan(p, r), r, p, between=between)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert res.returncode == -signal.SIGKILL
    assert snapshot(root) != before
    doc = journal.load(SysRoot(root))
    assert [e["state"] for e in doc["entries"]] == ["written"] * 3
    assert cli(root, "revert").exit_code == 0
    assert snapshot(root) == before


def test_second_apply_needs_replace(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    assert cli(root, "apply", "vnuma-guest-dedicated").exit_code == 0
    res = cli(root, "apply", "vnuma-guest-shared")
    assert res.exit_code == 2 and "revert it first or use --replace" in res.output
    assert cli(root, "apply", "--replace", "vnuma-guest-shared").exit_code == 0
    st = json.loads(cli(root, "status", "--json").output)
    assert st["applied"]["profile"] == "vnuma-guest-shared"


def test_persist_files_are_written_and_removed(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    before = snapshot(root)
    assert cli(root, "apply", "--persist", "--persist-boot",
               "vnuma-guest-dedicated").exit_code == 0
    sysctl = (root / "etc/sysctl.d/90-vnuma_sched.conf").read_text()
    assert "kernel.sched_numa_idle_damp = 3" in sysctl
    modprobe = (root / "etc/modprobe.d/vnuma_sched.conf").read_text()
    assert "options kvm_guest idle_halt_hint=on wait_poll_ns=0" in modprobe
    grub = (root / "etc/default/grub.d/90-vnuma_sched.cfg").read_text()
    assert "cpuidle_haltpoll.force" in grub
    assert cli(root, "revert").exit_code == 0
    assert snapshot(root) == before


def test_revert_without_journal(tmp_path):
    res = cli(tree(tmp_path, "6.12"), "revert")
    assert res.exit_code == 2 and "nothing to revert" in res.output


def test_bad_profile_changes_nothing(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bad.ini").write_text("[sysctl]\nkernel.sched_numa_idle_damp = 3\n"
                                            "kernel.numa_balancing = 99\n")
    before = snapshot(root)
    res = cli(root, "apply", "bad", profiles=tmp_path / "p")
    assert res.exit_code == 2 and "bad.ini:3" in res.output
    assert res.output.count("\n") == 1 and snapshot(root) == before


def test_export_tuned(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    res = cli(root, "export", "vnuma-guest-dedicated", "--out", str(tmp_path / "tuned"))
    assert res.exit_code == 0
    conf = (tmp_path / "tuned" / "tuned.conf").read_text()
    assert "[sysctl]\n" in conf and "kernel.sched_numa_idle_damp=3" in conf
    assert "/sys/module/kvm_guest/parameters/idle_halt_hint=on" in conf
    assert "[bootloader]\ncmdline_vnuma_sched=cpuidle_haltpoll.force" in conf


def test_hold_reasserts_decaying_knob(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    assert cli(root, "apply", "vnuma-guest-dedicated").exit_code == 0
    path = root / "sys/kernel/debug/sched/domains/cpu0/domain1/max_newidle_lb_cost"
    path.write_text("480000\n")  # the kernel decayed it
    p = P.load("vnuma-guest-dedicated", P.search_path())
    msgs = []
    rounds = engine.hold(p, SysRoot(root), 0.1, 2, msgs.append, sleep=lambda s: None)
    assert rounds == 2 and path.read_text() == "500000\n"
    assert any("re-asserted domain.NUMA.max_newidle_lb_cost" in m for m in msgs)


def test_hold_needs_applied_profile(tmp_path):
    p = P.load("vnuma-guest-dedicated", P.search_path())
    with pytest.raises(BadInput, match="apply 'vnuma-guest-dedicated' first"):
        engine.hold(p, SysRoot(tree(tmp_path, "6.12")), 1, 1, print)


def test_not_root_on_live_system(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = CliRunner().invoke(main, ["tune", "apply", "vnuma-guest-dedicated"])
    assert res.exit_code == 4
    assert res.output.strip() == "vnuma-sched: error: needs root for writing scheduler tunables"


def test_plan_json(tmp_path):
    res = cli(tree(tmp_path, "5.4"), "plan", "--json", "upstream-defaults")
    rows = {r["knob"]: r for r in json.loads(res.output)["plan"]}
    assert rows["sched.migration_cost_ns"]["path"] == [
        "/proc/sys/kernel/sched_migration_cost_ns"]
    assert rows["kernel.sched_numa_idle_damp"]["action"] == "unsupported"
