"""vnuma-sched command line: parse -> call core -> render -> exit code. No logic here.

Heavy modules (bcc, git, doctor checks) are imported inside the commands so
that --help works on machines without them.
"""

import os
import sys
import traceback
from dataclasses import dataclass

import click

from vnuma_sched import __version__
from vnuma_sched.errors import BadInput, VnumaError

EPILOG = """\b
Exit codes: 0 ok, 1 operation failed, 2 bad input, 3 unreadable or malformed
system data, 4 needs root, 5 missing tool or kernel feature, 130 interrupted.

\b
Examples:
  vnuma-sched doctor                 what this guest exposes and risks
  vnuma-sched topology --json        nodes, CPUs, memory, distances
"""


@dataclass
class Settings:
    root: str
    json: bool
    verbose: bool
    profiles_dir: str = None

    def sysroot(self):
        from vnuma_sched.sysroot import SysRoot

        return SysRoot(self.root)


class Group(click.Group):
    """Turns VnumaError into one line on stderr and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VnumaError as err:
            self._report(ctx, str(err))
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            self._report(ctx, "interrupted")
            ctx.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort):
            raise
        except Exception as err:  # a bug: one line, the traceback with -v
            self._report(ctx, f"internal error: {type(err).__name__}: {err} "
                              "(run with -v for the traceback)")
            ctx.exit(1)

    @staticmethod
    def _report(ctx, message):
        settings = ctx.find_object(Settings)
        if settings is not None and settings.verbose:
            traceback.print_exc()
        click.echo(f"vnuma-sched: error: {message}", err=True)


def emit(settings, obj, text):
    """Print ``obj`` as JSON with --json, else the rendered ``text``."""
    if settings.json:
        from vnuma_sched.render import to_json

        click.echo(to_json(obj))
    else:
        click.echo(text)


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="VNUMA_SCHED_ROOT", default="/", hidden=True,
              help="Resolve every system path and state file under DIR.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks and more detail on errors.")
@click.version_option(__version__, prog_name="vnuma-sched")
@click.pass_context
def main(ctx, root, as_json, verbose):
    """Tools for Linux guests that run as virtual-NUMA (vNUMA) VMs."""
    if not os.path.isdir(root):
        raise BadInput(f"--root {root}: no such directory")
    ctx.obj = Settings(root=root, json=as_json, verbose=verbose)


json_option = click.option("--json", "as_json", is_flag=True, help="JSON output.")


def _merge_json(settings, as_json):
    if as_json:
        settings.json = True
    return settings


@main.command()
@json_option
@click.pass_obj
def topology(settings, as_json):
    """NUMA nodes with their CPUs, memory and distances.

    \b
    Read from /sys/devices/system/node. Memoryless and CPU-less nodes are
    shown as such.
    \b
    Example:
      vnuma-sched topology --json
    """
    from vnuma_sched.render import topology_text
    from vnuma_sched.topology import read_topology

    settings = _merge_json(settings, as_json)
    topo = read_topology(settings.sysroot())
    emit(settings, topo.to_dict(), topology_text(topo))


@main.command()
@json_option
@click.pass_obj
def doctor(settings, as_json):
    """Check what this guest exposes before trusting the other commands.

    \b
    Kernel, KVM paravirt features (CPUID 0x40000001, or dmesg evidence),
    PV spinlocks, steal time, cpuidle, vNUMA layout, bcc, BTF, tracefs,
    debugfs, kprobes, lockdown, and whether this project's patches are in the
    running kernel. Ends with which of the two vNUMA problems this guest can
    be exposed to and what is available against each.
    \b
    Example:
      sudo vnuma-sched doctor --json
    """
    from vnuma_sched import cpuid, doctor as doc
    from vnuma_sched.probes.loader import compile_check
    from vnuma_sched.render import doctor_text

    settings = _merge_json(settings, as_json)
    sysroot = settings.sysroot()
    env = doc.DoctorEnv(sysroot=sysroot, euid=os.geteuid(),
                        cpuid=cpuid.device_reader(sysroot), bcc_check=compile_check)
    checks = doc.run_checks(env)
    verdict = doc.verdict(checks)
    emit(settings, {"checks": [c.to_dict() for c in checks], "verdict": verdict},
         doctor_text(checks, verdict))


def _progress(settings):
    """Progress lines go to stderr so --json stdout stays clean."""
    return lambda msg: click.echo(f"vnuma-sched: {msg}", err=True)


def cache_dir():
    return os.environ.get("VNUMA_SCHED_CACHE", "/var/cache/vnuma_sched")


@main.group()
def kernel():
    """Kernel trees: fetch Debian's source packages as git repositories."""


