"""Measure a built kernel: N workload runs, each with the probes' metrics.

Two backends give the same per-run records (the ones 'ab' writes):
- Guest boots the image here as a vNUMA guest (virtme-ng) and runs the
  workload under the probe the metric needs, N times spread over --boots
  boots (a boot is one sample of a large boot-to-boot spread);
- Command runs the user's own command (a lab that boots the image on real
  hardware, for example) with the image in $VNUMA_SCHED_IMAGE and the boots
  asked for in $VNUMA_SCHED_BOOTS; it prints one JSON object per run,
  {"metrics": {...}} and/or {"score": ...}, and exits 0, or 125 when this
  kernel cannot be tested.
Records are cached per image (sha256) and measurement, so a commit whose
image is identical to an already-measured one reuses those runs."""

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from vnuma_sched.bisect.source import SkipCommit
from vnuma_sched.errors import VnumaError
from vnuma_sched.experiments import ab
from vnuma_sched.kernel import vm
from vnuma_sched.probes.spec import metric_probe


class Abort(VnumaError):
    """An infrastructure problem: the bisect cannot go on (git bisect run exit 128)."""


def values(records, metric):
    key = "score" if metric == "workload_score" else None
    out = []
    for r in records:
        v = r.get(key) if key else r.get("metrics", {}).get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(v)
    return out


per_boot = ab.per_boot


class Guest:
    """Boot the image as a vNUMA guest and run the workload under the metric's probe."""

    def __init__(self, wl, topo, metric, runner, accel, timeout, append, accel_cache, boots=1,
                 progress=lambda message: None):
        self.wl, self.topo, self.runner, self.boots = wl, topo, runner, boots
        self.progress = progress
        self.accel, self.timeout, self.append = accel, timeout, list(append)
        self.accel_cache = accel_cache
        # workload_score needs no eBPF probe: 'steal' (read from /proc/stat) keeps the
        # guest from compiling every probe.
        self.probes = [metric_probe(metric) or "steal"]

    def key(self):
        return {"backend": "guest", "workload": self.wl, "topology": ab.topo_dict(self.topo),
                "append": self.append, "probes": self.probes, "accel": self.accel,
                "boots": self.boots}

    def records(self, image, commit, n, metric):
        """n runs over --boots boots, each run record with its boot (0, 1, ...)."""
        accel, _ = vm.choose_accel(self.accel, image, self.runner, self.accel_cache)
        runs = []
        for b, count in enumerate(per_boot(n, self.boots)):
            recs = self._boot(image, accel, count)
            got = [{**r, "boot": b} for r in recs if r.get("type") == "run"]
            if got and not values(got, metric):   # the next boot would not do better
                guest = next((r for r in recs if r.get("type") == "guest"), {})
                why = guest.get("probes", {}).get(self.probes[0], {})
                unsupported = (why.get("unsupported") or {}).get(metric)
                raise Abort(f"the guest reported no {metric}: " + (
                    f"unsupported: {unsupported}" if unsupported else
                    f"probe {self.probes[0]} {why.get('reason') or 'not loaded'}"))
            runs += got
        return runs

    def _boot(self, image, accel, n):
        """The records of one boot that runs the workload n times (a boot that
        panics is booted once more, as in 'ab'; a second failure skips the commit)."""
        io = Path(tempfile.mkdtemp(prefix="vnuma-bisect-"))  # the guest sees /tmp
        try:
            with ab.host_headers(image, io) as headers:
                plan = {"arms": {"a": {"knobs": {}, "paths": {}, "boot": []}},
                        "order": ["a"] * n, "workload": ab.stage(self.wl, io),
                        "probes": self.probes, "mode": "bisect",
                        "kernel_headers": headers}
                return ab.boot_retrying(self.progress, lambda attempt: ab.guest_runs(
                    image, self.topo, plan, io / "plan.json", self.runner, accel,
                    self.timeout * n + 120, self.append, attempt))
        except ab.GuestFailed as err:
            raise SkipCommit(str(err)) from err
        finally:
            shutil.rmtree(io, ignore_errors=True)


class Command:
    """Measure with the user's command (see the module docstring for its protocol)."""

    def __init__(self, command, runner, timeout, cwd=None, boots=1):
        self.argv = shlex.split(command)
        if not self.argv:
            raise Abort("--measure-cmd is empty")
        self.command, self.runner, self.timeout, self.cwd = command, runner, timeout, cwd
        self.boots = boots

    def key(self):
        return {"backend": "command", "command": self.command, "boots": self.boots}

    def records(self, image, commit, n, metric):
        env = {"VNUMA_SCHED_IMAGE": str(image), "VNUMA_SCHED_COMMIT": commit,
               "VNUMA_SCHED_RUNS": str(n), "VNUMA_SCHED_METRIC": metric,
               "VNUMA_SCHED_BOOTS": str(len(per_boot(n, self.boots)))}
        res = self.runner.run(self.argv, cwd=self.cwd, env=env, check=False,
                              timeout=self.timeout * n)
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-2:])
        if res.timed_out:
            raise SkipCommit(f"--measure-cmd timed out after {self.timeout * n} s")
        if res.returncode == 125:
            raise SkipCommit(f"--measure-cmd cannot test this kernel: {tail}")
        if res.returncode != 0:
            raise Abort(f"--measure-cmd exited {res.returncode}: {tail}")
        runs = []
        for line in res.stdout.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and ("metrics" in rec or "score" in rec):
                runs.append(rec)
        if len(values(runs, metric)) < n:
            raise Abort(f"--measure-cmd printed {len(values(runs, metric))} runs with "
                        f"{metric}, {n} wanted")
        return runs


class Results:
    """Run records per (measurement, image sha256), kept across steps and bisects."""

    def __init__(self, root, backend):
        blob = json.dumps(backend.key(), sort_keys=True).encode()
        self.dir = Path(root) / hashlib.sha256(blob).hexdigest()[:16]

    def _path(self, image_sha):
        return self.dir / f"{image_sha}.json"

    def load(self, image_sha):
        try:
            return json.loads(self._path(image_sha).read_text())
        except (OSError, ValueError):
            return {"records": [], "commits": []}

    def save(self, image_sha, doc):
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(image_sha).with_suffix(".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, self._path(image_sha))


def measure(backend, results, image, image_sha, commit, n, metric, progress):
    """At least ``n`` values of ``metric`` for this image: cached runs first, then new runs.
    Returns (values, first commit that measured this image or None)."""
    doc = results.load(image_sha)
    before = [c for c in doc["commits"] if c != commit]
    have = values(doc["records"], metric)
    if len(have) < n:
        boots = len(per_boot(n - len(have), backend.boots))
        progress(f"measuring: {n - len(have)} run(s) of the workload"
                 + (f" over {boots} boots" if boots > 1 else ""))
        first = 1 + max((r.get("boot", 0) for r in doc["records"]), default=-1)
        doc["records"] += [{**r, "boot": first + r.get("boot", 0)}
                           for r in backend.records(image, commit, n - len(have), metric)]
        have = values(doc["records"], metric)
    if commit not in doc["commits"]:
        doc["commits"].append(commit)
    results.save(image_sha, doc)
    return have, (before[0] if before else None)
