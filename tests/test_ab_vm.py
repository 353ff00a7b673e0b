"""vm tier: a short A/B experiment in the patched 2-node guest."""

import json
import subprocess

import pytest
from helpers import VNUMA

pytestmark = pytest.mark.vm


def test_short_ab_writes_documented_files(patched_build_612, tmp_path):
    out = tmp_path / "ab"
    res = subprocess.run([VNUMA, "ab", "--kernel", str(patched_build_612), "--runs", "2",
                          "--iterations", "300", "--threads", "6", "--out", str(out),
                          "--append", "vnuma_debug.emulate_halt_preempted=1",
                          "--a", "kernel.sched_numa_idle_damp=0 kvm_guest.idle_halt_hint=off",
                          "--b", "kernel.sched_numa_idle_damp=3 kvm_guest.idle_halt_hint=on",
                          "--timeout", "400"], capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in runs if r["type"] == "run"] == ["a", "b", "a", "b"]
    doc = json.loads((out / "results.json").read_text())
    assert set(doc) >= {"arms", "metrics", "kernel", "topology", "workload"}
    for name in ("workload_score", "cross_node_migrations", "idle_rejected_preempted"):
        m = doc["metrics"][name]
        assert set(m["b"]) >= {"median", "ratio", "ci95", "p", "n", "within_boot_iqr"}
        assert m["a"]["n"] == m["b"]["n"] == 2
    # the emulated old host rejects idle CPUs only while the hint is off
    assert doc["metrics"]["idle_rejected_preempted"]["a"]["median"] > 0
    assert doc["metrics"]["idle_rejected_preempted"]["b"]["median"] == 0
    png = out / "compare.png"
    cmp = subprocess.run([VNUMA, "compare", str(out), "--plot", str(png)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0 and png.stat().st_size > 10_000
