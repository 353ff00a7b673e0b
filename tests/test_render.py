"""Tables: identifiers never split, prose wraps to the width, piped output never wraps."""

import io
from types import SimpleNamespace

from vnuma_sched import render
from vnuma_sched.errors import DataError
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.tunables import knobs

KNOB = "haltpoll.guest_halt_poll_allow_shrink"   # a long knob name
PATH = "/sys/kernel/debug/sched/migration_cost_ns"
REASON = ("debugfs is not mounted: mount -t debugfs nodev /sys/kernel/debug, "
          "then plan again to see the current value")


def plan_rows():
    row = SimpleNamespace(knob=KNOB, paths=[PATH], current="500000", target="1000000",
                          action="set", reason=REASON)
    return [row]


def test_plan_keeps_knob_and_path_whole_at_80_columns(monkeypatch):
    monkeypatch.setattr(render, "terminal_width", lambda stream=None: 80)
    text = render.plan_text(plan_rows())
    lines = text.splitlines()
    assert any(KNOB in ln and PATH in ln for ln in lines), text
    assert "".join(text.split()).count("mount-tdebugfs") == 1  # the prose is all there
    prose_lines = [ln for ln in lines if "debugfs" in ln or "then plan" in ln]
    assert len(prose_lines) >= 2, "the prose column wraps to fit"


def test_prose_columns_fit_the_width_when_they_can():
    rows = [["short", "word " * 40]]
    text = render.table(rows, ["name", "prose"], prose=[1], width=60)
    assert max(len(ln) for ln in text.splitlines()) <= 60


def test_wide_identifiers_win_over_the_width():
    ident = "x" * 70
    text = render.table([[ident, "a b c d e f g h"]], ["id", "prose"], prose=[1], width=40)
    assert ident in text  # never split, even when it alone is wider than the terminal


def test_piped_output_is_not_wrapped(monkeypatch):
    monkeypatch.setattr(render.sys, "stdout", io.StringIO())
    assert render.terminal_width() is None
    text = render.plan_text(plan_rows())
    assert any(REASON in ln for ln in text.splitlines())


def test_debugfs_reasons_name_the_fix(tmp_path):
    (tmp_path / "sys/kernel/debug").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mounts").write_text("proc /proc proc rw 0 0\n")
    root = SysRoot(tmp_path)
    assert "mount -t debugfs nodev /sys/kernel/debug" in knobs.debugfs_problem(root)
    (tmp_path / "proc/mounts").write_text("debugfs /sys/kernel/debug debugfs rw 0 0\n")
    assert knobs.debugfs_problem(root) == ""
    err = DataError("/sys/kernel/debug/sched/migration_cost_ns", "Operation not permitted", 1)
    assert "locked down" in knobs.debugfs_read_problem(root, err)


def test_ab_markdown_has_only_the_asked_metrics_each_arm_against_the_reference():
    m = {"median": 10, "n": 3}
    cmp = {"median": 5, "n": 3, "ratio": 0.5, "ci95": [0.4, 0.6], "p": 0.01,
           "inconclusive": False}
    doc = {"arms": {"ref": {"spec": "x=0"}, "on": {"spec": "x=1"}}, "reference": "ref",
           "runs": 6, "mode": "one boot", "kernel": "6.12",
           "metrics": {"cross_node_migrations": {"ref": m, "on": cmp},
                       "halts": {"ref": m, "on": cmp}}}
    text = render.ab_markdown(doc, ("cross_node_migrations",), "exp")
    lines = text.splitlines()
    assert lines[0].startswith("**exp** (6 runs, one boot, kernel 6.12; reference ref)")
    assert "halts" not in text
    rows = [ln for ln in lines if ln.startswith("|")]
    assert rows[2].split("|")[1:4] == [" `cross_node_migrations` ", " ref   ", " 10       "]
    assert [c.strip() for c in rows[3].split("|")[2:7]] == ["on", "5", "0.5", "0.40..0.60",
                                                           "0.01"]


def test_ab_markdown_gives_the_spread_between_and_within_boots_with_several_boots():
    spread = {"between_boots_iqr": 40.0, "within_boot_iqr": 2.5, "boots_dominate": True}
    m = {"median": 10, "n": 6, **spread}
    cmp = {"median": 5, "n": 6, "ratio": 0.5, "ci95": [0.4, 0.6], "p": 0.01,
           "inconclusive": False, "between_boots_iqr": 1.0, "within_boot_iqr": 3.0,
           "boots_dominate": False}
    doc = {"arms": {"ref": {"spec": "x=0"}, "on": {"spec": "x=1"}}, "reference": "ref",
           "runs": 6, "mode": "3 boots", "boots": 3, "kernel": "6.12",
           "metrics": {"cross_node_migrations": {"ref": m, "on": cmp}}}
    rows = [ln for ln in render.ab_markdown(doc, ("cross_node_migrations",), "exp")
            .splitlines() if ln.startswith("|")]
    assert [c.strip() for c in rows[0].split("|")[7:9]] == ["IQR between boots",
                                                           "IQR within a boot"]
    assert [c.strip() for c in rows[2].split("|")[7:9]] == ["40", "2.5"]
    assert [c.strip() for c in rows[3].split("|")[7:9]] == ["1", "3"]
    one_boot = render.ab_markdown({**doc, "boots": 1}, ("cross_node_migrations",), "exp")
    assert "IQR between boots" not in one_boot
