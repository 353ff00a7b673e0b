"""bpf tier: the probes loaded by bcc on the live machine (a KVM guest)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import VNUMA

pytestmark = pytest.mark.bpf

WORKLOAD = [sys.executable, str(Path(__file__).parent / "workloads" / "sleepwake.py")]


# The functions that implement vcpu_is_preempted() in a guest the preempt probe can
# hook: the debug series' emulation and KVM's steal-time one.
PREEMPTED_FNS = ("__vnuma_emul_vcpu_is_preempted", "__raw_callee_save___kvm_vcpu_is_preempted",
                 "__kvm_vcpu_is_preempted")


def kernel_symbols():
    return {line.split()[2] for line in Path("/proc/kallsyms").read_text().splitlines()}


def test_probes_report_availability_consistently(tracefs):
    res = subprocess.run([VNUMA, "probes", "--json"], capture_output=True, text=True)
    rows = {r["probe"]: r for r in json.loads(res.stdout)["probes"]}
    assert rows["ipi"]["available"] and rows["migrate"]["available"]
    # what the preempt probe needs, read here from tracefs and kallsyms, decides the one
    # outcome (and reason) to expect
    preempt, symbols = rows["preempt"], kernel_symbols()
    if not (tracefs / "kprobe_events").exists():
        expected = "no kprobes"
    elif "available_idle_cpu" not in symbols:
        expected = "no kernel symbol available_idle_cpu"
    elif not symbols.intersection(PREEMPTED_FNS):
        expected = "no vcpu_is_preempted implementation"
    else:
        expected = None
    if expected is None:
        assert preempt["available"], preempt
    else:
        assert not preempt["available"] and expected in preempt["reason"], preempt


def test_top_json_counts_wake_ipis_and_migrations(tracefs):
    load = subprocess.Popen(WORKLOAD + ["2", "4000"])
    try:
        res = subprocess.run([VNUMA, "top", "--json", "ipi", "migrate", "halt", "0.5", "3"],
                             capture_output=True, text=True, timeout=120)
    finally:
        load.wait(timeout=120)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 3 and all(r["type"] == "interval" and r["dt"] > 0 for r in recs)
    wake_ipis = sum(c[0] + c[1] for r in recs for c in r["probes"]["ipi"]["per_cpu"])
    migrations = sum(v for r in recs for cause in r["probes"]["migrate"]["matrix"].values()
                     for k in ("busy", "idle") for row in cause[k] for v in row)
    idle = sum(map(sum, (c for r in recs for c in r["probes"]["halt"]["count"])))
    assert wake_ipis > 0 and migrations > 0 and idle > 0


def test_record_keeps_exit_code_and_writes_documented_jsonl(tracefs, tmp_path):
    out = tmp_path / "rec.jsonl"
    res = subprocess.run([VNUMA, "record", "-o", str(out), "--interval", "0.5", "--events",
                          "--", *WORKLOAD, "2", "1500", "7"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 7, res.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "meta" and lines[-1]["type"] == "end"
    assert lines[-1]["exit_code"] == 7 and "lost" in lines[-1]
    meta = lines[0]
    assert {"kernel", "topology", "cmdline", "gates", "probes"} <= set(meta)
    assert meta["probes"]["migrate"]["available"]
    assert any(rec["type"] == "event" for rec in lines)
    rep = subprocess.run([VNUMA, "report", "--json", str(out)], capture_output=True,
                         text=True)
    doc = json.loads(rep.stdout)
    assert doc["complete"] and doc["metrics"]["wake_ipis"]["total"] > 0


def test_every_available_probe_loads(tracefs):
    """All probes this kernel supports compile, attach and report their documented keys."""
    avail = json.loads(subprocess.run([VNUMA, "probes", "--json"], capture_output=True,
                                      text=True).stdout)["probes"]
    names = [p["probe"] for p in avail if p["available"]]
    res = subprocess.run([VNUMA, "top", "--json", *names, "0.3", "1"], capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    probes = json.loads(res.stdout)["probes"]
    keys = {"ipi": {"per_cpu"}, "halt": {"count", "ns", "hist", "pvspin"},
            "hltexit": {"hlt", "wakeups", "kicks"}, "migrate": {"matrix"},
            "preempt": {"checked", "rejected"}, "steal": {"ms"}}
    for name in names:
        assert keys[name] <= set(probes[name]), name
