"""Build the shipped workloads with the system compiler, and parse their scores."""

import hashlib
import re
import shutil
from pathlib import Path

from vnuma_sched import resources
from vnuma_sched.errors import BadInput, Missing


def omp_barrier(cache, runner):
    """Path of the omp-barrier binary, rebuilt only when its source changes."""
    src = resources.workload_source("omp_barrier.c")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = Path(cache) / "workloads" / f"omp-barrier-{digest}"
    if out.exists():
        return out
    if not shutil.which("gcc"):
        raise Missing("gcc not found: needed to build the omp-barrier workload")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    runner.run(["gcc", "-O2", "-fopenmp", "-Wall", "-o", str(tmp), str(src)])
    tmp.rename(out)
    return out


SCORES = {
    "omp-barrier": re.compile(r"iter_per_s=([0-9.]+)"),
    "perf-pipe": re.compile(r"([0-9]+) ops/sec"),
    "perf-messaging": re.compile(r"Total time:\s+([0-9.]+) \[sec\]"),
}


# Figures a workload prints beside its score (name -> pattern), reported as metrics.
FIGURES = {
    "omp-barrier": {"remote_run_fraction": re.compile(r"remote_run_fraction=([0-9.]+)")},
}


def figures(kind, output):
    """The workload's other figures found in its output ({} when it printed none)."""
    return {name: float(m.group(1)) for name, rx in FIGURES.get(kind, {}).items()
            if (m := rx.search(output))}


def score(kind, output, seconds):
    """The workload's figure, higher is better."""
    if kind.startswith("cmd:"):
        return 1.0 / seconds if seconds > 0 else 0.0
    m = SCORES[kind].search(output)
    if not m:
        raise BadInput(f"{kind}: no score in its output: {output.strip()[-200:]!r}")
    value = float(m.group(1))
    return 1.0 / value if kind == "perf-messaging" else value
