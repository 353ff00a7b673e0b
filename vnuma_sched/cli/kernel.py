"""Commands for kernel trees, patches, builds and guests."""

import os
import shlex
import sys
from pathlib import Path

import click

from vnuma_sched.cli.common import (
    cache_dir,
    default_fragment,
    emit,
    json_option,
    merge_json,
    pid_alive,
    pin_option,
    progress,
    settings_exit,
)
from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import guests, kbuild, layout
from vnuma_sched.kernel import libvirt as lv
from vnuma_sched.kernel import patches as P
from vnuma_sched.kernel import pipeline as pl
from vnuma_sched.kernel import verify as V
from vnuma_sched.kernel import vm as vmod
from vnuma_sched.kernel.ktree import fetch_debian, fetch_git, tree_version
from vnuma_sched.render import (
    build_text,
    guest_list_text,
    matrix_text,
    patches_text,
    pipeline_text,
    status_text,
)
from vnuma_sched.runner import Runner
from vnuma_sched.system import facts
from vnuma_sched.system.topology import read_topology


@click.group()
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

    dest = os.path.abspath(dest or os.path.join(cache_dir(), "trees"))
    if git_source:
        tree = fetch_git(git_source, ref, dest, Runner(), progress(settings))
    else:
        tree = fetch_debian(series, dest, Runner(), progress(settings), os.geteuid())
    click.echo(str(tree))


@click.command()
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False),
              help="Kernel source tree (a git repository).")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="Kconfig fragment (repeatable) [default: kconfig/vnuma-guest.config].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Build directory (O=) [default: $VNUMA_SCHED_CACHE/builds/<tree>].")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=min(os.cpu_count() or 1, 256),
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

    settings = merge_json(settings, as_json)
    tree = Path(tree).resolve()
    tree_version(tree)
    frags = [Path(f).resolve() for f in fragments] or [default_fragment()]
    for f in frags:
        if not f.is_file():
            raise BadInput(f"--fragment {f}: no such file")
    out = Path(out or os.path.join(cache_dir(), "builds", tree.name)).resolve()
    req = kbuild.BuildRequest(tree, out, frags, jobs, allow_dropped,
                              tuple(targets) or ("bzImage",))
    result = kbuild.build(req, Runner(), progress(settings))
    emit(settings, result.metadata or {"steps": [s.__dict__ for s in result.steps]},
         build_text(result))


mem_hotplug_option = click.option(
    "--mem-hotplug", metavar="SIZE",
    help="Resizable memory: per guest node, the most a virtio-mem device can plug on top "
         "of its boot memory (a multiple of 2M; placed guests only).")


def _hotplug_mb(text):
    return vmod.parse_size_mb(text, "--mem-hotplug") if text else 0


@click.group()
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
@pin_option
@click.option("--agent-socket", type=click.Path(), metavar="PATH",
              help="Run qemu-ga in the guest on a virtio-serial port that QEMU serves on "
                   "this unix socket (the channel of 'share host').")
@click.option("--qmp-socket", type=click.Path(), metavar="PATH",
              help="Where a placed guest's QEMU serves QMP (default: a private path).")
@click.option("--name", metavar="NAME",
              help="Record the guest while it runs (vm list), with a guest agent and, "
                   "when placed, a QMP socket ('share host start --guest NAME').")
