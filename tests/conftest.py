"""Test tiers (DESIGN.md): unit/cli/git/build always; kernel, root, bpf, vm when their
needs are met. With VNUMA_SCHED_REQUIRE_ALL=1 (CI) an unmet need or any skip is a
failure, and every tier must have run at least one passing test."""

import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import tunables_trees
from helpers import CACHE, DATA, REPO
from hypothesis import settings

from vnuma_sched.kernel import kbuild
from vnuma_sched.kernel import patches as P
from vnuma_sched.kernel.ktree import fetch_debian, source_tarball
from vnuma_sched.runner import Runner

# Started in the background by a shell without job control (nohup ... &), the test
# run inherits SIGINT ignored, and so would every command it starts: the tests that
# press Ctrl-C would see it ignored. Commands started from here get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# No timing in tests: hypothesis' per-example deadline fails on a loaded 2-core
# machine (a 2,000,000-CPU list took 268 ms once), not on a broken parser.
settings.register_profile("vnuma", deadline=None)
settings.load_profile("vnuma")

REQUIRE_ALL = os.environ.get("VNUMA_SCHED_REQUIRE_ALL") == "1"
TIERS = ("kernel", "root", "bpf", "vm")


def _is_root():
    return None if os.geteuid() == 0 else "not root"


def _bpf_unmet():
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401, PLC0415 - optional: the tier says why it cannot run
    except ImportError:
        return "bcc not importable (python3-bpfcc)"
    return None


def _kernel_unmet():
    for tool in ("make", "gcc", "flex", "bison", "git", "tar"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if not source_tarball("6.12").exists():
        return "linux-source-6.12 not installed"
    return None


def _vm_unmet():
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86 not installed"
    if not shutil.which("vng"):
        return "virtme-ng (vng) not on PATH"
    return _kernel_unmet()


UNMET = {"kernel": _kernel_unmet, "root": _is_root, "bpf": _bpf_unmet, "vm": _vm_unmet}


def tier_of(item):
    for tier in TIERS:
        if item.get_closest_marker(tier):
            return tier
    return "unit"


def pytest_runtest_setup(item):
    tier = tier_of(item)
    if tier == "unit":
        return
    why = UNMET[tier]()
    if why:
        if REQUIRE_ALL:
            pytest.fail(f"{tier} tier required (VNUMA_SCHED_REQUIRE_ALL=1) but {why}")
        pytest.skip(f"{tier} tier: {why}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_ALL and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under VNUMA_SCHED_REQUIRE_ALL=1: {rep.longrepr}"


_PASSED = Counter()


def pytest_runtest_logreport(report):
    if report.when == "call":
        tier = next((t for t in TIERS if t in report.keywords), "unit")
        if report.passed:
            _PASSED[tier] += 1


def pytest_terminal_summary(terminalreporter):
    line = ", ".join(f"{t} {_PASSED.get(t, 0)}" for t in ("unit", *TIERS))
    terminalreporter.write_sep("-", f"passed per tier: {line}")


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_ALL and session.testscollected and not session.config.option.collectonly:
        missing = [t for t in TIERS if _PASSED.get(t, 0) == 0]
        if missing and exitstatus == 0:
            session.exitstatus = 1
            print(f"\nVNUMA_SCHED_REQUIRE_ALL=1: no passing test in tier(s) {', '.join(missing)}")


@pytest.fixture(scope="session")
def fixture_root():
    return DATA / "sysfs"


@pytest.fixture(scope="session")
def tracefs():
    """tracefs and debugfs mounted (root tier mounts them when absent)."""
    for fstype, where in (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug")):
        if not os.path.ismount(where):
            subprocess.run(["mount", "-t", fstype, "nodev", where], check=True)
    return Path("/sys/kernel/tracing")


@pytest.fixture(scope="session")
def repo_fragment():
    return REPO / "kconfig" / "vnuma-guest.config"


def _fetch(series):
    return fetch_debian(series, CACHE / "trees", Runner(), print, os.geteuid())


@pytest.fixture(scope="session")
def tree_612():
    return _fetch("6.12")


@pytest.fixture(scope="session")
def tree_61():
    return _fetch("6.1")


@pytest.fixture(scope="session")
def guest_build(tree_612, repo_fragment):
    """The project's 6.12 guest kernel, built once (incremental after the first run)."""

    out = CACHE / "builds" / "test-linux-6.12"
    req = kbuild.BuildRequest(tree_612, out, [repo_fragment], jobs=os.cpu_count() or 2)
    kbuild.build(req, Runner(), print)
    return out


def _patched(tree, series_version, debug=True):
    """A worktree of the fetched tree with the series applied (reused between runs), on
    a branch of its own so that 'vnuma-sched pipeline' (make demo) never finds its
    branch held by this worktree. With ``debug`` (the trees built with
    series-test.config) the debug series goes on top, in a worktree and on a branch
    of their own ("-debug")."""

    series = P.load_series(series_version, debug=debug)
    work = CACHE / "series-test" / series.name / "linux"
    return P.series_worktree(tree, series, work, Runner(), print,
                             branch=f"vnuma-series-test-{series.name}"), series


@pytest.fixture(scope="session")
def patched_612(tree_612):
    return _patched(tree_612, "6.12")


@pytest.fixture(scope="session")
def patched_61(tree_61):
    return _patched(tree_61, "6.1")


@pytest.fixture(scope="session")
def patched_main_612(tree_612):
    """The 6.12 series alone (what 'patches apply' and bisect's --carry-patches apply)."""
    return _patched(tree_612, "6.12", debug=False)


@pytest.fixture(scope="session")
def patched_build_612(patched_612, repo_fragment):
    """The patched 6.12 guest with the debug series' emulation test aid, lockdep and BTF."""

    tree, series = patched_612
    frags = [repo_fragment, repo_fragment.parent / "series-test.config",
             repo_fragment.parent / "debug.config", repo_fragment.parent / "btf.config"]
    out = CACHE / "builds" / f"series-test-{series.name}"
    kbuild.build(kbuild.BuildRequest(tree, out, frags, jobs=os.cpu_count() or 2), Runner(),
                 print)
    return out


@pytest.fixture
def kernel_features(monkeypatch):
    """Writes to a fixture tree's sched features file act as the kernel's (one feature
    each, the others kept)."""
    tunables_trees.emulate_features(monkeypatch.setattr)
