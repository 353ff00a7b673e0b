"""Guest-kernel builds: configure from fragments, check what survived, build bzImage,
write metadata.json. Steps end PASS / FAIL / SKIP, tuxmake style."""

import hashlib
import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.kernel import kconfig
from vnuma_sched.kernel.ktree import tree_version
from vnuma_sched.runner import stream

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
ARCH = "x86_64"
IMAGE = "arch/x86/boot/bzImage"
HEADERS_ARCHIVE = "kernel/kheaders_data.tar.xz"    # CONFIG_IKHEADERS: what the kernel embeds


def headers_archive(image):
    """The kernel headers archive built with ``image`` when it sits in its build
    directory (<build>/arch/x86/boot/bzImage; the same archive the kernel serves as
    /sys/kernel/kheaders.tar.xz), else None."""
    image, parts = Path(image), Path(IMAGE).parts
    if image.parts[-len(parts):] != parts:
        return None
    archive = image.parents[len(parts) - 1] / HEADERS_ARCHIVE
    return archive if archive.is_file() else None
KERNEL_FRAGMENT = "kernel/configs/kvm_guest.config"
_TARGET = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*")
_ERROR = re.compile(r"(^\S+:\d+:\d+: (fatal )?error: .*|^make(\[\d+\])?: \*\*\* .*)")


class BuildFailed(VnumaError):
    """A build step ended FAIL. ``str(err)`` is the message users see; callers use the fields.

    step: the failed step's name ("configure", "bzImage", "objects").
    returncode: make's exit status, or None when no command failed (options dropped);
        not ``exit_code``, which is the CLI's exit code for the whole error family.
    errors: the first compiler error lines, or the dropped options (as text).
    log: the build log's path, or None when the step has none.
    result: the BuildResult so far, its last step the FAIL one.
    """

    def __init__(self, step, reason, returncode=None, errors=(), log=None, result=None):
        self.step = step
        self.reason = reason
        self.returncode = returncode
        self.errors = list(errors)
        self.log = log
        self.result = result
        super().__init__(self._message())

    def _message(self):
        if self.log is None:
            return f"{self.step}: {self.reason}"
        return (f"{self.step}: {self.reason}; first errors:\n  " + "\n  ".join(self.errors)
                + f"\nfull log: {self.log}")


@dataclass
class Step:
    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""


@dataclass
class BuildRequest:
    tree: Path
    out: Path
    fragments: list
    jobs: int = 2
    allow_dropped: bool = False
    targets: tuple = ("bzImage",)
    make_vars: tuple = ()  # e.g. ("W=1",)
    env: dict = field(default_factory=dict)  # over build_env(), e.g. a fixed timestamp

    @property
    def image_build(self):
        return self.targets == ("bzImage",)

    def reproducer(self):
        argv = ["vnuma-sched", "build", "--tree", str(self.tree), "--out", str(self.out),
                "--jobs", str(self.jobs)]
        for frag in self.fragments:
            argv += ["--fragment", str(frag)]
        if not self.image_build:
            for target in self.targets:
                argv += ["--target", target]
        if self.allow_dropped:
            argv.append("--allow-dropped")
        return shlex.join(argv)


@dataclass
class BuildResult:
    steps: list = field(default_factory=list)
    image: Path = None
    metadata: dict = None
    dropped: list = field(default_factory=list)

    @property
    def ok(self):
        return all(s.status != FAIL for s in self.steps)


def build_env(tree, runner):
    """Reproducible kbuild environment: timestamp from HEAD's commit date."""
    stamp = runner.output(["git", "log", "-1", "--format=%cd",
                           "--date=format-local:%a %b %e %H:%M:%S UTC %Y"], cwd=tree,
                          env={"TZ": "UTC"})
    return {"KBUILD_BUILD_TIMESTAMP": stamp, "KBUILD_BUILD_USER": "vnuma",
            "KBUILD_BUILD_HOST": "vnuma-sched", "ARCH": ARCH, "LC_ALL": "C"}


def _make(req, out, *targets, jobs=None):
    argv = ["make", "-C", str(Path(req.tree).absolute()), f"O={Path(out).absolute()}",
            f"ARCH={ARCH}"]
    if jobs:
        argv.append(f"-j{jobs}")
    return argv + list(targets)


def configure(req, runner, env):
    """Merge fragments over tinyconfig in a scratch dir; copy .config only if it changed.

    Returns the list of requested options that did not survive olddefconfig.
    """
    scratch = req.out / ".kconfig"
    scratch.mkdir(parents=True, exist_ok=True)
    runner.run(_make(req, scratch, "-s", "tinyconfig"), env=env)
    base = kconfig.parse((scratch / ".config").read_text(), strict=False)
    kernel_frag = kconfig.read_fragment(req.tree / KERNEL_FRAGMENT)
    user = [kconfig.read_fragment(f) for f in req.fragments]
    merged, _ = kconfig.merge(base, [kernel_frag, *user])
    _, requested = kconfig.merge({}, user)
    (scratch / ".config").write_text(kconfig.render(merged))
    runner.run(_make(req, scratch, "-s", "olddefconfig"), env=env)
    final_text = (scratch / ".config").read_text()
    lost = kconfig.dropped(requested, kconfig.parse(final_text, strict=False))
    target = req.out / ".config"
    if not target.exists() or target.read_text() != final_text:
        shutil.copyfile(scratch / ".config", target)
    return lost