@mem_hotplug_option
@click.argument("command", nargs=-1, required=True)
@json_option
@click.pass_obj
def vm_run(settings, image, spec, mem, append, timeout, accel, pin, agent_socket, qmp_socket,
           mem_hotplug, name, command, as_json):
    """Boot KERNEL as a vNUMA guest, run COMMAND in it, return its exit code.

    \b
    Full vNUMA: with '--topology host' (or a topology file naming host_cpus and
    host_node per node) every vCPU thread is pinned to its host CPU before the
    guest runs and each guest node's memory is bound to its host node; --pin
    places an NxM grid on the host's CPUs in order, --no-pin places nothing.
    --mem-hotplug gives a placed guest one virtio-mem device per node (QMP
    id vnuma-vmem<N>, nothing plugged at boot) that 'share host set --mem'
    resizes; the guest kernel needs CONFIG_VIRTIO_MEM, and boots with
    memhp_default_state=online_movable so plugged memory can be unplugged again.

    \b
    Examples:
      vnuma-sched vm run --kernel /var/cache/vnuma_sched/builds/linux-source-6.12 \\
          --topology 2x2 -- cat /sys/devices/system/node/node1/cpulist
      vnuma-sched vm run --kernel K --topology host --json -- nproc
      vnuma-sched vm run --kernel K --topology host --agent-socket /tmp/g1-qga.sock \\
          --qmp-socket /tmp/g1-qmp.sock -- sleep 3600
      vnuma-sched vm run --kernel K --topology host --name g1 -- sleep 3600
      vnuma-sched vm run --kernel K --topology host --mem 4G --mem-hotplug 2G \\
          --agent-socket /tmp/g1-qga.sock --qmp-socket /tmp/g1-qmp.sock -- sleep 3600
    """

    settings = merge_json(settings, as_json)
    hotplug_mb = _hotplug_mb(mem_hotplug)
    kernel_image = vmod.kernel_image(image)
    host = read_topology(settings.sysroot())
    config = vmod.image_config(kernel_image)
    limits = vmod.guest_limits([config] if config else [])
    topo = vmod.parse_topology(spec, vmod.parse_size_mb(mem), host, limits, pin)
    runner = Runner()
    accel, why = vmod.choose_accel(accel, kernel_image, runner,
                                   os.path.join(cache_dir(), "accel.json"))
    sysroot = settings.sysroot()
    if name is not None:
        guests.check_name(name)
        agent_socket = agent_socket or guests.socket_path(sysroot, name, "qga")
        if topo.pinned:
            qmp_socket = qmp_socket or guests.socket_path(sysroot, name, "qmp")
        guests.add(sysroot, guests.Guest(name, os.getpid(), agent_socket, qmp_socket,
                                         str(kernel_image), topo.summary()), pid_alive)
    progress(settings)(f"booting {kernel_image} ({topo.summary()}, {accel}: {why})")
    try:
        res = vmod.run(kernel_image, topo, list(command), runner, accel, timeout, append,
                       agent_socket=agent_socket, qmp_socket=qmp_socket, hotplug_mb=hotplug_mb)
    finally:
        if name is not None:
            guests.remove(sysroot, name, os.getpid())
    if settings.json:
        emit(settings, {"status": res.status, "exit_code": res.exit_code, "accel": res.accel,
                        "seconds": round(res.seconds, 1), "stdout": res.stdout,
                        "stderr": res.stderr, "panic": res.panic,
                        "placement": res.placement, "console_tail": res.console_tail}, "")
    else:
        click.echo(res.stdout, nl=False)
        click.echo(res.stderr, nl=False, err=True)
    if res.status != "exited":
        detail = res.panic or "\n  ".join(res.console_tail[-8:])
        click.echo(f"vnuma-sched: guest {res.status} after {res.seconds:.0f} s: {detail}",
                   err=True)
    settings_exit(res.exit_code)


@vm.command("list")
@json_option
@click.pass_obj
def vm_list(settings, as_json):
    """The guests 'vm run --name' is running, with their sockets.

    \b
    A guest whose 'vm run' was killed is listed as stale.
    Examples:
      vnuma-sched vm list
      vnuma-sched vm list --json
    """
    settings = merge_json(settings, as_json)
    rows = [{**g.to_dict(), "running": up}
            for g, up in guests.listing(settings.sysroot(), pid_alive)]
    emit(settings, {"guests": rows}, guest_list_text(rows))


@vm.command("libvirt-xml")
@click.option("--topology", "spec", required=True,
              help="'host', NxM (N nodes of M CPUs, distance 21), or a topology JSON file.")
