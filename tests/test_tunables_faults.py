"""Tunables under faults: signals at points of an apply (SIGKILL, SIGTERM, SIGINT,
SIGHUP, in a subprocess), failing writes, a failing journal, two commands at
once, vanished paths, and hypothesis-made profiles and journals. Each ends the
same way: every byte restored (or the leftover named, kept for 'tune revert'),
one-line errors with their exit code, and nothing outside the root touched."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tunables_trees import build, snapshot

from vnuma_sched.cli.main import main
from vnuma_sched.errors import DataError
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import engine, journal, lock
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import profile as P

# the fixture trees' sched features file takes writes as the kernel's does
pytestmark = pytest.mark.usefixtures("kernel_features")
TESTS = Path(__file__).parent

JPATH = "var/lib/vnuma_sched/journal.jsonl"      # after apply --persist...
RJPATH = "run/vnuma_sched/journal.jsonl"         # after an apply of run-time values only
LOCKPATH = "run/vnuma_sched/lock"
# The dedicated profile and a sysctl: three run-time writes (a sched feature, a module
# parameter, a sysctl) and three persisted files.
PLUS = "[main]\ninclude = vnuma-guest-dedicated\n\n[sysctl]\nkernel.sched_schedstats = 1\n"
DEDICATED = ("--persist", "--persist-boot", "dedicated-plus")
BIG = """[domains]
MC.imbalance_pct = 111
MC.cache_nice_tries = 2
NUMA.imbalance_pct = 130
NUMA.cache_nice_tries = 2
"""


def cli(root, *args, profiles=None):
    profiles = profiles or plus_dir(root)
    argv = ["--root", str(root), "tune", "--profiles", str(profiles)]
    return CliRunner().invoke(main, argv + list(args))


def plus_dir(root):
    """The folder of the dedicated-plus profile, beside the root."""
    pdir = Path(root).parent / "plus"
    pdir.mkdir(exist_ok=True)
    (pdir / "dedicated-plus.ini").write_text(PLUS)
    return pdir


def state(root):
    """The files of a root without the toolkit's own (empty) state directories."""
    return {k: v for k, v in snapshot(root).items()
            if not k.startswith(("var/lib/vnuma_sched/", "run/vnuma_sched/"))}


def journaled(root):
    return (root / JPATH).exists() or (root / RJPATH).exists()


def patched(tmp_path):
    return build(tmp_path / "root", "6.12-patched")


# --- signals at points of an apply, through the command line in a subprocess -------------

INJECT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import tunables_trees
from vnuma_sched.cli.main import main
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import journal, persist
tunables_trees.emulate_features()
target = {{"write": (SysRoot, "write"), "file": (persist, "_write_bytes"),
          "journal": (journal.Writer, "add_file")}}[{where!r}]
real = getattr(*target)
calls = [0]
def hooked(*args, **kw):
    out = real(*args, **kw)
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.{sig})
    return out