@kernel.command("fetch")
@click.option("--version", "series", default="6.12", show_default=True,
              help="Kernel series: 6.1 or 6.12.")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Parent directory of the tree [default: $VNUMA_SCHED_CACHE/trees].")
@click.option("--git", "git_source", default=None,
              help="Clone this URL or path instead of Debian's source package.")
@click.option("--ref", default="HEAD", show_default=True, help="With --git: what to check out.")
@click.pass_obj
def kernel_fetch(settings, series, dest, git_source, ref):
    """Extract linux-source-VERSION into a git repo with one base commit; print its path.

    \b
    Installs the Debian package if needed (root). Idempotent. With --git,
    clones (or fetches) the given tree and checks out REF instead.
    \b
    Examples:
      vnuma-sched kernel fetch --version 6.12
      vnuma-sched kernel fetch --git ~/src/linux --ref v6.12
    """
    from vnuma_sched.ktree import fetch_debian, fetch_git
    from vnuma_sched.runner import Runner

    dest = dest or os.path.join(cache_dir(), "trees")
    if git_source:
        tree = fetch_git(git_source, ref, dest, Runner(), _progress(settings))
    else:
        tree = fetch_debian(series, dest, Runner(), _progress(settings), os.geteuid())
    click.echo(str(tree))


@main.command()
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False),
              help="Kernel source tree (a git repository).")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="Kconfig fragment (repeatable) [default: kconfig/vnuma-guest.config].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Build directory (O=) [default: $VNUMA_SCHED_CACHE/builds/<tree>].")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=os.cpu_count() or 1,
              show_default=True)
@click.option("--allow-dropped", is_flag=True,
              help="Go on when requested options do not survive olddefconfig.")
@click.option("--target", "targets", multiple=True,
              help="Make targets instead of bzImage, e.g. kernel/sched/fair.o (repeatable).")
@json_option
@click.pass_obj
def build(settings, tree, fragments, out, jobs, allow_dropped, targets, as_json):
    """Build a guest bzImage out of tree from tinyconfig + kconfig fragments.

    \b
    Fails when a requested option does not survive olddefconfig (listing
    them). Writes OUT/build.log and OUT/metadata.json (base commit, patches,
    config hash, compiler, duration, reproducer).
    \b
    Example:
      vnuma-sched build --tree /var/cache/vnuma_sched/trees/linux-source-6.12
    """
    from pathlib import Path

    from vnuma_sched import kbuild
    from vnuma_sched.ktree import tree_version
    from vnuma_sched.render import build_text
    from vnuma_sched.runner import Runner

    settings = _merge_json(settings, as_json)
    tree = Path(tree).resolve()
    tree_version(tree)
    frags = [Path(f).resolve() for f in fragments] or [default_fragment()]
    for f in frags:
        if not f.is_file():
            raise BadInput(f"--fragment {f}: no such file")
    out = Path(out or os.path.join(cache_dir(), "builds", tree.name)).resolve()
    req = kbuild.BuildRequest(tree, out, frags, jobs, allow_dropped,
                              tuple(targets) or ("bzImage",))
    result = kbuild.build(req, Runner(), _progress(settings))
    emit(settings, result.metadata or {"steps": [s.__dict__ for s in result.steps]},
         build_text(result))


