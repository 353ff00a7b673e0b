"""A/B experiments: boot the guest (once, or --boots times), run the named arms
interleaved in a rotating order, record the probes around every workload run, and
summarise with statistics: every arm against the first, the reference."""

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from vnuma_sched.errors import BadInput, DataError, VnumaError
from vnuma_sched.experiments import arms as A
from vnuma_sched.experiments import compare
from vnuma_sched.experiments.workloads import build
from vnuma_sched.kernel import kbuild, vm
from vnuma_sched.probes import kheaders
from vnuma_sched.probes.recording import iter_jsonl

PROBES = ["migrate", "ipi", "halt", "preempt", "schedstat"]


class GuestFailed(VnumaError):
    """A boot that did not run its plan to the end; ``status`` is vm.run's
    ("panic", "timeout", ...), ``console`` the saved console log."""

    def __init__(self, message, status=None, console=None):
        super().__init__(message)
        self.status, self.console = status, console


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


def order(names, runs, start=0):
    """``runs`` rounds over the arms, starting with arm ``start`` (rotated)."""
    k = start % len(names)
    return (names[k:] + names[:k]) * runs


def per_boot(n, boots):
    """n runs spread over at most ``boots`` boots, as evenly as they go: [3, 2] for 5
    over 2 (the split of ab's arms and of bisect's runs of a commit)."""
    b = max(1, min(boots, n))
    return [n // b + (i < n % b) for i in range(b)]


def schedule(names, runs, boots):
    """Per boot, its run order: ``runs`` per arm in total, spread evenly over the boots,
    each boot starting with the next arm; BadInput when a boot would get no run."""
    if boots < 1:
        raise BadInput(f"--boots {boots}: at least 1")
    if runs < boots:
        raise BadInput(f"--runs {runs} is fewer than --boots {boots}: every boot needs a "
                       "run of each arm")
    return [order(names, n, b) for b, n in enumerate(per_boot(runs, boots))]


def boot_groups(arm_list, topos=None):
    """[[arm names]] that share boots, in the order of their first arm. Arms with the
    same guest layout (``topos``: {arm name: vm.GuestTopology}; absent: one layout)
    and the same boot parameters and parked vCPUs (arms.boot_key) share boots and
    switch run-time gates between runs; an arm that no other arm matches boots on
    its own, once per run."""
    groups = {}
    for arm in arm_list:
        key = ((topos or {}).get(arm.name), A.boot_key(arm))
        groups.setdefault(key, []).append(arm.name)
    return list(groups.values())


def boot_orders(groups, runs, boots):
    """Per boot, its run order: a group of one arm gets a boot per run, a larger group
    ``boots`` boots (schedule); the groups' boots are interleaved in rounds, each round
    starting with the next group."""
    per = [schedule(g, runs, boots) if len(g) > 1 else [[g[0]]] * runs for g in groups]
    out = []
    for k in range(max(map(len, per))):
        for i in order(list(range(len(per))), 1, k):
            if k < len(per[i]):
                out.append(per[i][k])
    return out


@contextlib.contextmanager
def host_headers(image, where):
    """The plan's kernel_headers: the headers built with ``image``, extracted on the
    host into ``where`` (which the guest sees) for as long as the block runs, or None
    (the guest then extracts its own, about a minute of a TCG boot)."""
    with kheaders.extracted(kbuild.headers_archive(image), where) as path:
        yield path and str(path)


def guest_runs(image, topo, plan, plan_path, runner, accel, timeout, append, attempt=1):
    """The guest's records of one boot; its guest record also carries the layout the
    host booted and, for a placed guest, the placement QEMU reported. A failed boot
    keeps its console as console-boot<N>.log (console-boot<N>-<attempt>.log after
    the first attempt)."""
    plan_path.write_text(json.dumps(plan))
    cmd = [sys.executable, "-c", "import sys; from vnuma_sched.experiments.guest_agent import main; "
           "main(sys.argv[1])", str(plan_path)]
    res = vm.run(image, topo, cmd, runner, accel, timeout, append)
    if res.status != "exited" or res.exit_code != 0:
        log = plan_path.parent / (f"console-boot{plan.get('boot', 0)}"
                                  f"{'' if attempt == 1 else f'-{attempt}'}.log")
        log.write_text(res.console)      # a panic's whole trace, kept beside the plan
        tail = res.stderr.strip().splitlines()[-3:] or res.console_tail[-5:]
        if res.status == "pin-failed":
            tail = [res.panic]
        raise GuestFailed(f"guest {res.status} (exit {res.exit_code}): " + " | ".join(tail)
                          + f" (console: {log})", res.status, str(log))
    recs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    for rec in (r for r in recs if r.get("type") == "guest"):
        if topo is not None:
            rec["layout"] = topo.to_dict()
        if res.placement is not None:
            rec["placement"] = res.placement
    return recs


def run(image, topo, wl, arm_list, runs, boots, out, runner, progress, accel, timeout,
        append=(), topos=None):
    """Writes out/runs.jsonl (a record per run, with its boot index) and
    out/results.json; returns the results document. ``topos``: {arm name:
    vm.GuestTopology} for arms that boot a layout other than ``topo``."""
    topos = {a.name: (topos or {}).get(a.name, topo) for a in arm_list}
    names = [a.name for a in arm_list]
    sched, mode = _plan_boots(arm_list, topos, runs, boots, progress)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wl = stage(wl, out)
    arms = {a.name: {**a.to_dict(), "topology": topos[a.name] and topos[a.name].to_dict()}
            for a in arm_list}
    cmdline = {a.name: a.boot for a in arm_list}
    done, t0 = 0, time.monotonic()
    with open(out / "runs.jsonl", "w", encoding="utf-8") as f, \
            host_headers(image, out) as headers:
        for b, boot_order in enumerate(sched):
            plan = {"arms": arms, "reference": names[0], "order": boot_order, "workload": wl,
                    "probes": PROBES, "mode": mode, "boot": b, "boots": len(sched),
                    "kernel_headers": headers}
            recs = boot_retrying(progress, lambda attempt: guest_runs(
                image, topos[boot_order[0]], plan, out / "plan.json", runner, accel,
                timeout * len(boot_order), [*append, *cmdline[boot_order[0]]], attempt))
            for r in recs:
                r["boot"] = b
                if r.get("type") == "run":
                    r["index"], done = done, done + 1
                f.write(json.dumps(r) + "\n")
            f.flush()
            if len(sched) > 1:
                progress(f"boot {b + 1}/{len(sched)} ({' '.join(boot_order)}) done")
    progress(f"{done} runs in {time.monotonic() - t0:.0f} s")
    return results(out, wl, topo, mode)


def boot_retrying(progress, boot):
    """The records of ``boot(attempt)``. A guest panic is booted once more (a rare
    race between attaching kprobes and a vCPU running the probed function was seen
    to oops a TCG guest as its probes loaded): the retry's records are the boot's,
    preceded by a "retried" record naming the panic and its console log."""
    try:
        return boot(1)
    except GuestFailed as err:
        if err.status != "panic":
            raise
        progress(f"{err}; booting it again (once)")
        return [{"type": "retried", "error": str(err), "console": err.console}, *boot(2)]


def _plan_boots(arm_list, topos, runs, boots, progress):
    """(per-boot run orders, mode), said in progress."""
    names = [a.name for a in arm_list]
    groups = boot_groups(arm_list, topos)
    total = runs * len(names)
    if len(groups) == len(names):
        why = " and ".join(w for w, differ in (
            ("guest layout", len(set(topos.values())) > 1),
            ("boot parameters", A.needs_boot_per_run(*arm_list))) if differ)
        progress(f"arms differ in {why}: one boot per run, so {total} boots"
                 + (f" (the runs imply the boots, not --boots {boots})" if boots > 1 else ""))
        return boot_orders(groups, runs, boots), "boot per run"
    if len(groups) > 1:
        sched = boot_orders(groups, runs, boots)
        alone = [g[0] for g in groups if len(g) == 1]
        shared = "; ".join(" ".join(g) for g in groups if len(g) > 1)
        mode = (f"boot per run ({' '.join(alone)}); {_boots(boots)} ({shared})" if alone
                else f"{_boots(boots)} per layout ({shared})")
        progress(f"{len(sched)} boots: {mode}; arms with the same layout and boot "
                 "parameters share boots, switching run-time gates")
        return sched, mode
    sched = schedule(names, runs, boots)
    rotation = " | ".join(" ".join(o[:len(names)]) + " ..." for o in sched[:3])
    progress(f"{_boots(boots)}, {total} runs switching "
             f"run-time gates ({rotation}{' | ...' if boots > 3 else ''})")
    return sched, _boots(boots)


def _boots(boots):
    return "one boot" if boots == 1 else f"{boots} boots"


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


NOTE = ("QEMU TCG timings are not hardware timings; migration counts are the primary "
        "evidence")
NOTE_BOOTS = ("; statistics pool all runs of an arm over the boots; spread between boots: "
              "IQR of the per-boot medians, within a boot: median of the per-boot IQRs")


def read_runs(out):
    """(guest records, run records, plan, arm names, the reference first) of an 'ab'
    directory, also of one from before named arms and boots; DataError naming a file."""
    runs_path = Path(out) / "runs.jsonl"
    guests, run_recs = compare.read_runs(runs_path)
    plan = read_plan(Path(out) / "plan.json")
    planned = plan.get("arms", {})
    stray = next((r["arm"] for r in run_recs if planned and r["arm"] not in planned), None)
    if stray:
        raise DataError(str(runs_path), f"a run of arm {stray!r}, which plan.json lacks")
    if plan.get("mode") == "boot per run":  # recorded before runs carried a boot index
        for n, r in enumerate(run_recs):
            r.setdefault("boot", n)
    return guests, run_recs, plan, compare.arm_names(run_recs, planned)


def placements(guests, run_recs):
    """Per placed boot: its arms and where QEMU ran its vCPUs and put its memory."""
    arms_of = {}
    for r in run_recs:
        arms_of.setdefault(r.get("boot", 0), set()).add(r["arm"])
    out = []
    for g in guests:
        boot = g.get("boot", 0)
        if isinstance(g.get("placement"), dict) and isinstance(boot, int):
            out.append({"boot": boot, "arms": sorted(arms_of.get(boot, ())), **g["placement"]})
    return out


def results(out, wl=None, topo=None, mode=None):
    """Writes out/results.json from out/runs.jsonl and out/plan.json; returns it."""
    guests, run_recs, plan, names = read_runs(out)
    guest = guests[0] if guests else {}
    boots = len(compare.boots(run_recs))
    doc = {"arms": plan.get("arms", {}), "reference": names[0],
           "metrics": compare.metrics(run_recs, Path(out) / "runs.jsonl", names),
           "kernel": guest.get("kernel"),
           "topology": guest.get("topology") or (topo and topo_dict(topo)),
           "workload": wl or plan.get("workload"), "mode": mode or plan.get("mode"),
           "probes": guest.get("probes"), "runs": len(run_recs), "boots": boots,
           "placements": placements(guests, run_recs),
           "retried": retried(Path(out) / "runs.jsonl"),
           "note": NOTE + (NOTE_BOOTS if boots > 1 else "")}
    doc["note"] += "".join(f"; boot {r['boot'] + 1} panicked and was booted again (console: "
                           f"{r.get('console')})" for r in doc["retried"])
    (Path(out) / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def retried(runs_path):
    """The "retried" records of a runs.jsonl: boots that panicked once."""
    return [{k: rec.get(k) for k in ("boot", "error", "console")}
            for _, rec in iter_jsonl(runs_path, "runs file")
            if isinstance(rec, dict) and rec.get("type") == "retried"]


def topo_dict(topo):
    return {"nodes": [{"cpus": list(n.cpus), "mem_mb": n.mem_mb} for n in topo.nodes],
            "distances": [list(r) for r in topo.distances]}