@click.option("--mem", default="2G", show_default=True, help="Guest memory, split across nodes.")
@click.option("--name", default=vmod.GUEST_NAME, show_default=True, help="The domain's name.")
@pin_option
@mem_hotplug_option
@json_option
@click.pass_obj
def vm_libvirt_xml(settings, spec, mem, name, pin, mem_hotplug, as_json):
    """Print the layout 'vm run' boots as a libvirt domain XML document.

    \b
    A minimal <domain type='kvm'> (it validates with virt-xml-validate) with
    <cpu><numa>: one cell per guest node, its vCPUs, memory and distances.
    Placed (Full vNUMA, as with 'vm run'): <cputune> pins each vCPU to its
    host CPU, <numatune> binds each guest node's memory to its host node
    (mode strict). --mem-hotplug adds <maxMemory> and one
    <memory model='virtio-mem'> per guest node (its host node in <nodemask>,
    nothing requested), as 'vm run --mem-hotplug' does. Copy those parts into
    your own domain. With --json: {"xml": ..., "placement": ...} (the
    placement 'vm run' records).
    \b
    Examples:
      vnuma-sched vm libvirt-xml --topology host --mem 64G --name db1 > db1.xml
      vnuma-sched vm libvirt-xml --topology host --mem 64G --mem-hotplug 16G
      vnuma-sched vm libvirt-xml --topology 2x4 --pin
      vnuma-sched vm libvirt-xml --topology layout.json --json
    """

    settings = merge_json(settings, as_json)
    hotplug_mb = _hotplug_mb(mem_hotplug)
    host = read_topology(settings.sysroot())
    topo = vmod.parse_topology(spec, vmod.parse_size_mb(mem), host, pin=pin)
    xml = lv.to_xml(topo, name, hotplug_mb)
    emit(settings, {"xml": xml, "placement": layout.record(topo)}, xml.rstrip("\n"))


