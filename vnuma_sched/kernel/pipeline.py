"""The main job in one go: fetch Debian's tree, apply the series in a worktree,
build the patched guest kernel, and boot it as a vNUMA guest. Every step says
what it did and how long it took; each reuses earlier work when nothing changed."""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched import resources
from vnuma_sched.kernel import kbuild, ktree, patches, vm

KCONFIG = resources.kconfig_dir()


@dataclass
class PipelineResult:
    steps: list = field(default_factory=list)   # (name, seconds, detail)
    vm: object = None


def _timed(result, progress, name, fn):
    t0 = time.monotonic()
    progress(f"{name} ...")
    value, detail = fn()
    seconds = time.monotonic() - t0
    result.steps.append((name, seconds, detail))
    progress(f"{name}: {detail} ({seconds:.0f} s)")
    return value


def apply_step(tree, series, cache, runner, progress):
    """The patched worktree under ``cache`` (one per version, another one with the debug
    patches): reused when it carries exactly the series, and made at the series
    branch's tip when another worktree (the tests') holds it."""
    dest = Path(cache) / "series" / f"linux-{series.name}"
    return patches.series_worktree(tree, series, dest, runner, progress)


def run(version, cache, topology, mem_mb, command, runner, progress, euid, accel="auto",
        timeout=300, host=None, pin=None):
    cache = Path(cache).absolute()
    res = PipelineResult()
    # series-test.config turns on the debug series' option: apply that series too
    series = patches.load_series(version, debug=True)
    # btf.config: the migrate probe's cross_node_avoidable reads task_struct offsets
    # from the guest's BTF
    frags = [KCONFIG / "vnuma-guest.config", KCONFIG / "series-test.config",
             KCONFIG / "btf.config"]
    topo = vm.parse_topology(topology, mem_mb, host, vm.guest_limits(frags), pin)
    tree = _timed(res, progress, "fetch", lambda: (
        (t := ktree.fetch_debian(version, cache / "trees", runner, progress, euid)), str(t)))
    work = _timed(res, progress, "apply", lambda: (
        (w := apply_step(tree, series, cache, runner, progress)),
        f"{len(series)} patches ({series.name}) on {w}"))
    out = cache / "builds" / f"series-{version}"
    req = kbuild.BuildRequest(work, out, frags, jobs=os.cpu_count() or 2)
    build = _timed(res, progress, "build", lambda: (
        (b := kbuild.build(req, runner, progress)), str(b.image)))
    chosen, why = vm.choose_accel(accel, build.image, runner, cache / "accel.json")
    res.vm = _timed(res, progress, "boot", lambda: (
        (r := vm.run(build.image, topo, command, runner, chosen, timeout)),
        f"{len(topo.nodes)} nodes x {len(topo.nodes[0].cpus)} CPUs under {chosen} ({why}): "
        f"{r.status}, exit {r.exit_code}"))
    return res