def default_fragment():
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "kconfig" / "vnuma-guest.config"
    if not here.is_file():
        raise BadInput("kconfig/vnuma-guest.config not found: give --fragment")
    return here


@main.group()
def vm():
    """Boot kernels as vNUMA guests (virtme-ng, host root filesystem)."""


@vm.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--kernel", "image", required=True, type=click.Path(),
              help="bzImage, or a build directory holding arch/x86/boot/bzImage.")
@click.option("--topology", "spec", default="2x2", show_default=True,
              help="NxM (N nodes of M CPUs, distance 21), 'host', or a topology JSON file.")
@click.option("--mem", default="2G", show_default=True, help="Guest memory, split across nodes.")
@click.option("--append", "append", multiple=True, help="Extra kernel command line (repeatable).")
@click.option("--timeout", type=click.IntRange(1, 86400), default=300, show_default=True,
              help="Seconds before QEMU and every child are killed.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="auto tries KVM once (cached) and falls back to TCG.")
@click.argument("command", nargs=-1, required=True)
@json_option
@click.pass_obj
def vm_run(settings, image, spec, mem, append, timeout, accel, command, as_json):
    """Boot KERNEL as a vNUMA guest, run COMMAND in it, return its exit code.

    \b
    Example:
      vnuma-sched vm run --kernel /var/cache/vnuma_sched/builds/linux-source-6.12 \\
          --topology 2x2 -- cat /sys/devices/system/node/node1/cpulist
    """
    from pathlib import Path

    from vnuma_sched import vm as vmod
    from vnuma_sched.kbuild import IMAGE
    from vnuma_sched.runner import Runner
    from vnuma_sched.topology import read_topology

    settings = _merge_json(settings, as_json)
    kernel_image = Path(image)
    if kernel_image.is_dir():
        kernel_image = kernel_image / IMAGE
    if not kernel_image.is_file():
        raise BadInput(f"--kernel {image}: no kernel image there")
    host = read_topology(settings.sysroot()) if spec == "host" else None
    topo = vmod.parse_topology(spec, vmod.parse_size_mb(mem), host)
    runner = Runner()
    accel, why = vmod.choose_accel(accel, kernel_image, runner,
                                   os.path.join(cache_dir(), "accel.json"))
    _progress(settings)(f"booting {kernel_image} ({topo.ncpus} vCPUs, {len(topo.nodes)} "
                        f"nodes, {accel}: {why})")
    res = vmod.run(kernel_image, topo, list(command), runner, accel, timeout, append)
    if settings.json:
        emit(settings, {"status": res.status, "exit_code": res.exit_code, "accel": res.accel,
                        "seconds": round(res.seconds, 1), "stdout": res.stdout,
                        "stderr": res.stderr, "panic": res.panic,
                        "console_tail": res.console_tail}, "")
    else:
        click.echo(res.stdout, nl=False)
        click.echo(res.stderr, nl=False, err=True)
    if res.status != "exited":
        detail = res.panic or "\n  ".join(res.console_tail[-8:])
        click.echo(f"vnuma-sched: guest {res.status} after {res.seconds:.0f} s: {detail}",
                   err=True)
    settings_exit(res.exit_code)


@main.group()
def patches():
    """The project's guest-kernel patch series (list, check, apply)."""


@patches.command("list")
@click.option("--version", "series_version", default=None,
              help="Only this series (6.1 or 6.12).")
@json_option
@click.pass_obj
def patches_list(settings, series_version, as_json):
    """Each patch: number, subject, problem it addresses, gates, versions.

    \b
    Example:
      vnuma-sched patches list --version 6.12
    """
    from vnuma_sched import patches as P
    from vnuma_sched.render import patches_text

    settings = _merge_json(settings, as_json)
    all_series = [P.load_series(series_version)] if series_version else P.all_series()
    doc = {"series": [{"version": s.version, "base_commit": s.base_commit,
                       "patches": [p.to_dict() for p in s.patches]} for s in all_series]}
    emit(settings, doc, patches_text(all_series))


def _tree_series(tree):
    from vnuma_sched import patches as P
    from vnuma_sched.ktree import tree_version

    return P.load_series(tree_version(tree).series)


@patches.command("check")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False))
@json_option
@click.pass_obj
def patches_check(settings, tree, as_json):
    """Per patch: clean, already-applied or conflict (file and hunk). Never touches TREE.

    \b
    The series is picked from the version in TREE's Makefile. Exit code 1 if
    any patch conflicts.
    \b
    Example:
      vnuma-sched patches check --tree /var/cache/vnuma_sched/trees/linux-source-6.12
    """
    from vnuma_sched import patches as P
    from vnuma_sched.render import status_text
    from vnuma_sched.runner import Runner

    settings = _merge_json(settings, as_json)
    series = _tree_series(tree)
    statuses = P.check(tree, series, Runner())
    emit(settings, {"version": series.version, "tree": str(tree),
                    "patches": [s.to_dict() for s in statuses]}, status_text(statuses))
    if any(s.state == P.CONFLICT for s in statuses):
        settings_exit(1)