setattr(*target, hooked)
main({argv!r})
"""


# 'python -m vnuma_sched' with the fixture tree's features file acting as the kernel's
EMULATED_MAIN = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tunables_trees; "
                 "tunables_trees.emulate_features(); from vnuma_sched.cli.main import main; "
                 "main(sys.argv[1:])")


def run_injected(root, where, at, sig, *args):
    code = INJECT.format(where=where, at=at, sig=sig, tests=str(TESTS),
                         argv=["--root", str(root), "tune", "--profiles",
                               str(plus_dir(root)), "apply", *args])
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


POINTS = [("write", 1), ("write", 2), ("write", 3), ("journal", 1), ("file", 1), ("file", 2)]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.parametrize("where,at", POINTS)
def test_signal_during_apply_restores_everything(tmp_path, sig, where, at):
    root = patched(tmp_path)
    before = state(root)
    res = run_injected(root, where, at, sig, *DEDICATED)
    assert res.returncode == 130, res.stderr
    assert res.stderr == ("vnuma-sched: error: interrupted; every earlier write was "
                          "restored\n")
    assert state(root) == before and not (root / JPATH).exists()


@pytest.mark.parametrize("where,at", POINTS)
def test_sigkill_during_apply_then_revert_restores_every_byte(tmp_path, where, at):
    root = patched(tmp_path)
    before = state(root)
    res = run_injected(root, where, at, "SIGKILL", *DEDICATED)
    assert res.returncode == -signal.SIGKILL and (root / JPATH).exists()
    res = cli(root, "revert")
    assert res.exit_code == 0, res.output
    assert state(root) == before


def test_signal_at_random_points_of_a_large_apply(tmp_path):
    root = build(tmp_path / "root", "6.12", cpus=200)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "big.ini").write_text(BIG)
    before = state(root)
    argv = [sys.executable, "-m", "vnuma_sched", "--root", str(root), "tune", "--profiles",
            str(tmp_path / "p"), "apply", "big"]
    t0 = time.monotonic()
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
    whole = time.monotonic() - t0              # start-up and 800 writes
    assert cli(root, "revert").exit_code == 0
    rng = random.Random(13)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.0) * whole)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 130, -sig), err
        assert "internal error" not in err
        if proc.returncode == 130 and journaled(root):
            pytest.fail(f"interrupted apply left its journal: {err}")
        if journaled(root):                    # finished, or killed before the handler
            assert cli(root, "revert").exit_code == 0
        assert state(root) == before


# --- failing writes, failing restores, a failing journal ----------------------------------

class FaultyRoot(SysRoot):
    """Writes to paths containing ``bad`` fail with ``err`` from the ``after``-th on,
    leaving the file as it was."""

    def __init__(self, root, bad, err=errno.EPERM, after=1):
        super().__init__(root)
        self.bad, self.err, self.after, self.seen = bad, err, after, 0

    def write(self, path, value):
        if self.bad in path:
            self.seen += 1
            if self.seen >= self.after:
                raise DataError(path, f"write failed: {os.strerror(self.err)}", self.err)
        super().write(path, value)


def dedicated(root):
    return P.load("dedicated-plus", [plus_dir(root), *P.search_path()])


def test_immutable_target_restores_and_says_nothing_was_lost(tmp_path):
    root = patched(tmp_path)
    before = state(root)
    sr = FaultyRoot(root, "idle_halt_hint")
    with pytest.raises(engine.ApplyError) as err:
        engine.apply(engine.plan(dedicated(root), sr), sr, dedicated(root))
    msg = str(err.value)
    assert msg == ("apply failed (/sys/module/kvm_guest/parameters/idle_halt_hint: write "
                   "failed: Operation not permitted); every earlier write was restored")
    assert state(root) == before and journal.load(SysRoot(root)) is None


class TwoFaults(FaultyRoot):
    """Every write of idle_halt_hint fails (apply rolls back), and so does every write
    of the sched features after the first (its restore fails)."""

    def write(self, path, value):
        if "idle_halt_hint" in path:
            raise DataError(path, "write failed: Invalid argument", errno.EINVAL)
        super().write(path, value)


def test_failed_restore_keeps_the_entry_and_names_path_and_old_value(tmp_path):
    root = patched(tmp_path)
    before = state(root)
    sr = TwoFaults(root, "sched/features", errno.EBUSY, after=2)
    with pytest.raises(engine.ApplyError) as err:
        engine.apply(engine.plan(dedicated(root), sr), sr, dedicated(root))
    msg = str(err.value)
    assert ("not restored: /sys/kernel/debug/sched/features (old value 0): write "
            "failed: Device or resource busy") in msg
    assert "run 'vnuma-sched tune revert'" in msg and msg.count("\n") == 0
    doc = journal.load(SysRoot(root))
    assert [e["path"] for e in doc.entries] == ["/sys/kernel/debug/sched/features"]
    res = cli(root, "status")
    assert "feature.NUMA_WAKE_PREV" in res.output
    assert cli(root, "revert").exit_code == 0 and state(root) == before


@pytest.mark.parametrize("fail_at", [2, 3, 5])
def test_journal_io_error_mid_apply_rolls_back(tmp_path, monkeypatch, fail_at):
    root = patched(tmp_path)
    before = state(root)
    real, calls = journal.Writer._append, [0]

    def append(self, records, sync):
        calls[0] += 1
        if calls[0] == fail_at:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(self, records, sync)

    monkeypatch.setattr(journal.Writer, "_append", append)
    res = cli(root, "apply", *DEDICATED)
    assert res.exit_code == 1 and "internal error" not in res.output, res.output
    assert res.output == (f"vnuma-sched: error: apply failed ({root}/{JPATH}: Operation not "
                          "permitted); every earlier write was restored\n")
    assert state(root) == before and not (root / JPATH).exists()


def test_journal_that_cannot_be_removed_after_rollback_is_reported(tmp_path, monkeypatch):
    root = patched(tmp_path)
    before = state(root)
    monkeypatch.setattr(SysRoot, "write", TwoFaults.write)
    monkeypatch.setattr(SysRoot, "bad", "nothing", raising=False)
    monkeypatch.setattr(journal, "remove", lambda store: (_ for _ in ()).throw(
        DataError(store.shown(journal.PERSISTENT), "cannot remove: Read-only file system")))
    res = cli(root, "apply", *DEDICATED)
    assert res.exit_code == 1
    assert "every earlier write was restored; the journal could not be updated" in res.output
    assert state(root) == before


def test_unexpected_exception_rolls_back(tmp_path, monkeypatch):
    root = patched(tmp_path)
    before = state(root)
    real = SysRoot.write

    def write(self, path, value):
        if "idle_halt_hint" in path:
            raise RuntimeError("boom")
        real(self, path, value)

    monkeypatch.setattr(SysRoot, "write", write)
    res = cli(root, "apply", "dedicated-plus")
    assert res.exit_code == 1 and "apply failed (RuntimeError: boom); every earlier " \
        "write was restored" in res.output
    assert state(root) == before


# --- one writer at a time ------------------------------------------------------------------

def test_lock_names_its_holder(tmp_path):
    root = patched(tmp_path)
    before = state(root)
    store = journal.Store(SysRoot(root), str(root))
    with lock.held(store, "vnuma-sched tune apply other"):
        for args in (("apply", "vnuma-guest-dedicated"), ("revert",),
                     ("hold", "vnuma-guest-dedicated", "--count", "1")):
            res = cli(root, *args)
            assert res.exit_code == 1 and res.output == (
                f"vnuma-sched: error: another command that writes is running: pid {os.getpid()} "
                f"(vnuma-sched tune apply other) holds {root}/{LOCKPATH}\n")
    assert state(root) == before and not (root / LOCKPATH).exists()
    assert cli(root, "apply", "vnuma-guest-dedicated").exit_code == 0


def test_concurrent_applies_on_one_root(tmp_path):
    root = build(tmp_path / "root", "6.12-patched", cpus=32)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "big.ini").write_text(BIG)
    before = state(root)
    argv = [sys.executable, "-c", EMULATED_MAIN, "--root", str(root), "tune", "--profiles",
            str(tmp_path / "p"), "apply"]
    for _ in range(5):
        procs = [subprocess.Popen(argv + [name], cwd=REPO, stderr=subprocess.PIPE, text=True)
                 for name in ("big", "vnuma-guest-dedicated")]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert sum(code == 0 for code, _ in results) >= 1, results
        for code, err in results:
            assert code == 0 or "another command that writes is running: pid " in err \
                or "revert it first or use --replace" in err, err
            assert "internal error" not in err
        assert cli(root, "revert").exit_code == 0
        assert state(root) == before


# --- vanished paths, entries that cannot be restored ---------------------------------------

def vanish_cpu(root, cpu):
    domains = root / f"sys/kernel/debug/sched/domains/cpu{cpu}"
    for p in sorted(domains.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    domains.rmdir()


@pytest.mark.parametrize("command", [("revert",), ("apply", "--replace", "upstream-defaults")])
def test_vanished_paths_are_skipped_with_a_warning(tmp_path, command):
    root = build(tmp_path / "root", "6.12")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "big.ini").write_text(BIG)
    before = state(root)
    assert cli(root, "apply", "big", profiles=tmp_path / "p").exit_code == 0
    vanish_cpu(root, 3)
    res = cli(root, *command, profiles=tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert ("warning: /sys/kernel/debug/sched/domains/cpu3/domain1/imbalance_pct (old value "
            "125): no longer exists (CPU offline?): skipped") in res.output
    if journaled(root):                        # apply --replace wrote something
        assert cli(root, "revert").exit_code == 0
    assert state(root) == {k: v for k, v in before.items() if "domains/cpu3/" not in k}


def test_revert_force_drops_what_cannot_be_restored(tmp_path):
    root = patched(tmp_path)
    before = state(root)
    assert cli(root, "apply", "dedicated-plus").exit_code == 0
    knob = root / "proc/sys/kernel/sched_schedstats"
    knob.unlink()
    knob.mkdir()                               # a write there now fails
    res = cli(root, "revert")
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert ("revert incomplete: /proc/sys/kernel/sched_schedstats (old value 0): "
            "write failed: Is a directory; kept in ") in res.output
    assert "'tune revert --force'" in res.output
    assert res.output.count("/proc/sys/kernel/sched_schedstats") == 1   # named once
    doc = journal.load(SysRoot(root))
    assert [e["knob"] for e in doc.entries] == ["kernel.sched_schedstats"]
    res = cli(root, "revert", "--force")
    assert res.exit_code == 0
    assert ("dropped from the journal, not restored: /proc/sys/kernel/sched_schedstats "
            "(old value 0)") in res.output
    knob.rmdir()
    knob.write_text("0\n")
    assert state(root) == before and not journaled(root)


# --- hypothesis: profiles and journals from anywhere ---------------------------------------

def sandbox(factory):
    """A root inside a folder with a sentinel file beside it, and files inside the root
    that no knob names (etc/passwd, etc/hostname) plus a symlinked knob leading out."""
    top = factory.mktemp("sandbox")
    root = build(top / "root", "6.12-patched")
    (top / "outside").write_text("outside\n")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0\n")
    (root / "etc/hostname").write_text("guest\n")
    link = root / "proc/sys/kernel/sched_schedstats"
    link.unlink()
    link.symlink_to(top / "outside")
    return top, root


ALLOWED = {p.lstrip("/") for k in K.REGISTRY.values() for _lo, _hi, p in k.paths} | \
    {p.lstrip("/") for p in K.PERSIST_FILES} | {JPATH, RJPATH}


def allowed(rel):
    """May a tune command change this file (relative to the root)?"""
    return rel in ALLOWED or bool(K.DOMAIN_PATH.fullmatch("/" + rel))


def changed_files(before, after):
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def check_outcome(res, root):
    assert "internal error" not in res.output and "Traceback" not in res.output
    if res.exit_code in (2, 3):
        assert res.output.startswith("vnuma-sched: error: ")
        assert res.output.count("\n") == 1, res.output


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="[]=\n .#abcdeklmnrstuyNUMAC_0123456789/٣-", max_size=160))
def test_any_profile_gives_a_result_or_a_one_line_error(tmp_path_factory, text):
    top, root = sandbox(tmp_path_factory)
    pdir = top / "p"
    pdir.mkdir()
    (pdir / "fuzz.ini").write_text(text)
    before, outside = snapshot(root), (top / "outside").read_bytes()
    res = cli(root, "apply", "fuzz", profiles=pdir)
    check_outcome(res, root)
    assert res.exit_code in (0, 1, 2, 3), res.output
    if res.exit_code != 0:
        assert snapshot(root) == before
    assert all(allowed(p) for p in changed_files(before, snapshot(root)))
    assert (top / "outside").read_bytes() == outside


SECTION_KEYS = [("sysctl", "kernel.numa_balancing"), ("sysctl", "kernel.sched_schedstats"),
                ("domains", "NUMA.imbalance_pct"), ("domains", "NUMA.newidle_balance"),
                ("features", "WA_IDLE"), ("modules", "kvm_guest.idle_halt_hint"),
                ("boot", "relax_domain_level"), ("sched", "migration_cost_ns"),
                ("main", "include"), ("main", "summary"), ("sysctl", "../etc/passwd")]
NUMBERS = st.one_of(st.integers(-5, 10**6).map(str), st.integers(10**19, 10**25).map(str),
                    st.just("9" * 5000), st.text("0123456789٣１²-", min_size=1, max_size=6),
                    st.sampled_from(["on", "auto", "yes", "x", "", " 1 ", "upstream-defaults"]))
LINE = st.tuples(st.sampled_from(SECTION_KEYS), NUMBERS).map(
    lambda t: f"[{t[0][0]}]\n{t[0][1]} = {t[1]}\n")


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, min_size=1, max_size=4))
def test_any_knob_value_gives_a_result_or_a_one_line_error(tmp_path_factory, lines):
    top, root = sandbox(tmp_path_factory)
    (top / "p").mkdir()
    (top / "p" / "v.ini").write_text("".join(lines))
    before, outside = snapshot(root), (top / "outside").read_bytes()
    res = cli(root, "apply", "v", profiles=top / "p")
    check_outcome(res, root)
    assert res.exit_code in (0, 1, 2, 3), res.output
    if res.exit_code == 2:
        assert "v.ini:" in res.output or "outside the root" in res.output, res.output
    if res.exit_code != 0:
        assert snapshot(root) == before
    assert all(allowed(p) for p in changed_files(before, snapshot(root)))
    assert (top / "outside").read_bytes() == outside


KNOB_NAMES = ["kernel.numa_balancing", "kernel.sched_schedstats", "feature.WA_IDLE",
              "domain.NUMA.imbalance_pct", "kvm_guest.idle_halt_hint", "boot.nopvspin",
              "domain.NUMA.newidle_balance", "nope"]
PATHS = ["/proc/sys/kernel/numa_balancing", "/proc/sys/kernel/sched_schedstats",
         "/sys/kernel/debug/sched/features",
         "/sys/kernel/debug/sched/domains/cpu1/domain1/imbalance_pct",
         "/sys/kernel/debug/sched/domains/cpu9/domain1/imbalance_pct",
         "/sys/module/kvm_guest/parameters/idle_halt_hint", "/etc/passwd", "/etc/hostname",
         "/proc/sys/kernel/../../../etc/passwd", "proc/sys/kernel/numa_balancing", "",
         *K.PERSIST_FILES]
ANY = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**30), st.text(max_size=12),
                st.lists(st.integers(), max_size=2))
VALUES = st.one_of(st.sampled_from(["0", "1", "125", "auto", "on", "9" * 30, "1\nx"]), ANY)
WRITE = st.fixed_dictionaries({
    "t": st.just("write"), "seq": st.one_of(st.integers(0, 3), ANY),
    "knob": st.one_of(st.sampled_from(KNOB_NAMES), ANY),
    "kind": st.one_of(st.sampled_from(["sysctl", "feature", "domain", "module", "boot"]), ANY),
    "path": st.one_of(st.sampled_from(PATHS), ANY), "old": VALUES, "new": VALUES})
FILE = st.fixed_dictionaries({
    "t": st.just("file"), "path": st.one_of(st.sampled_from(PATHS), ANY),
    "old": st.one_of(st.none(), st.text(max_size=20)), "mode": st.one_of(st.none(), ANY),
    "sha256": st.one_of(st.none(), st.sampled_from(["0" * 64]), ANY)})
RECORD = st.one_of(WRITE, FILE, st.fixed_dictionaries({"t": st.just("done"), "seq": ANY}),
                   st.dictionaries(st.text(max_size=4), ANY, max_size=3))
HEADER = {"t": "header", "version": 2, "profile": "x", "kernel": "6.12.117",
          "created": "2025-01-01T00:00:00Z", "boot_id": None}


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=5), st.booleans(), st.sampled_from(["", "\n", "{\"t\""]))
def test_any_journal_gives_a_result_or_a_one_line_error(tmp_path_factory, records, seqfix,
                                                        tail):
    top, root = sandbox(tmp_path_factory)
    if seqfix:
        writes = [r for r in records if r.get("t") == "write"]
        for i, rec in enumerate(writes):
            rec["seq"] = i
    path = root / JPATH
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [HEADER, *records]) + tail.strip())
    before, outside = snapshot(root), (top / "outside").read_bytes()
    res = cli(root, "revert")
    check_outcome(res, root)
    assert res.exit_code in (0, 1, 3), res.output
    if res.exit_code == 3:
        assert f"{root}/{JPATH}: corrupt journal, line " in res.output
        assert snapshot(root) == before
    assert all(allowed(p) for p in changed_files(before, snapshot(root)))
    assert (root / "etc/passwd").read_text() == "root:x:0:0\n"
    assert (root / "etc/hostname").read_text() == "guest\n"
    assert (top / "outside").read_bytes() == outside
