"""What a bisect measures and how: one value object shared by 'bisect run',
'bisect step' (which takes every field as an option, so the command that
'git bisect run' runs is complete and can be copied into a CI job), the state
file and the log header."""

import os
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields

from vnuma_sched.errors import BadInput
from vnuma_sched.probes.spec import METRICS


@dataclass
class Options:
    metric: str
    runs: int = 5
    max_runs: int = 10
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
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)    # make -j per build

    def check(self):
        if self.metric not in METRICS:
            near = [m for m in METRICS if self.metric.split(".")[0] in m][:6]
            raise BadInput(f"--metric {self.metric!r}: unknown metric; "
                           + (f"did you mean {', '.join(near)}?" if near else
                              "see 'vnuma-sched bisect run --help' for the list"))
        if self.max_runs < self.runs:
            raise BadInput(f"--max-runs {self.max_runs} is below --runs {self.runs}")
        return self

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
    def from_dict(cls, doc):
        names = {f.name for f in fields(cls)}
        unknown = set(doc) - names
        if unknown or "metric" not in doc:
            raise ValueError(f"unexpected bisect options: {sorted(unknown) or 'no metric'}")
        return cls(**doc)

    def step_args(self):
        """The 'bisect step' options that reproduce these settings (threshold required)."""
        args = ["--metric", self.metric, "--threshold", repr(float(self.threshold)),
                "--bad-when", "above" if self.worse_above() else "below",
                "--runs", str(self.runs), "--max-runs", str(self.max_runs),
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