@patches.command("apply")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--branch", default="vnuma-sched", show_default=True,
              help="New branch created from the current HEAD.")
@click.pass_obj
def patches_apply(settings, tree, branch):
    """Apply the series to TREE on a new branch with git am, patch by patch.

    \b
    Refuses a dirty tree or an unfinished git operation. Already-applied
    patches are skipped. On a conflict nothing is changed: same HEAD, same
    branch, clean tree.
    \b
    Example:
      vnuma-sched patches apply --tree ~/linux --branch vnuma
    """
    from vnuma_sched import patches as P
    from vnuma_sched.runner import Runner

    series = _tree_series(tree)
    P.apply(tree, series, branch, Runner(), _progress(settings))
    click.echo(f"{tree}: branch {branch} carries the {series.version} series")


@patches.command("verify")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False),
              help="A tree whose HEAD carries the series (see 'patches apply').")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="Base fragments [default: vnuma-guest.config + series-test.config].")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Worktree and build dirs [default: $VNUMA_SCHED_CACHE/verify/<version>].")
@click.option("--w1/--no-w1", default=True, show_default=True,
              help="Also compare W=1 warnings of the touched files with the base tree.")
@json_option
@click.pass_obj
def patches_verify(settings, tree, fragments, workdir, w1, as_json):
    """Build every patch of the series in every variant (bisectability).

    \b
    For each patch in order and each variant in kconfig/variants (plus the
    default), compile the objects the series has touched so far. Long: run it
    when the series changes, not on every commit.
    \b
    Example:
      vnuma-sched patches verify --tree /var/cache/vnuma_sched/series/linux-6.12
    """
    from pathlib import Path

    from vnuma_sched import verify as V
    from vnuma_sched.render import matrix_text
    from vnuma_sched.runner import Runner

    settings = _merge_json(settings, as_json)
    series = _tree_series(tree)
    frags = [Path(f).resolve() for f in fragments] or [
        default_fragment(), default_fragment().parent / "series-test.config"]
    work = Path(workdir or os.path.join(cache_dir(), "verify", series.version))
    runner = Runner()
    cells = V.run_matrix(Path(tree).resolve(), series, frags, work, runner,
                         _progress(settings))
    new = V.w1_new_warnings(Path(tree).resolve(), series, frags[:1], work, runner,
                            _progress(settings)) if w1 else []
    emit(settings, {"version": series.version, "cells": [c.__dict__ for c in cells],
                    "w1_new_warnings": [list(w) for w in new]}, matrix_text(cells, new))
    if any(c.status == "FAIL" for c in cells) or new:
        settings_exit(1)