def first_errors(log_path, limit=6):
    """The compiler's own error lines (not 500 lines of log)."""
    lines = Path(log_path).read_text(errors="replace").splitlines()
    errs = [ln for ln in lines if _ERROR.search(ln)]
    return errs[:limit] or lines[-limit:]


def first_warnings(log_path, limit=3):
    """Compiler warnings, summarised for the step's detail column."""
    lines = Path(log_path).read_text(errors="replace").splitlines()
    warns = [ln for ln in lines if re.search(r":\d+:\d+: warning: ", ln)]
    if not warns:
        return ""
    return f"{len(warns)} warning(s): " + "; ".join(warns[:limit])


def compile_image(req, env, progress):
    log = req.out / "build.log"
    counter = {"n": 0}

    def on_line(line):
        if re.match(r"^\s+(CC|LD|AS|AR|GEN|HOSTCC)\s", line):
            counter["n"] += 1
            if counter["n"] % 250 == 0:
                progress(f"  {counter['n']:6d} steps  {line.strip()}")

    code = stream(_make(req, req.out, *req.make_vars, *req.targets, jobs=req.jobs), log,
                  on_line, env=env)
    return code, log


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def applied_patches(tree, runner):
    """Commits on top of the vnuma-base tag (subject and patch-id), oldest first."""
    res = runner.run(["git", "rev-parse", "-q", "--verify", "vnuma-base"], cwd=tree,
                     check=False)
    if res.returncode != 0:
        return []
    log = runner.output(["git", "log", "--reverse", "--format=%H %s", "vnuma-base..HEAD"],
                        cwd=tree)
    out = []
    for line in filter(None, log.splitlines()):
        sha, subject = line.split(" ", 1)
        diff = runner.run(["git", "show", sha], cwd=tree).stdout
        pid = runner.run(["git", "patch-id", "--stable"], cwd=tree, input_text=diff).stdout
        out.append({"commit": sha, "subject": subject, "patch_id": pid.split()[0] if pid else ""})
    return out


def metadata(req, runner, seconds, image):
    tree = req.tree
    head = runner.output(["git", "rev-parse", "HEAD"], cwd=tree)
    base = runner.run(["git", "rev-parse", "-q", "--verify", "vnuma-base^{commit}"],
                      cwd=tree, check=False).stdout.strip() or head
    cc = runner.output(["gcc", "--version"]).splitlines()[0]
    return {
        "kernel_version": str(tree_version(tree)),
        "tree": str(tree),
        "head_commit": head,
        "base_commit": base,
        "patches": applied_patches(tree, runner),
        "fragments": [{"path": str(f), "sha256": sha256_file(f)} for f in req.fragments],
        "config_sha256": sha256_file(req.out / ".config"),
        "image": str(image),
        "image_sha256": sha256_file(image),
        "compiler": cc,
        "duration_s": round(seconds, 1),
        "reproducer": req.reproducer(),
    }


def check_targets(targets):
    """Make targets are file or target names: never options (``--eval=...``) or
    variable assignments (``CC=...``), which make would obey."""
    for target in targets:
        if not _TARGET.fullmatch(str(target)) or ".." in Path(str(target)).parts:
            raise BadInput(f"--target {str(target)[:60]!r}: not a make target "
                           "(letters, digits and _ . / + -, not starting with '-', no '=')")
    return tuple(targets)


def check_request(req):
    """Every input of a build checked before anything runs or is written."""
    check_targets(req.targets)
    for frag in req.fragments:
        kconfig.read_fragment(frag)


def build(req, runner, progress):
    """Run every step; raise BuildFailed naming the failed step and its first errors."""
    check_request(req)
    result = BuildResult()
    req.out.mkdir(parents=True, exist_ok=True)
    env = {**build_env(req.tree, runner), **req.env}
    t0 = time.monotonic()
    progress("configure: tinyconfig + kvm_guest.config + " +
             ", ".join(Path(f).name for f in req.fragments))
    lost = configure(req, runner, env)
    result.dropped = lost
    if lost and not req.allow_dropped:
        result.steps.append(Step("configure", FAIL, time.monotonic() - t0,
                                 "; ".join(map(str, lost))))
        raise BuildFailed("configure", "requested options did not survive olddefconfig: "
                          + "; ".join(map(str, lost)) + " (use --allow-dropped to go on)",
                          errors=map(str, lost), result=result)
    result.steps.append(Step("configure", PASS, time.monotonic() - t0,
                             f"{len(lost)} dropped" if lost else ""))
    t1 = time.monotonic()
    what = " ".join(req.targets)
    progress(f"build: make -j{req.jobs} {what} (log: {req.out / 'build.log'})")
    code, log = compile_image(req, env, progress)
    step = "bzImage" if req.image_build else "objects"
    if code != 0:
        result.steps.append(Step(step, FAIL, time.monotonic() - t1))
        raise BuildFailed(step, f"make exited {code}", code, first_errors(log), log, result)
    result.steps.append(Step(step, PASS, time.monotonic() - t1, first_warnings(log)))
    if not req.image_build:
        return result
    result.image = req.out / IMAGE
    result.metadata = metadata(req, runner, time.monotonic() - t0, result.image)
    (req.out / "metadata.json").write_text(json.dumps(result.metadata, indent=2) + "\n")
    result.steps.append(Step("metadata", PASS, 0.0, str(req.out / "metadata.json")))
    return result