@click.group()
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
    Per version: the cover letter's subject, the series, then the debug
    series (test aids, applied on top only with --debug; never for bare metal).
    \b
    Example:
      vnuma-sched patches list --version 6.12
    """

    settings = merge_json(settings, as_json)
    all_series = ([P.load_series(series_version, debug=P.has_debug(series_version))]
                  if series_version else P.all_series(debug=True))
    covers = {s.version: P.subject(s.cover, prefix=True) if s.cover else None
              for s in all_series}
    doc = {"series": [{"version": s.version, "base_commit": s.base_commit,
                       "cover": str(s.cover) if s.cover else None,
                       "cover_subject": covers[s.version],
                       "patches": [p.to_dict() for p in s.patches]} for s in all_series]}
    emit(settings, doc, patches_text(all_series, covers))


def _tree_series(tree, debug):
    return P.load_series(tree_version(tree).series, debug=debug)


DEBUG_HELP = ("Also the debug series (test aids, never for bare metal) on top of the "
              "series.")
debug_option = click.option("--debug", is_flag=True, help=DEBUG_HELP)


@patches.command("check")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False))
@debug_option
@json_option
@click.pass_obj
def patches_check(settings, tree, debug, as_json):
    """Per patch: clean, already-applied or conflict (file and hunk). Never touches TREE.

    \b
    The series is picked from the version in TREE's Makefile. A patch that
    would create a file the work tree already has is a conflict naming it.
    Exit code 1 if any patch conflicts or TREE has uncommitted changes.
    \b
    Example:
      vnuma-sched patches check --tree /var/cache/vnuma_sched/trees/linux-source-6.12
    """

    settings = merge_json(settings, as_json)
    series = _tree_series(tree, debug)
    runner = Runner()
    statuses = P.check(tree, series, runner)
    dirty = P.dirty_files(tree, runner)
    text = status_text(statuses)
    if dirty:
        text += (f"\ntree has uncommitted changes ({len(dirty)} files: {', '.join(dirty[:3])}"
                 f"{', ...' if len(dirty) > 3 else ''}); the statuses are for HEAD and "
                 "'patches apply' refuses the tree until they are committed or stashed")
    emit(settings, {"version": series.version, "debug": series.debug, "tree": str(tree),
                    "dirty": dirty,
                    "patches": [s.to_dict() for s in statuses]}, text)
    if dirty or any(s.state == P.CONFLICT for s in statuses):
        settings_exit(1)


@patches.command("apply")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--branch", default="vnuma-sched", show_default=True,
              help="New branch created from the current HEAD.")
@debug_option
@click.pass_obj
def patches_apply(settings, tree, branch, debug):
    """Apply the series to TREE on a new branch with git am, patch by patch.

    \b
    Refuses a dirty tree or an unfinished git operation. Already-applied
    patches are skipped. On a conflict nothing is changed: same HEAD, same
    branch, clean tree.
    \b
    Examples:
      vnuma-sched patches apply --tree ~/linux --branch vnuma
      vnuma-sched patches apply --tree ~/linux --branch vnuma-test --debug
    """

    series = _tree_series(tree, debug)
    P.apply(tree, series, branch, Runner(), progress(settings))
    click.echo(f"{tree}: branch {branch} carries the {series.version} series"
               + (" and its debug series" if series.debug else ""))


@patches.command("verify")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False),
              help="A tree whose HEAD carries the series (see 'patches apply').")
@click.option("--fragment", "fragments", multiple=True, type=click.Path(dir_okay=False),
              help="Base fragments [default: vnuma-guest.config + series-test.config].")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Worktree and build dirs [default: $VNUMA_SCHED_CACHE/verify/<version>].")
@click.option("--w1/--no-w1", default=True, show_default=True,
              help="Also compare W=1 warnings of the touched files with the base tree.")
@click.option("--debug/--no-debug", default=True, show_default=True,
              help="The series plus the debug series on top (the default fragments' "
                   "series-test.config enables the debug option), or the series alone.")
@json_option
@click.pass_obj
def patches_verify(settings, tree, fragments, workdir, w1, debug, as_json):
    """Build every patch of the series in every variant (bisectability).

    \b
    For each patch in order and each variant in kconfig/variants (plus the
    default), compile the objects the series has touched so far. Long: run it
    when the series changes, not on every commit. By default TREE's HEAD must
    end with the series and the debug series ('patches apply --debug'), since
    series-test.config enables the debug option; --no-debug for the series alone.
    \b
    Example:
      vnuma-sched patches verify --tree /var/cache/vnuma_sched/series/linux-6.12-debug
    """

    settings = merge_json(settings, as_json)
    series = _tree_series(tree, debug)
    frags = [Path(f).resolve() for f in fragments] or [
        default_fragment(), default_fragment().parent / "series-test.config"]
    work = Path(workdir or os.path.join(cache_dir(), "verify", series.version))
    runner = Runner()
    cells = V.run_matrix(Path(tree).resolve(), series, frags, work, runner,
                         progress(settings))
    new = V.w1_new_warnings(Path(tree).resolve(), series, frags[:1], work, runner,
                            progress(settings)) if w1 else []
    emit(settings, {"version": series.version, "debug": series.debug,
                    "cells": [c.__dict__ for c in cells],
                    "w1_new_warnings": [list(w) for w in new]}, matrix_text(cells, new))
    if any(c.status == "FAIL" for c in cells) or new:
        settings_exit(1)


def gates_command():
    """The default guest command of 'pipeline': topology and the series' switches (module
    parameters, and its scheduler features as debugfs lists them)."""
    exe = os.path.join(os.path.dirname(sys.executable), "vnuma-sched")
    params = sorted({os.path.dirname(p) for p in facts.PATCH_GATES.values()
                     if p.startswith("/sys/module/")} | {facts.DEBUG_PARAMS_DIR})
    features = "|".join(f"(NO_)?{g[len(facts.FEATURE_GATE):]}" for g in facts.PATCH_GATES
                        if g.startswith(facts.FEATURE_GATE))
    return ["sh", "-c", f"{shlex.quote(exe)} topology && echo && grep -H . "
            + " ".join(f"{d}/*" for d in params)
            + f" && grep -Hwo -E {shlex.quote(features)} {facts.SCHED_FEATURES}"]


@click.command()
@click.option("--version", "series_version", default="6.12", show_default=True)
@click.option("--topology", "spec", default="2x2", show_default=True)
@click.option("--mem", default="2G", show_default=True)
@click.option("--timeout", type=click.IntRange(1, 86400), default=300, show_default=True)
@pin_option
@click.argument("command", nargs=-1)
@click.pass_obj
def pipeline(settings, series_version, spec, mem, timeout, pin, command):
    """Fetch, apply the series, build the patched guest and boot it (the main job).

    \b
    The debug series goes on top (series-test.config enables its test aid),
    in a worktree of its own. Reuses the fetched tree, the patched worktree and
    the build when nothing changed. Without COMMAND the guest prints its
    topology and the series' switches.
    \b
    Examples:
      vnuma-sched pipeline --version 6.12 --topology 2x2
      vnuma-sched pipeline --version 6.12 --topology host   # Full vNUMA, pinned
    """

    res = pl.run(series_version, cache_dir(), spec, vmod.parse_size_mb(mem),
                 list(command) or gates_command(), Runner(), progress(settings),
                 os.geteuid(), timeout=timeout, host=read_topology(settings.sysroot()),
                 pin=pin)
    click.echo(pipeline_text(res))
    settings_exit(res.vm.exit_code)