def gates_command():
    """The default guest command of 'pipeline': topology and the series' gates."""
    exe = os.path.join(os.path.dirname(sys.executable), "vnuma-sched")
    return ["sh", "-c", f"{exe} topology && echo && grep -H . "
            "/proc/sys/kernel/sched_numa_idle_damp /proc/sys/kernel/sched_numa_newidle_min_ns "
            "/proc/sys/kernel/sched_steal_idle_nocap /sys/module/kvm_guest/parameters/* "
            "/sys/module/vnuma_debug/parameters/*"]


@main.command()
@click.option("--version", "series_version", default="6.12", show_default=True)
@click.option("--topology", "spec", default="2x2", show_default=True)
@click.option("--mem", default="2G", show_default=True)
@click.option("--timeout", type=click.IntRange(1, 86400), default=300, show_default=True)
@click.argument("command", nargs=-1)
@click.pass_obj
def pipeline(settings, series_version, spec, mem, timeout, command):
    """Fetch, apply the series, build the patched guest and boot it (the main job).

    \b
    Reuses the fetched tree, the patched worktree and the build when nothing
    changed. Without COMMAND the guest prints its topology and the series'
    gates.
    \b
    Example:
      vnuma-sched pipeline --version 6.12 --topology 2x2
    """
    from vnuma_sched import pipeline as pl, vm as vmod
    from vnuma_sched.render import pipeline_text
    from vnuma_sched.runner import Runner

    res = pl.run(series_version, cache_dir(), spec, vmod.parse_size_mb(mem),
                 list(command) or gates_command(), Runner(), _progress(settings),
                 os.geteuid(), timeout=timeout)
    click.echo(pipeline_text(res))
    settings_exit(res.vm.exit_code)


@main.group()
@click.option("--profiles", "profiles_dir", type=click.Path(file_okay=False), default=None,
              help="Extra profile directory (searched before ~/.config and the shipped ones).")
@click.pass_obj
def tune(settings, profiles_dir):
    """Scheduler tunables for kernels you cannot rebuild (profiles, plan, apply, revert).

    \b
    Examples:
      vnuma-sched tune plan vnuma-guest-dedicated
      sudo vnuma-sched tune apply vnuma-guest-dedicated && sudo vnuma-sched tune revert
    """
    settings.profiles_dir = profiles_dir


def _profile_dirs(settings):
    from vnuma_sched.tunables import profile as prof

    home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return prof.search_path(getattr(settings, "profiles_dir", None), home)


def _load_profile(settings, name):
    from vnuma_sched.tunables import profile as prof

    return prof.load(name, _profile_dirs(settings))


def _need_root(settings, what):
    from vnuma_sched.errors import NeedsRoot

    if settings.sysroot().is_live and os.geteuid() != 0:
        raise NeedsRoot(what)


@tune.command("list")
@json_option
@click.pass_obj
def tune_list(settings, as_json):
    """Profiles that can be applied, with their summaries."""
    from vnuma_sched.render import table
    from vnuma_sched.tunables import profile as prof

    settings = _merge_json(settings, as_json)
    found = prof.available(_profile_dirs(settings))
    items = [{"name": n, "summary": prof.load(n, _profile_dirs(settings)).summary,
              "file": str(p)} for n, p in found.items()]
    emit(settings, {"profiles": items},
         table([[i["name"], i["summary"]] for i in items], ["profile", "summary"],
               widths=[None, 56]))


@tune.command("knobs")
@json_option
@click.pass_obj
def tune_knobs(settings, as_json):
    """Every knob a profile may name, with its type and what it does."""
    from vnuma_sched.render import table
    from vnuma_sched.tunables.knobs import REGISTRY

    settings = _merge_json(settings, as_json)
    rows = [{"knob": k.name, "kind": k.kind, "type": k.vtype, "series_only": k.patch_gate,
             "decays": k.decays, "doc": k.doc} for k in REGISTRY.values()]
    emit(settings, {"knobs": rows}, table(
        [[r["knob"], r["kind"], r["type"], r["doc"]] for r in rows],
        ["knob", "kind", "type", "notes"], widths=[34, None, None, 30]))


