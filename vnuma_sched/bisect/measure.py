"""Measure a built kernel: N workload runs, each with the probes' metrics.

Two backends give the same per-run records (the ones 'ab' writes):
- Guest boots the image here as a vNUMA guest (virtme-ng) and runs the
  workload under the probe the metric needs, N times in one boot;
- Command runs the user's own command (a lab that boots the image on real
  hardware, for example) with the image in $VNUMA_SCHED_IMAGE; it prints one
  JSON object per run, {"metrics": {...}} and/or {"score": ...}, and exits 0,
  or 125 when this kernel cannot be tested.
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


class Guest:
    """Boot the image as a vNUMA guest and run the workload under the metric's probe."""

    def __init__(self, wl, topo, metric, runner, accel, timeout, append, accel_cache):
        self.wl, self.topo, self.runner = wl, topo, runner
        self.accel, self.timeout, self.append = accel, timeout, list(append)
        self.accel_cache = accel_cache
        # workload_score needs no eBPF probe: 'steal' (read from /proc/stat) keeps the
        # guest from compiling every probe.
        self.probes = [metric_probe(metric) or "steal"]

    def key(self):
        return {"backend": "guest", "workload": self.wl, "topology": ab.topo_dict(self.topo),
                "append": self.append, "probes": self.probes, "accel": self.accel}

    def records(self, image, commit, n, metric):
        accel, _ = vm.choose_accel(self.accel, image, self.runner, self.accel_cache)
        io = Path(tempfile.mkdtemp(prefix="vnuma-bisect-"))  # the guest sees /tmp
        try:
            plan = {"arms": {"a": {"knobs": {}, "paths": {}, "boot": []}}, "order": ["a"] * n,
                    "workload": ab.stage(self.wl, io), "probes": self.probes, "mode": "bisect"}
            try:
                recs = ab.guest_runs(image, self.topo, plan, io / "plan.json", self.runner,
                                     accel, self.timeout * n + 120, self.append)
            except ab.GuestFailed as err:
                raise SkipCommit(str(err)) from err
        finally:
            shutil.rmtree(io, ignore_errors=True)
        runs = [r for r in recs if r.get("type") == "run"]
        if runs and not values(runs, metric):
            guest = next((r for r in recs if r.get("type") == "guest"), {})
            why = guest.get("probes", {}).get(self.probes[0], {})
            unsupported = (why.get("unsupported") or {}).get(metric)
            raise Abort(f"the guest reported no {metric}: " + (
                f"unsupported: {unsupported}" if unsupported else
                f"probe {self.probes[0]} {why.get('reason') or 'not loaded'}"))
        return runs


class Command:
    """Measure with the user's command (see the module docstring for its protocol)."""

    def __init__(self, command, runner, timeout, cwd=None):
        self.argv = shlex.split(command)
        if not self.argv:
            raise Abort("--measure-cmd is empty")
        self.command, self.runner, self.timeout, self.cwd = command, runner, timeout, cwd

    def key(self):
        return {"backend": "command", "command": self.command}

    def records(self, image, commit, n, metric):
        env = {"VNUMA_SCHED_IMAGE": str(image), "VNUMA_SCHED_COMMIT": commit,
               "VNUMA_SCHED_RUNS": str(n), "VNUMA_SCHED_METRIC": metric}
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
        progress(f"measuring: {n - len(have)} run(s) of the workload")
        doc["records"] += backend.records(image, commit, n - len(have), metric)
        have = values(doc["records"], metric)
    if commit not in doc["commits"]:
        doc["commits"].append(commit)
    results.save(image_sha, doc)
    return have, (before[0] if before else None)
