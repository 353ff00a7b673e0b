"""A/B experiments: boot the guest, run arms A and B interleaved, record the
probes around every workload run, and summarise with statistics."""

import json
import shutil
import sys
import time
from pathlib import Path

from vnuma_sched.errors import BadInput, DataError, VnumaError
from vnuma_sched.experiments import arms as A
from vnuma_sched.experiments import compare
from vnuma_sched.experiments.workloads import build
from vnuma_sched.kernel import vm

PROBES = ["migrate", "ipi", "halt", "preempt"]


class GuestFailed(VnumaError):
    pass


WORKLOADS = ("omp-barrier", "perf-pipe", "perf-messaging")


def check_workload(kind):
    """BadInput unless ``kind`` is a known workload or cmd:COMMAND."""
    if kind in WORKLOADS or (kind.startswith("cmd:") and kind[4:].strip()):
        return kind
    raise BadInput(f"--workload {kind[:60]!r}: {', '.join(WORKLOADS)} or cmd:COMMAND")


def workload(kind, cache, runner, threads, spincount, iterations, kib):
    """The plan's workload entry for a kind (omp-barrier, perf-pipe, perf-messaging, cmd:...)."""
    check_workload(kind)
    env = {"OMP_NUM_THREADS": str(threads), "GOMP_SPINCOUNT": str(spincount)}
    if kind == "omp-barrier":
        argv = [str(build.omp_barrier(cache, runner)), str(iterations), str(kib)]
    elif kind == "perf-pipe":
        argv = ["perf", "bench", "sched", "pipe", "-l", str(iterations)]
    elif kind == "perf-messaging":
        argv = ["perf", "bench", "sched", "messaging", "-g", str(threads), "-l",
                str(iterations)]
    else:
        argv = kind[4:].split()
    return {"kind": kind, "argv": argv, "env": env}


def stage(wl, out):
    """Copy a built workload next to the plan: the guest sees the output directory
    (shared with the host) but not every host path, e.g. not /var/cache."""
    exe = Path(wl["argv"][0])
    if not exe.is_absolute() or not exe.exists():
        return wl
    (out / "bin").mkdir(exist_ok=True)
    staged = out / "bin" / exe.name
    shutil.copy2(exe, staged)
    return {**wl, "argv": [str(staged), *wl["argv"][1:]]}


def order(runs):
    return [arm for _ in range(runs) for arm in ("a", "b")]


def guest_runs(image, topo, plan, plan_path, runner, accel, timeout, append):
    plan_path.write_text(json.dumps(plan))
    cmd = [sys.executable, "-c", "import sys; from vnuma_sched.experiments.guest_agent import main; "
           "main(sys.argv[1])", str(plan_path)]
    res = vm.run(image, topo, cmd, runner, accel, timeout, append)
    if res.status != "exited" or res.exit_code != 0:
        tail = res.stderr.strip().splitlines()[-3:] or res.console_tail[-5:]
        raise GuestFailed(f"guest {res.status} (exit {res.exit_code}): " + " | ".join(tail))
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def run(image, topo, wl, arm_a, arm_b, runs, out, runner, progress, accel, timeout,
        append=()):
    """Writes out/runs.jsonl and out/results.json; returns the results document."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wl = stage(wl, out)
    per_run = A.needs_boot_per_run(arm_a, arm_b)
    arms = {"a": arm_a.to_dict(), "b": arm_b.to_dict()}
    records, t0 = [], time.monotonic()
    if not per_run:
        progress(f"one boot, {2 * runs} runs switching run-time gates (A B A B ...)")
        plan = {"arms": arms, "order": order(runs), "workload": wl, "probes": PROBES,
                "mode": "one boot"}
        records = guest_runs(image, topo, plan, out / "plan.json", runner, accel,
                         timeout * 2 * runs, [*append, *arm_a.boot])
    else:
        progress(f"arms differ in boot parameters: one boot per run ({2 * runs} boots)")
        for i, arm in enumerate(order(runs)):
            plan = {"arms": arms, "order": [arm], "workload": wl, "probes": PROBES,
                    "mode": "boot per run"}
            boot = arm_a.boot if arm == "a" else arm_b.boot
            recs = guest_runs(image, topo, plan, out / "plan.json", runner, accel, timeout,
                          [*append, *boot])
            for r in recs:
                if r["type"] == "run":
                    r["index"] = i
            records += recs if i == 0 else [r for r in recs if r["type"] == "run"]
            progress(f"run {i + 1}/{2 * runs} (arm {arm}) done")
    with open(out / "runs.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    progress(f"{2 * runs} runs in {time.monotonic() - t0:.0f} s")
    return results(out, wl, topo, per_run)


def read_plan(path):
    """An experiment's plan.json ({} when absent); DataError naming it when malformed."""
    try:
        plan = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise DataError(str(path), err.strerror or type(err).__name__) from err
    except (ValueError, RecursionError) as err:   # not UTF-8 or not JSON
        raise DataError(str(path), "not a JSON plan (truncated or corrupt)") from err
    arms = plan.get("arms", {}) if isinstance(plan, dict) else None
    if not isinstance(arms, dict) or not all(isinstance(a, dict) for a in arms.values()):
        raise DataError(str(path), "not an 'ab' plan (no arms object)")
    if not isinstance(plan.get("workload") or {}, dict) or \
            not isinstance(plan.get("mode") or "", str):
        raise DataError(str(path), "malformed workload or mode")
    return plan


def results(out, wl=None, topo=None, per_run=None):
    guest, run_recs = compare.read_runs(Path(out) / "runs.jsonl")
    plan = read_plan(Path(out) / "plan.json")
    doc = {"arms": plan.get("arms", {}),
           "metrics": compare.metrics(run_recs, Path(out) / "runs.jsonl"),
           "kernel": (guest or {}).get("kernel"),
           "topology": (guest or {}).get("topology") or (topo and topo_dict(topo)),
           "workload": wl or plan.get("workload"),
           "mode": plan.get("mode") if per_run is None else
           ("boot per run" if per_run else "one boot"),
           "probes": (guest or {}).get("probes"), "runs": len(run_recs),
           "note": "QEMU TCG timings are not hardware timings; migration counts are the "
                   "primary evidence"}
    (Path(out) / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def topo_dict(topo):
    return {"nodes": [{"cpus": list(n.cpus), "mem_mb": n.mem_mb} for n in topo.nodes],
            "distances": [list(r) for r in topo.distances]}