@tune.command("show")
@click.argument("profile")
@json_option
@click.pass_obj
def tune_show(settings, profile, as_json):
    """The profile's settings with includes merged, and where each comes from."""
    from vnuma_sched.render import table

    settings = _merge_json(settings, as_json)
    prof = _load_profile(settings, profile)
    emit(settings, {"name": prof.name, "summary": prof.summary, "includes": prof.includes,
                    "settings": prof.settings},
         f"{prof.name}: {prof.summary}\n" + table(
             [[k, v, prof.origin[k]] for k, v in prof.settings.items()],
             ["knob", "value", "from"], widths=[None, None, 40]))


def _plan_rows(settings, profile):
    from vnuma_sched.tunables import engine

    prof = _load_profile(settings, profile)
    return prof, engine.plan(prof, settings.sysroot())


@tune.command("plan")
@click.argument("profile")
@json_option
@click.pass_obj
def tune_plan(settings, profile, as_json):
    """What apply would do, knob by knob (reads only)."""
    from vnuma_sched.render import plan_text

    settings = _merge_json(settings, as_json)
    prof, rows = _plan_rows(settings, profile)
    emit(settings, {"profile": prof.name, "plan": [r.to_dict() for r in rows]},
         plan_text(rows))


@tune.command("apply")
@click.argument("profile")
@click.option("--replace", is_flag=True, help="Revert the applied profile first.")
@click.option("--persist", is_flag=True,
              help="Also write /etc/sysctl.d and /etc/modprobe.d files (removed by revert).")
@click.option("--persist-boot", is_flag=True,
              help="Also write the boot parameters to a GRUB drop-in (removed by revert).")
@click.pass_obj
def tune_apply(settings, profile, replace, persist, persist_boot):
    """Apply PROFILE: journal first, restore everything if any write fails."""
    from vnuma_sched.tunables import engine

    _need_root(settings, "writing scheduler tunables")
    prof, rows = _plan_rows(settings, profile)
    n = engine.apply(rows, settings.sysroot(), prof, replace, persist, persist_boot)
    skipped = [r for r in rows if r.action in (engine.UNSUPPORTED, engine.BOOT_ONLY)]
    click.echo(f"{prof.name}: {n} value(s) written, {len(skipped)} knob(s) not applicable "
               "here (see 'tune plan')")


@tune.command("revert")
@click.pass_obj
def tune_revert(settings):
    """Restore every value the applied profile changed, newest first."""
    from vnuma_sched.tunables import engine

    _need_root(settings, "restoring scheduler tunables")
    doc = engine.revert(settings.sysroot())
    click.echo(f"{doc['profile']}: {len(doc['entries'])} value(s) restored")


@tune.command("verify")
@click.argument("profile", required=False)
@json_option
@click.pass_obj
def tune_verify(settings, profile, as_json):
    """OK / DIFF / MISSING per knob (default: the applied profile). Exit 1 on DIFF."""
    from vnuma_sched.render import table
    from vnuma_sched.tunables import engine, journal

    settings = _merge_json(settings, as_json)
    if profile is None:
        doc = journal.load(settings.sysroot())
        if doc is None:
            raise BadInput("no profile applied: name one to verify")
        profile = doc["profile"]
    prof = _load_profile(settings, profile)
    results = engine.verify(prof, settings.sysroot())
    emit(settings, {"profile": prof.name,
                    "knobs": [{**r.to_dict(), "status": st} for r, st in results]},
         table([[r.knob, r.current, r.target, st] for r, st in results],
               ["knob", "current", "target", "status"]))
    if any(st == "DIFF" for _, st in results):
        settings_exit(1)


