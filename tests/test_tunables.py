"""Tunables: registry resolution per kernel layout, profiles, plan, apply, verify,
revert, fault injection, persistence, export, hold (fixture sysroots, no root)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, VNUMA
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tunables_trees import build, snapshot

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.system import facts
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import engine, journal, levels
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import profile as P

# the fixture trees' sched features file takes writes as the kernel's does
pytestmark = pytest.mark.usefixtures("kernel_features")
TESTS = Path(__file__).parent


def tree(tmp_path, layout):
    return build(tmp_path / layout, layout)


def prof(text, name="t"):
    return P.parse(text, f"{name}.ini")


def cli(root, *args, profiles=None):
    argv = ["--root", str(root), "tune"]
    if profiles:
        argv += ["--profiles", str(profiles)]
    return CliRunner().invoke(main, argv + list(args))


# The dedicated profile and a sysctl (the shipped profiles set none), so that --persist
# also writes /etc/sysctl.d.
PLUS = "[main]\ninclude = vnuma-guest-dedicated\n\n[sysctl]\nkernel.sched_schedstats = 1\n"


def plus_dir(tmp_path):
    pdir = tmp_path / "plus"
    pdir.mkdir(exist_ok=True)
    (pdir / "dedicated-plus.ini").write_text(PLUS)
    return pdir


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
    ("6.12", "kvm_guest.idle_halt_hint", "unpatched kernel"),
    ("6.12", "vnuma_debug.emulate_halt_preempted", "unpatched kernel"),
    ("6.12-lockdown", "sched.migration_cost_ns", "lockdown (integrity)"),
    ("6.12-lockdown", "domain.NUMA.max_newidle_lb_cost", "lockdown (integrity)"),
    ("6.12-nodebugfs", "feature.WA_IDLE", "debugfs not mounted"),
    ("6.12", "domain.PKG.imbalance_pct", "no PKG sched domain here"),
])
def test_unsupported_with_reason(tmp_path, layout, knob, reason):
    root = SysRoot(tree(tmp_path, layout))
    res = K.resolve(K.REGISTRY[knob], root, engine.kernel_version(root))
    assert res.paths == () and reason in res.reason


SERIES_FEATURES = ("feature.NUMA_WAKE_PREV",)


@pytest.mark.parametrize("layout", ["5.4", "6.1", "6.12"])
def test_series_features_are_unsupported_on_unpatched_kernels(tmp_path, layout):
    p = prof("[features]\nNUMA_WAKE_PREV = 1\nWA_IDLE = 1\n"
             "DELAY_DEQUEUE = 1\n")
    rows = {r.knob: r for r in engine.plan(p, SysRoot(tree(tmp_path, layout)))}
    for name in SERIES_FEATURES:
        assert K.REGISTRY[name].patch_gate
        assert (rows[name].action, rows[name].reason) == (
            "unsupported", "feature not in this kernel: unpatched kernel (no vnuma_sched "
                           "series)")
    assert rows["feature.WA_IDLE"].action == "unchanged"
    # a stock feature this kernel lacks is not blamed on the series
    assert (rows["feature.DELAY_DEQUEUE"].action, rows["feature.DELAY_DEQUEUE"].reason) == (
        "unsupported", "feature not in this kernel")
    assert not K.REGISTRY["feature.DELAY_DEQUEUE"].patch_gate


def test_series_features_on_a_patched_kernel(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    p = prof("[features]\nNUMA_WAKE_PREV = 1\nWA_WEIGHT = 1\n")
    rows = {r.knob: r for r in engine.plan(p, SysRoot(root))}
    assert [(rows[n].current, rows[n].action) for n in
            ("feature.NUMA_WAKE_PREV", "feature.WA_WEIGHT")] == [("0", "set"), ("1", "unchanged")]
    engine.apply(list(rows.values()), SysRoot(root), p)
    tokens = (root / "sys/kernel/debug/sched/features").read_text().split()
    assert "NUMA_WAKE_PREV" in tokens and "NO_NUMA_WAKE_PREV" not in tokens
    assert "WA_IDLE" in tokens                 # the other features are still listed


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
    assert ded.settings["kvm_guest.idle_halt_hint"] == "on"
    assert ded.settings["domain.NUMA.newidle_balance"] == "0"
    for name in names:  # no shipped profile relies on a value the kernel decays
        assert not [k for k in P.load(name, dirs).settings if K.REGISTRY[k].decays], name
    assert ded.settings["feature.NUMA_WAKE_PREV"] == "1"
    assert ded.origin["feature.NUMA_WAKE_PREV"].endswith("vnuma-guest-dedicated.ini:12")
    assert ded.origin["kvm_guest.idle_halt_hint"].endswith("vnuma-guest-dedicated.ini:18")
    shared = P.load("vnuma-guest-shared", dirs)
    assert shared.settings["kvm_guest.idle_halt_hint"] == "off"
    assert shared.settings["feature.NUMA_WAKE_PREV"] == "0"
    upstream = P.load("upstream-defaults", dirs).settings
    assert upstream["kvm_guest.idle_halt_hint"] == "auto"
    assert {upstream[n] for n in SERIES_FEATURES} == {"0"}


def test_include_loop(tmp_path):
    (tmp_path / "a.ini").write_text("[main]\ninclude = b\n")
    (tmp_path / "b.ini").write_text("[main]\ninclude = a\n")
    with pytest.raises(BadInput, match=r"b.ini:2: include loop \(a -> b -> a\)"):
        P.load("a", [tmp_path])
    (tmp_path / "c.ini").write_text("[main]\ninclude = nope\n")
    with pytest.raises(BadInput, match="c.ini:2: included profile 'nope' not found"):
        P.load("c", [tmp_path])


def test_plan_on_patched_kernel(tmp_path):
    root = SysRoot(tree(tmp_path, "6.12-patched"))
    rows = {r.knob: r for r in engine.plan(P.load("vnuma-guest-dedicated", P.search_path()),
                                           root)}
    assert rows["feature.NUMA_WAKE_PREV"].action == "set"
    assert rows["kvm_guest.idle_halt_hint"].current == "auto"
    assert rows["sched.migration_cost_ns"].action == "unchanged"
    relax = rows["domain.NUMA.newidle_balance"]
    assert (relax.action, relax.boot) == ("boot", "relax_domain_level=4")
    assert "NUMA domains start at level 5 (SMT CLS MC PKG NODE NUMA)" in relax.reason
    assert rows["boot.cpuidle_haltpoll.force"].action == "boot"


def test_decaying_knob_is_planned_with_its_reason(tmp_path):
    p = prof("[domains]\nNUMA.max_newidle_lb_cost = 500000\n")
    (row,) = engine.plan(p, SysRoot(tree(tmp_path, "6.12")))
    assert row.action == "set" and "tune hold" in row.reason
    assert "decays" in K.REGISTRY["domain.NUMA.max_newidle_lb_cost"].doc


def test_apply_verify_revert_is_byte_identical(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    before = snapshot(root)
    res = cli(root, "apply", "vnuma-guest-dedicated")
    assert res.exit_code == 0, res.output
    sysroot = SysRoot(root)
    assert "NUMA_WAKE_PREV" in sysroot.read("/sys/kernel/debug/sched/features").split()
    assert sysroot.read("/sys/module/kvm_guest/parameters/idle_halt_hint") == "on"
    ver = cli(root, "verify", "--json")
    statuses = {k["knob"]: k["status"] for k in json.loads(ver.output)["knobs"]}
    assert statuses["feature.NUMA_WAKE_PREV"] == "OK"
    assert statuses["kvm_guest.idle_halt_hint"] == "OK"
    assert statuses["boot.cpuidle_haltpoll.force"] == "pending reboot"
    assert statuses["domain.NUMA.newidle_balance"] == "pending reboot"
    assert ver.exit_code == 0
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
    failing = FailingRoot(root, fail_at=2)    # the feature written, then the module fails
    with pytest.raises(engine.ApplyError, match="every earlier write was restored"):
        engine.apply(engine.plan(p, failing), failing, p)
    assert snapshot(root) == before
    assert journal.load(SysRoot(root)) is None


def test_killed_between_writes_then_revert(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    before = snapshot(root)
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
import tunables_trees
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import engine, profile as P
tunables_trees.emulate_features()
p = P.load("dedicated-plus", [{str(plus_dir(tmp_path))!r}, *P.search_path()])
r = SysRoot({str(root)!r})
def between(n):
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
engine.apply(engine.plan(p, r), r, p, between=between)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert res.returncode == -signal.SIGKILL
    assert snapshot(root) != before
    doc = journal.load(SysRoot(root))
    # the whole batch was journaled before its first write; "done" follows the batch
    assert len(doc.entries) > 2 and {e["state"] for e in doc.entries} == {"pending"}
    made = [e for e in doc.entries
            if engine.read(K.known(e["knob"]), e["path"], SysRoot(root)) == e["new"]]
    assert len(made) == 2
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
    assert cli(root, "apply", "--persist", "--persist-boot", "dedicated-plus",
               profiles=plus_dir(tmp_path)).exit_code == 0
    sysctl = (root / "etc/sysctl.d/90-vnuma_sched.conf").read_text()
    assert "kernel.sched_schedstats = 1" in sysctl
    modprobe = (root / "etc/modprobe.d/vnuma_sched.conf").read_text()
    assert "options kvm_guest idle_halt_hint=on\n" in modprobe
    grub = (root / "etc/default/grub.d/90-vnuma_sched.cfg").read_text()
    assert "relax_domain_level=4 cpuidle_haltpoll.force" in grub
    assert cli(root, "revert").exit_code == 0
    assert snapshot(root) == before


def test_revert_without_journal(tmp_path):
    res = cli(tree(tmp_path, "6.12"), "revert")
    assert res.exit_code == 2 and "nothing to revert" in res.output


def test_bad_profile_changes_nothing(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bad.ini").write_text("[sysctl]\nkernel.sched_schedstats = 1\n"
                                            "kernel.numa_balancing = 99\n")
    before = snapshot(root)
    res = cli(root, "apply", "bad", profiles=tmp_path / "p")
    assert res.exit_code == 2 and "bad.ini:3" in res.output
    assert res.output.count("\n") == 1 and snapshot(root) == before


def test_export_tuned(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    res = cli(root, "export", "dedicated-plus", "--out", str(tmp_path / "tuned"),
              profiles=plus_dir(tmp_path))
    assert res.exit_code == 0
    conf = (tmp_path / "tuned" / "tuned.conf").read_text()
    assert "[sysctl]\n" in conf and "kernel.sched_schedstats=1" in conf
    assert "/sys/module/kvm_guest/parameters/idle_halt_hint=on" in conf
    features = next(ln for ln in conf.splitlines() if "cannot express" in ln).split()
    assert "NUMA_WAKE_PREV" in features
    assert ("[bootloader]\ncmdline_vnuma_sched=relax_domain_level=4 cpuidle_haltpoll.force"
            in conf)
    assert "/proc/cmdline" not in conf


HOLD = "[domains]\nNUMA.max_newidle_lb_cost = 500000\n"


def test_hold_reasserts_decaying_knob(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "held.ini").write_text(HOLD)
    assert cli(root, "apply", "held", profiles=tmp_path / "p").exit_code == 0
    path = root / "sys/kernel/debug/sched/domains/cpu0/domain1/max_newidle_lb_cost"
    path.write_text("480000\n")  # the kernel decayed it
    p = P.load("held", [tmp_path / "p"])
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
    assert rows["feature.NUMA_WAKE_PREV"]["action"] == "unsupported"


# --- bad input: one line, exit 2 naming file:line, nothing changed ---------------------

@pytest.mark.parametrize("value,needle", [
    ("9" * 5000, "needs an integer of at most 20 ASCII digits, got '9999"),
    ("٣", "needs an integer of at most 20 ASCII digits, got '٣'"),
    ("1٣", "needs an integer"),
    ("１", "needs an integer"),
])
def test_huge_or_unicode_numbers_are_bad_input(tmp_path, value, needle):
    root = tree(tmp_path, "6.12-patched")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "num.ini").write_text(f"[sysctl]\nkernel.numa_balancing = {value}\n")
    before = snapshot(root)
    res = cli(root, "apply", "num", profiles=tmp_path / "p")
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "num.ini:2: kernel.numa_balancing" in res.output and needle in res.output
    assert len(res.output) < 300 and snapshot(root) == before


def test_unicode_digits_never_pass_a_check():
    for knob in (k for k in K.REGISTRY.values() if k.vtype == "int"):
        for value in ("٣", "１", "²", "1٣", "-٣"):
            with pytest.raises(BadInput, match="ASCII digits"):
                knob.check_value(value, "x")
            assert not knob.valid_stored(value)


def test_list_shows_a_broken_profile_and_the_others(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "broken.ini").write_text("[sysctl]\nkernel.numa_balancing = lots\n")
    (tmp_path / "p" / "mine.ini").write_text("[main]\nsummary = mine\n")
    res = cli(tree(tmp_path, "6.12"), "list", "--json", profiles=tmp_path / "p")
    assert res.exit_code == 0, res.output
    items = {i["name"]: i for i in json.loads(res.output)["profiles"]}
    assert "broken.ini:2: kernel.numa_balancing needs an integer" in items["broken"]["error"]
    assert items["mine"]["summary"] == "mine" and items["mine"]["error"] is None
    assert items["vnuma-guest-dedicated"]["error"] is None
    text = cli(tree(tmp_path, "6.12"), "list", profiles=tmp_path / "p").output
    assert "BROKEN: " in text and "vnuma-guest-shared" in text


def _world_readable_tree(layout):
    top = Path(tempfile.mkdtemp(prefix="vnuma-tune-"))
    root = build(top / "root", layout)
    for p in [top, *top.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return top, root


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a command as nobody (needs root)")
@pytest.mark.parametrize("args", [("list",), ("plan", "vnuma-guest-dedicated"),
                                  ("verify", "vnuma-guest-dedicated")])
def test_user_with_home_root_is_warned_not_crashed(args):
    if os.stat("/root").st_mode & 0o005:
        pytest.skip("/root is open to every user here")
    top, root = _world_readable_tree("6.12-patched")
    try:
        res = subprocess.run([VNUMA, "--root", str(root), "tune", *args], user=65534,
                             group=65534, env={"HOME": "/root", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(top)
    assert res.returncode in (0, 1), res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert ("warning: skipping profile directory /root/.config/vnuma_sched/profiles: "
            "Permission denied") in res.stderr
    assert ("vnuma-guest-dedicated" if args == ("list",) else "feature.NUMA_WAKE_PREV") \
        in res.stdout


def test_unreadable_profile_dir_is_skipped_with_a_warning(monkeypatch, tmp_path):
    blocked = tmp_path / "blocked"
    real_listdir = os.listdir

    def listdir(path):
        if str(path).startswith(str(blocked)):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    warnings = []
    dirs = P.search_path(None, blocked, warn=warnings.append)
    assert dirs == [P.BUILTIN_DIR]
    assert warnings == [f"skipping profile directory {blocked}/vnuma_sched/profiles: "
                        "Permission denied"]


# --- paths: symlinks resolved, nothing outside the root -----------------------------------

def test_sysroot_refuses_a_symlink_out_of_the_root(tmp_path):
    root = tree(tmp_path, "6.12")
    outside = tmp_path / "outside"
    outside.write_text("1\n")
    (root / "proc/sys/kernel/numa_balancing").unlink()
    (root / "proc/sys/kernel/numa_balancing").symlink_to(outside)
    (root / "proc/sys/inside").symlink_to("kernel")
    sr = SysRoot(root)
    with pytest.raises(BadInput, match="resolves to .*outside, outside the root"):
        sr.path("/proc/sys/kernel/numa_balancing")
    assert sr.read("/proc/sys/inside/sched_schedstats") == "0"


@pytest.mark.parametrize("link", ["sys/kernel/debug/sched/features", "sys/module"])
def test_symlinked_knob_never_writes_outside(tmp_path, link):
    root = tree(tmp_path, "6.12-patched")
    outside = tmp_path / "outside"
    target = root / link
    shutil.move(target, outside)
    target.symlink_to(outside)
    before = snapshot(outside) if outside.is_dir() else outside.read_bytes()
    res = cli(root, "apply", "vnuma-guest-dedicated")
    assert res.exit_code == 2 and "outside the root" in res.output, res.output
    assert (snapshot(outside) if outside.is_dir() else outside.read_bytes()) == before
    assert journal.load(SysRoot(root)) is None


# --- the journal is data: checked before revert acts on it --------------------------------

JPATH = "var/lib/vnuma_sched/journal.jsonl"
HEADER = {"t": "header", "version": 2, "profile": "x", "kernel": "6.12.117",
          "created": "2025-01-01T00:00:00Z", "boot_id": None}
GOOD = {"t": "write", "seq": 0, "knob": "kernel.numa_balancing", "kind": "sysctl",
        "path": "/proc/sys/kernel/numa_balancing", "old": "1", "new": "0"}


def write_journal(root, *records, header=HEADER):
    path = Path(root) / JPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in (header, *records)]
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.parametrize("record,needle", [
    ({**GOOD, "path": "/etc/passwd"}, "line 2: '/etc/passwd' is not a path of kernel.numa_b"),
    ({**GOOD, "path": "/proc/sys/kernel/../../../etc/passwd"}, "is not a path of"),
    ({"t": "file", "path": "/etc/hostname", "old": None, "mode": None, "sha256": "0" * 64},
     "line 2: '/etc/hostname' is not a file this tool writes"),
    ({**GOOD, "old": 1}, "line 2: old is not a string"),
    ({**GOOD, "knob": ["kernel.numa_balancing"]}, "line 2: knob is not a string"),
    ({**GOOD, "seq": "0"}, "line 2: seq out of order"),
    ({**GOOD, "seq": True}, "line 2: seq out of order"),
    ({**GOOD, "old": "1\nkernel.x = 1"}, "is not a kernel.numa_balancing value"),
    ({**GOOD, "kind": "boot"}, "is not a 'boot' knob written at run time"),
    ({**GOOD, "knob": "boot.nopvspin", "kind": "boot"}, "written at run time"),
    ({**GOOD, "knob": "nope"}, "unknown knob 'nope'"),
    ({"t": "done", "seq": 5}, "done for an unknown seq"),
    ({"t": "file", "path": K.SYSCTL_D, "old": None, "mode": "644", "sha256": "0" * 64},
     "mode is not a file mode"),
    ("[1, 2]", "line 2: not a JSON object"),
    ("{\"t\": ", "line 2: not JSON"),
    ("[" * 100000, "line 2: not JSON"),
    ("9" * 5000, "line 2: not JSON"),
])
def test_tampered_journal_is_refused(tmp_path, record, needle):
    root = tree(tmp_path, "6.12")
    for name, text in (("etc/passwd", "root:x:0:0\n"), ("etc/hostname", "guest\n")):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    write_journal(root, record)
    before = snapshot(root)
    for args in (("revert",), ("revert", "--force"), ("status",), ("apply", "--replace",
                                                                   "upstream-defaults")):
        res = cli(root, *args)
        assert res.exit_code == 3 and res.output.count("\n") == 1, res.output
        assert f"{root}/{JPATH}: corrupt journal, " in res.output and needle in res.output
        assert res.output.count(JPATH) == 1 and "internal error" not in res.output
    assert snapshot(root) == before


@pytest.mark.parametrize("header,needle", [
    ({**HEADER, "profile": 5}, "profile is not a profile name"),
    ({**HEADER, "profile": "../../etc"}, "profile is not a profile name"),
    ({**HEADER, "version": "2"}, "unknown version"),
    ({"t": "write"}, "not a header"),
])
def test_journal_header_is_checked(tmp_path, header, needle):
    root = tree(tmp_path, "6.12")
    write_journal(root, GOOD, header=header)
    res = cli(root, "revert")
    assert res.exit_code == 3 and f"line 1: {needle}" in res.output


@pytest.mark.parametrize("doc,needle", [
    ({"version": 1, "profile": "x", "kernel": "k", "created": "c", "entries": "x"},
     "entries is not a list"),
    ({"version": 1, "profile": "x", "kernel": "k", "created": "c", "entries": [5]},
     "entry 0 is not an object"),
    ({"version": 1, "profile": "x", "kernel": "k", "created": "c",
      "entries": [{**GOOD, "path": "/etc/passwd"}]}, "entry 0: '/etc/passwd' is not a path"),
    ({"version": 1, "profile": "x", "kernel": "k", "created": "c", "entries": [],
      "files": ["/etc/hostname"]}, "'/etc/hostname' is not a file this tool writes"),
    ({"version": 1, "profile": "x", "kernel": 5, "created": "c", "entries": []},
     "kernel is not a short text"),
    ({"entries": []}, "unknown version"),
])
def test_previous_format_journal_is_checked_too(tmp_path, doc, needle):
    root = tree(tmp_path, "6.12")
    legacy = root / "run/vnuma_sched/journal.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps(doc))
    res = cli(root, "revert")
    assert res.exit_code == 3 and res.output.count("\n") == 1
    assert f"{root}/run/vnuma_sched/journal.json: corrupt journal, {needle}" in res.output


def test_journal_error_names_the_root_as_given(tmp_path):
    real = tree(tmp_path, "6.12")
    (tmp_path / "given").symlink_to(real)
    write_journal(real, "not json")
    res = cli(tmp_path / "given", "status")
    assert res.exit_code == 3
    assert res.output.startswith(f"vnuma-sched: error: {tmp_path}/given/{JPATH}: corrupt")
    assert "/run/" not in res.output


def test_torn_last_line_is_ignored(tmp_path):
    root = tree(tmp_path, "6.12")
    path = write_journal(root, GOOD)
    (root / "proc/sys/kernel/numa_balancing").write_text("0\n")
    path.write_text(path.read_text() + '{"t": "write", "seq": 1, "knob": "kern')
    res = cli(root, "revert")
    assert res.exit_code == 0, res.output
    assert (root / "proc/sys/kernel/numa_balancing").read_text() == "1\n"


def test_previous_journal_format_is_still_reverted(tmp_path):
    root = tree(tmp_path, "6.12")
    before = snapshot(root)
    (root / "proc/sys/kernel/numa_balancing").write_text("0\n")
    ours = root / "etc/sysctl.d/90-vnuma_sched.conf"
    users = root / "etc/modprobe.d/vnuma_sched.conf"
    ours.parent.mkdir(parents=True)
    ours.write_text("# written by vnuma-sched; removed by 'tune revert'\nx = 1\n")
    users.parent.mkdir(parents=True)
    users.write_text("options haltpoll guest_halt_poll_ns=1\n")
    legacy = root / "run/vnuma_sched/journal.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"version": 1, "profile": "x", "kernel": "6.12.117",
                                  "created": "2025", "entries": [{**GOOD, "state": "written"}],
                                  "files": [K.SYSCTL_D, K.MODPROBE_D]}))
    res = cli(root, "revert")
    assert res.exit_code == 1 and "not written by this tool" in res.output
    assert not ours.exists() and users.exists()
    assert cli(root, "revert", "--force").exit_code == 0
    users.unlink()
    assert snapshot(root) == before


# --- verify: drift only for what was written and changed since ----------------------------

def test_verify_tells_drift_from_pending_and_not_applicable(tmp_path):
    root = tree(tmp_path, "6.12")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "v.ini").write_text(
        "[sysctl]\nkernel.numa_balancing = 0\n[features]\nNUMA_WAKE_PREV = 1\n"
        "[boot]\nnopvspin = 1\n")
    res = cli(root, "verify", "v", profiles=tmp_path / "p")
    assert res.exit_code == 1 and "DIFF" in res.output     # not applied: differs
    assert cli(root, "apply", "v", profiles=tmp_path / "p").exit_code == 0
    res = cli(root, "verify", "--json", profiles=tmp_path / "p")
    status = {k["knob"]: k["status"] for k in json.loads(res.output)["knobs"]}
    assert res.exit_code == 0 and status == {"kernel.numa_balancing": "OK",
                                             "feature.NUMA_WAKE_PREV": "not applicable here",
                                             "boot.nopvspin": "pending reboot"}
    (root / "proc/sys/kernel/numa_balancing").write_text("1\n")
    res = cli(root, "verify", profiles=tmp_path / "p")
    assert res.exit_code == 1 and "DRIFT" in res.output


# --- relax_domain_level from the kernel's sched-domain levels -----------------------------

def levels_tree(tmp_path, release, config, packages, names):
    """packages: package id per node (2 CPUs each); names: cpu0's domains."""
    root = tmp_path / "lv"
    files = {"proc/sys/kernel/osrelease": release + "\n", "proc/cmdline": "quiet\n"}
    if config is not None:
        files[f"boot/config-{release}"] = "".join(f"CONFIG_SCHED_{c}=y\n" for c in config)
    for node, pkg in enumerate(packages):
        files[f"sys/devices/system/node/node{node}/cpulist"] = f"{2 * node}-{2 * node + 1}\n"
        for cpu in (2 * node, 2 * node + 1):
            files[f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"] = f"{pkg}\n"
    for i, name in enumerate(names):
        files[f"sys/kernel/debug/sched/domains/cpu0/domain{i}/name"] = name + "\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return SysRoot(root)


@pytest.mark.parametrize("release,config,packages,names,value,table", [
    ("6.12.1", ("SMT", "CLUSTER", "MC"), (0, 1), ("MC", "NUMA"), 4, "SMT CLS MC PKG"),
    ("6.12.1", ("SMT", "CLUSTER", "MC"), (0, 0), ("MC", "NUMA"), 3, "SMT CLS MC"),
    ("6.12.1", ("SMT", "CLUSTER", "MC"), (0, 0), ("MC", "NODE", "NUMA"), 4, "SMT CLS MC"),
    ("6.12.1", ("SMT", "MC"), (0, 1), ("SMT", "MC", "NUMA"), 3, "SMT MC PKG"),
    ("6.1.0", ("SMT", "CLUSTER", "MC"), (0, 0), ("SMT", "MC", "DIE", "NUMA"), 4,
     "SMT CLS MC DIE"),
    ("5.4.0", None, (0, 1), ("MC", "NUMA"), 3, "SMT MC DIE"),
])
def test_relax_level_counts_the_whole_topology_table(tmp_path, release, config, packages,
                                                     names, value, table):
    sr = levels_tree(tmp_path, release, config, packages, names)
    relax = levels.numa_relax(sr, facts.version(sr), levels.domain_names(sr))
    assert relax.value == value and " ".join(relax.table) == table
    assert bool(relax.assumed) == (config is None)


def test_relax_level_assumes_a_package_level_when_unreadable(tmp_path):
    sr = levels_tree(tmp_path, "6.12.1", ("SMT", "MC"), (), ("MC", "NUMA"))
    relax = levels.numa_relax(sr, (6, 12), levels.domain_names(sr))
    assert relax.value == 3 and "PKG in the table" in relax.explain()


def test_relax_row_reads_the_command_line(tmp_path):
    root = tree(tmp_path, "6.12")
    (root / "proc/cmdline").write_text("quiet relax_domain_level=4\n")
    p = prof("[domains]\nNUMA.newidle_balance = 0\n")
    (row,) = engine.plan(p, SysRoot(root))
    assert (row.current, row.action) == ("0", "unchanged")
    (row,) = engine.plan(prof("[domains]\nNUMA.newidle_balance = 0\n[boot]\n"
                              "relax_domain_level = 2\n"), SysRoot(root))[:1]
    assert row.action == "unsupported" and "sets boot.relax_domain_level" in row.reason
    (row,) = engine.plan(p, SysRoot(tree(tmp_path / "n", "6.12-nodebugfs")))
    assert row.action == "unsupported" and "debugfs" in row.reason


# --- persisted files: journaled, restored (not deleted), journal on persistent storage ----

def test_persist_restores_a_file_the_user_wrote(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    mine = root / "etc/sysctl.d/90-vnuma_sched.conf"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"# mine\nkernel.numa_balancing = 0\n\xff\n")
    mine.chmod(0o600)
    before = snapshot(root)
    assert cli(root, "apply", "--persist", "dedicated-plus",
               profiles=plus_dir(tmp_path)).exit_code == 0
    assert b"kernel.sched_schedstats = 1" in mine.read_bytes()
    assert (root / JPATH).is_file()        # /var/lib: survives a reboot
    assert not (root / "run/vnuma_sched/journal.jsonl").exists()
    assert cli(root, "revert").exit_code == 0
    assert snapshot(root) == before and mine.stat().st_mode & 0o777 == 0o600


def test_persisted_files_outlive_a_reboot_and_are_restored(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    boot_id = root / "proc/sys/kernel/random/boot_id"
    boot_id.parent.mkdir(parents=True)
    boot_id.write_text("1111\n")
    mine = root / "etc/modprobe.d/vnuma_sched.conf"
    mine.parent.mkdir(parents=True)
    mine.write_text("options kvm_guest idle_halt_hint=off\n")
    before = snapshot(root)
    assert cli(root, "apply", "--persist", "vnuma-guest-dedicated").exit_code == 0
    boot_id.write_text("2222\n")                       # a reboot
    res = cli(root, "apply", "--persist", "vnuma-guest-dedicated")
    assert res.exit_code == 2 and "revert it first or use --replace" in res.output
    assert cli(root, "apply", "--replace", "--persist", "vnuma-guest-dedicated").exit_code == 0
    assert cli(root, "revert").exit_code == 0
    assert mine.read_text() == "options kvm_guest idle_halt_hint=off\n"
    boot_id.write_text("1111\n")
    assert snapshot(root) == before


def test_journal_of_an_earlier_boot(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    boot_id = root / "proc/sys/kernel/random/boot_id"
    boot_id.parent.mkdir(parents=True)
    boot_id.write_text("1111\n")
    assert cli(root, "apply", "--persist", "dedicated-plus",
               profiles=plus_dir(tmp_path)).exit_code == 0
    boot_id.write_text("2222\n")
    (root / "proc/sys/kernel/sched_schedstats").write_text("0\n")    # reset by the boot
    (root / "proc/sys/kernel/numa_balancing").write_text("1\n")
    res = cli(root, "revert")
    assert res.exit_code == 0 and "1 value(s) journaled in an earlier boot no longer hold " \
        "what apply wrote (the reboot reset them): not restored" in res.output
    assert (root / "sys/module/kvm_guest/parameters/idle_halt_hint").read_text() == "auto\n"
    assert not (root / "etc/sysctl.d/90-vnuma_sched.conf").exists()
    assert cli(root, "apply", "vnuma-guest-dedicated").exit_code == 0
    assert (root / "run/vnuma_sched/journal.jsonl").is_file()   # /run: ends with the boot
    boot_id.write_text("3333\n")                       # no files journaled: obsolete
    res = cli(root, "apply", "vnuma-guest-shared")
    assert res.exit_code == 0 and "dropping the journal" in res.output


def test_revert_leaves_a_file_changed_since_apply(tmp_path):
    root = tree(tmp_path, "6.12-patched")
    assert cli(root, "apply", "--persist", "dedicated-plus",
               profiles=plus_dir(tmp_path)).exit_code == 0
    conf = root / "etc/sysctl.d/90-vnuma_sched.conf"
    conf.write_text("# edited by the admin\n")
    res = cli(root, "revert")
    assert res.exit_code == 1 and "changed since apply: left as it is" in res.output
    assert f"{K.SYSCTL_D} (old content in the journal)" in res.output
    assert conf.read_text() == "# edited by the admin\n"
    res = cli(root, "revert", "--force")
    assert res.exit_code == 0 and "dropped from the journal" in res.output
    assert conf.read_text() == "# edited by the admin\n" and not (root / JPATH).exists()
