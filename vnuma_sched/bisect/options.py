"""What a bisect measures and how: one value object shared by 'bisect run',
'bisect step' (which takes every field as an option, so the command that
'git bisect run' runs is complete and can be copied into a CI job), the state
file and the log header."""

import math
import os
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields

from vnuma_sched.errors import BadInput
from vnuma_sched.experiments.ab import check_workload
from vnuma_sched.probes.spec import METRICS

# (lowest, highest) of each integer option: the command line and the log header share them.
RANGES = {"runs": (1, 100), "max_runs": (1, 200), "boots": (1, 20), "threads": (1, 1024),
          "iterations": (1, 10 ** 9), "kib": (8, 1 << 30), "timeout": (10, 10 ** 6),
          "jobs": (1, 256)}
ACCELS = ("auto", "kvm", "tcg")
_STRINGS = ("metric", "workload", "spincount", "topology", "mem", "accel")
_OPTIONAL_STRINGS = ("measure_cmd", "workdir")
_LISTS = ("append", "fragments")


def flag(name):
    """The command-line spelling of a field: max_runs -> --max-runs."""
    return "--" + name.replace("_", "-")


def show(value, width=60):
    """A value from a file or the command line, as a message shows it: repr, shortened."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def not_an_option(value, label):
    """Refuse a value that git (or another program) would parse as an option."""
    if not isinstance(value, str) or not value or value.startswith("-"):
        raise BadInput(f"{label} {show(value)}: expected a name that does not start with '-'")
    return value


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    """A finite int or float (not a bool) that a float can hold."""
    if not (_is_int(v) or isinstance(v, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


@dataclass
class Options:
    metric: str
    runs: int = 5
    max_runs: int = 10
    boots: int = 2                   # a measurement's runs over at most this many boots
    threshold: float = None
    bad_above: bool = None           # None: from the endpoints (run) or the metric (step)
    workload: str = "omp-barrier"
    threads: int = 8
    spincount: str = "0"
    iterations: int = 3000
    kib: int = 256
    topology: str = "2x2"
    mem: str = "2G"
    append: list = field(default_factory=list)
    fragments: list = field(default_factory=list)   # absolute paths; [] = the project's
    carry_patches: bool = False
    measure_cmd: str = None
    workdir: str = None              # where --measure-cmd runs [default: the tree]
    accel: str = "auto"
    timeout: int = 300               # seconds per workload run
    jobs: int = field(default_factory=lambda: min(os.cpu_count() or 1, 256))  # make -j

    def check(self, complete=False):
        """BadInput unless every field has its type and range; ``complete``: the threshold
        and the direction are set too (a log header, the state of a running bisect)."""
        self._check_types()
        self._check_values(complete)
        if self.metric not in METRICS:
            near = [m for m in METRICS if self.metric.split(".")[0] in m][:6]
            raise BadInput(f"--metric {show(self.metric)}: unknown metric; "
                           + (f"did you mean {', '.join(near)}?" if near else
                              "see 'vnuma-sched bisect run --help' for the list"))
        if self.max_runs < self.runs:
            raise BadInput(f"--max-runs {self.max_runs} is below --runs {self.runs}")
        return self

    def _check_types(self):
        for name in _STRINGS:
            if not isinstance(getattr(self, name), str):
                raise BadInput(f"{flag(name)} {show(getattr(self, name))}: expected a string")
        for name in _OPTIONAL_STRINGS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise BadInput(f"{flag(name)} {show(value)}: expected a string")
        for name in _LISTS:
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadInput(f"{flag(name)} {show(value)}: expected a list of strings")
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if not _is_int(value) or not lo <= value <= hi:
                raise BadInput(f"{flag(name)} {show(value)}: expected an integer in "
                               f"{lo}..{hi}")
        if not isinstance(self.carry_patches, bool):
            raise BadInput(f"--carry-patches {show(self.carry_patches)}: expected true or false")
        if self.bad_above is not None and not isinstance(self.bad_above, bool):
            raise BadInput(f"--bad-when {show(self.bad_above)}: expected above or below")
        if self.threshold is not None and not is_number(self.threshold):
            raise BadInput(f"--threshold {show(self.threshold)}: expected a finite number")

    def _check_values(self, complete):
        if complete and (self.threshold is None or self.bad_above is None):
            raise BadInput("no --threshold or no --bad-when: both are set once the "
                           "endpoints are measured")
        if self.accel not in ACCELS:
            raise BadInput(f"--accel {show(self.accel)}: expected one of {', '.join(ACCELS)}")
        check_workload(self.workload)
        if self.measure_cmd is not None:
            try:
                argv = shlex.split(self.measure_cmd)
            except ValueError as err:
                raise BadInput(f"--measure-cmd {show(self.measure_cmd)}: {err}") from err
            if not argv:
                raise BadInput("--measure-cmd is empty")
        named = [("--fragment", f) for f in self.fragments]
        for label, path in named + ([("--workdir", self.workdir)] if self.workdir else []):
            if not os.path.isabs(path):
                raise BadInput(f"{label} {show(path)}: expected an absolute path")

    def commands(self):
        """{field: value} of the options that run a command of their own: what a log
        header alone must not decide."""
        out = {}
        if self.measure_cmd:
            out["measure_cmd"] = self.measure_cmd
        if self.workload.startswith("cmd:"):
            out["workload"] = self.workload
        return out

    def worse_above(self):
        """The direction of a regression: given, or the metric's default."""
        if self.bad_above is not None:
            return self.bad_above
        return not METRICS[self.metric].lower_is_worse

    @classmethod
    def defaults(cls):
        """Field name -> default of every field that has one (the CLI's option defaults)."""
        out = {}
        for f in fields(cls):
            if f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
            elif f.default is not MISSING:
                out[f.name] = f.default
        return out

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, doc, complete=True):
        """Options from a log header or a state file, checked (BadInput when they are not
        what 'bisect run' writes)."""
        if not isinstance(doc, dict):
            raise BadInput(f"options: expected an object, got {type(doc).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown or "metric" not in doc:
            what = show(unknown) if unknown else "no metric"
            raise BadInput(f"unexpected bisect options: {what}")
        return cls(**doc).check(complete)

    def step_args(self):
        """The 'bisect step' options that reproduce these settings (threshold required)."""
        args = ["--metric", self.metric, "--threshold", repr(float(self.threshold)),
                "--bad-when", "above" if self.worse_above() else "below",
                "--runs", str(self.runs), "--max-runs", str(self.max_runs),
                "--boots", str(self.boots),
                "--workload", self.workload, "--threads", str(self.threads),
                "--spincount", self.spincount, "--iterations", str(self.iterations),
                "--kib", str(self.kib), "--topology", self.topology, "--mem", self.mem,
                "--accel", self.accel, "--timeout", str(self.timeout), "--jobs", str(self.jobs)]
        for word in self.append:
            args += ["--append", word]
        for frag in self.fragments:
            args += ["--fragment", str(frag)]
        if self.carry_patches:
            args.append("--carry-patches")
        if self.measure_cmd:
            args += ["--measure-cmd", self.measure_cmd]
        if self.workdir:
            args += ["--workdir", self.workdir]
        return args

    def step_command(self):
        return shlex.join(["vnuma-sched", "bisect", "step", *self.step_args()])