@tune.command("status")
@json_option
@click.pass_obj
def tune_status(settings, as_json):
    """The applied profile (from the journal) and what it changed."""
    from vnuma_sched.render import table
    from vnuma_sched.tunables import journal

    settings = _merge_json(settings, as_json)
    doc = journal.load(settings.sysroot())
    if doc is None:
        emit(settings, {"applied": None}, "no profile applied")
        return
    emit(settings, {"applied": doc}, f"applied: {doc['profile']} on {doc['kernel']} "
         f"at {doc['created']}\n" + table(
             [[e["knob"], e["path"], e["old"], e["new"], e["state"]] for e in doc["entries"]],
             ["knob", "path", "was", "now", "state"], widths=[None, 34, None, None, None]))


@tune.command("export")
@click.argument("profile")
@click.option("--format", "fmt", type=click.Choice(["tuned"]), default="tuned",
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Directory for the tuned profile (tuned.conf inside).")
@click.pass_obj
def tune_export(settings, profile, fmt, out):
    """Write PROFILE as a tuned profile directory, for machines that run tuned."""
    from vnuma_sched.tunables import export

    prof = _load_profile(settings, profile)
    path = export.write_tuned(prof, settings.sysroot(), out)
    click.echo(str(path))


@tune.command("hold")
@click.argument("profile")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True)
@click.option("--count", type=click.IntRange(1), default=None,
              help="Stop after this many rounds [default: until Ctrl-C].")
@click.pass_obj
def tune_hold(settings, profile, interval, count):
    """Re-assert PROFILE's knobs that the kernel decays (max_newidle_lb_cost)."""
    from vnuma_sched.tunables import engine

    _need_root(settings, "writing scheduler tunables")
    prof = _load_profile(settings, profile)
    rounds = engine.hold(prof, settings.sysroot(), interval, count, _progress(settings))
    click.echo(f"{prof.name}: held for {rounds} round(s)")


def _probe_session(settings, names, with_events=False):
    from vnuma_sched.probes.session import Session
    from vnuma_sched.topology import read_topology

    sysroot = settings.sysroot()
    return Session(names, sysroot, os.geteuid(), read_topology(sysroot), with_events,
                   _progress(settings))


@main.command("probes")
@json_option
@click.pass_obj
def probes_cmd(settings, as_json):
    """Each probe and whether this kernel can run it, and why not.

    \b
    Example:
      sudo vnuma-sched probes
    """
    from vnuma_sched.probes import catalog
    from vnuma_sched.render import table

    settings = _merge_json(settings, as_json)
    facts = catalog.KernelFacts(settings.sysroot(), os.geteuid())
    rows = []
    for probe in catalog.PROBES.values():
        a = catalog.availability(probe, facts)
        rows.append({"probe": probe.name, "side": probe.side, "available": a.ok,
                     "reason": a.reason, "notes": a.notes, "doc": probe.doc})
    emit(settings, {"probes": rows}, table(
        [[r["probe"], r["side"], "yes" if r["available"] else "no",
          r["reason"] or "; ".join(r["notes"]) or r["doc"]] for r in rows],
        ["probe", "side", "ok", "detail"], widths=[None, None, None, 56]))


def _split_top_args(args):
    """PROBE... [interval [count]] like bcc tools."""
    names, nums = [], []
    for a in args:
        (nums if a.replace(".", "", 1).isdigit() else names).append(a)
    if len(nums) > 2:
        raise BadInput("expected at most [interval [count]] after the probe names")
    interval = float(nums[0]) if nums else 1.0
    count = int(float(nums[1])) if len(nums) > 1 else None
    if interval <= 0 or (count is not None and count < 1):
        raise BadInput("interval must be > 0 and count >= 1")
    return names, interval, count


@main.command("top")
@click.argument("args", nargs=-1)
@click.option("-C", "per_cpu", is_flag=True, help="One row per CPU instead of per node.")
@json_option
@click.pass_obj
def top_cmd(settings, args, per_cpu, as_json):
    """Live counters per node (or CPU): [PROBE...] [interval [count]].

    \b
    Ctrl-C prints the last interval and detaches. --json prints one JSON
    object per interval.
    \b
    Examples:
      sudo vnuma-sched top                 all probes, every second
      sudo vnuma-sched top migrate ipi 2 5
    """
    import json as _json
    import time

    from vnuma_sched.probes.recording import Sampler
    from vnuma_sched.render import top_text

    settings = _merge_json(settings, as_json)
    names, interval, count = _split_top_args(args)
    _need_root(settings, "loading BPF probes")
    session = _probe_session(settings, names).start()
    for name, a in session.status.items():
        if not a.ok:
            _progress(settings)(f"{name}: unsupported: {a.reason}")
    if not session.running():
        raise BadInput("no probe can run here (see 'vnuma-sched probes')")
    sampler, n = Sampler(session), 0
    with _sigterm_as_interrupt():
        try:
            while count is None or n < count:
                time.sleep(interval)
                rec = sampler.interval()
                n += 1
                click.echo(_json.dumps(rec) if settings.json else
                           top_text(rec, session.topology, per_cpu) + "\n")
        except KeyboardInterrupt:
            rec = sampler.interval()
            click.echo(_json.dumps(rec) if settings.json else
                       top_text(rec, session.topology, per_cpu))
        finally:
            session.close()


class _sigterm_as_interrupt:
    """SIGTERM detaches like Ctrl-C."""

    def __enter__(self):
        import signal

        def raise_interrupt(signum, frame):
            raise KeyboardInterrupt

        self.old = signal.signal(signal.SIGTERM, raise_interrupt)
        return self

    def __exit__(self, *exc):
        import signal

        signal.signal(signal.SIGTERM, self.old)
        return False


@main.command("record", context_settings={"allow_interspersed_args": False})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--duration", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds to record when no command is given.")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True)
@click.option("--events", "with_events", is_flag=True,
              help="Also record every migration as an event line.")
@click.argument("args", nargs=-1)
@click.pass_obj
def record_cmd(settings, output, duration, interval, with_events, args):
    """Record probe counters to JSON lines: [PROBE...] [-- CMD...].

    \b
    With CMD, records exactly while CMD runs and exits with CMD's exit code.
    \b
    Examples:
      sudo vnuma-sched record -o run.jsonl --duration 30
      sudo vnuma-sched record -o run.jsonl migrate ipi -- ./omp-barrier
    """
    from vnuma_sched.probes import recorder

    names, command = _split_record_args(args)
    _need_root(settings, "loading BPF probes")
    session = _probe_session(settings, names, with_events).start()
    with _sigterm_as_interrupt():
        code = recorder.record(session, settings.sysroot(), output, interval, duration,
                               command, _progress(settings))
    settings_exit(code)


def _split_record_args(args):
    """Leading probe names, then the command (click has already taken the '--')."""
    from vnuma_sched.probes.catalog import PROBES

    args = list(args)
    i = 0
    while i < len(args) and args[i] in PROBES:
        i += 1
    command = args[i:]
    if command[:1] == ["--"]:  # kept by click once a positional argument was seen
        command = command[1:]
    return args[:i], command


@main.command("report")
@click.argument("recording", type=click.Path(dir_okay=False))
@json_option
@click.pass_obj
def report_cmd(settings, recording, as_json):
    """Totals, rates, migration matrices by cause and idle histograms of a recording.

    \b
    Example:
      vnuma-sched report run.jsonl
    """
    from vnuma_sched.probes import recording as rec, report
    from vnuma_sched.render import report_text

    settings = _merge_json(settings, as_json)
    doc = report.summarize(*rec.read(recording))
    emit(settings, doc, report_text(doc))


def settings_exit(code):
    ctx = click.get_current_context()
    ctx.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
