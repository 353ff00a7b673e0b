"""The A/B commands: ab (run an experiment in a guest) and compare (statistics, plot)."""

import os
from pathlib import Path

import click

from vnuma_sched.cli.common import (
    cache_dir,
    emit,
    json_option,
    merge_json,
    pin_option,
    progress,
)
from vnuma_sched.cli.tune import _profile_dirs
from vnuma_sched.errors import BadInput
from vnuma_sched.experiments import ab as abmod
from vnuma_sched.experiments import arms, compare
from vnuma_sched.kernel import vm
from vnuma_sched.probes.spec import HEADLINE, PRIMARY
from vnuma_sched.render import ab_markdown, ab_text
from vnuma_sched.runner import Runner
from vnuma_sched.system.topology import read_topology


@click.command("ab")
@click.option("--kernel", "image", required=True, type=click.Path(),
              help="bzImage or build directory of a (patched) guest kernel.")
@click.option("--topology", "spec", default="2x2", show_default=True,
              help="The guest of arms without topology:SPEC: NxM, 'host', or a topology "
                   "JSON file.")
@click.option("--mem", default="2G", show_default=True,
              help="Guest memory of every arm, split across its nodes.")
@pin_option
@click.option("--workload", "kind", default="omp-barrier", show_default=True,
              help="omp-barrier, perf-pipe, perf-messaging, or cmd:COMMAND")
@click.option("--threads", type=click.IntRange(1, 1024), default=6, show_default=True,
              help="OMP_NUM_THREADS (perf-messaging: groups), the same in every arm "
                   "whatever its vCPU count.")
@click.option("--spincount", default="0", show_default=True, help="GOMP_SPINCOUNT.")
@click.option("--iterations", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--kib", type=click.IntRange(8), default=256, show_default=True,
              help="omp-barrier: memory block per thread.")
@click.option("--arm", "arm_specs", multiple=True, metavar="NAME=SPEC",
              help="An arm: knobs/paths/boot params/profile, and its own guest layout "
                   "(topology:SPEC, pin, nopin); repeat (2 to 8), the first is the "
                   "reference.")
@click.option("--a", "spec_a", default=None, metavar="SPEC", help="Shorthand for --arm a=SPEC.")
@click.option("--b", "spec_b", default=None, metavar="SPEC", help="Shorthand for --arm b=SPEC.")
@click.option("--append", multiple=True, help="Kernel command line for every arm.")
@click.option("--runs", type=click.IntRange(2, 100), default=5, show_default=True,
              help="Runs per arm in total (at least 2: the statistics need two), spread "
                   "evenly over the boots.")
@click.option("--boots", type=int, default=1, show_default=True,
              help="Boots of the guest; each runs the arms interleaved, starting with the "
                   "next arm (an arm whose boot parameters no other arm has boots once "
                   "per run).")
@click.option("--out", type=click.Path(file_okay=False), default="ab-out", show_default=True)
@click.option("--timeout", type=click.IntRange(10), default=600, show_default=True,
              help="Seconds per run (a boot gets this times its runs).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto")
@click.pass_obj
def ab(settings, image, spec, mem, pin, kind, threads, spincount, iterations, kib, arm_specs,
       spec_a, spec_b, append, runs, boots, out, timeout, accel):
    """Run named arms interleaved in a vNUMA guest, probes around every run.

    \b
    Every arm is compared with the first (the reference). Each boot runs the
    arms in turn (ref off on ref off on ...), the next boot starting with the
    next arm. Writes OUT/runs.jsonl (one line per run, with its boot) and
    OUT/results.json (per metric and arm: median, spread between and within
    boots; ratio to the reference with 95% bootstrap interval, Mann-Whitney p).

    \b
    An arm may boot a guest layout of its own: topology:SPEC (as --topology
    takes), pin or nopin (as --pin/--no-pin); memory stays --mem. Arms with a
    layout or boot parameters no other arm has boot once per run; arms with the
    same layout and boot parameters share boots. --threads is the same in every
    arm: a layout with fewer vCPUs runs more threads per vCPU.
    \b
    Examples:
      vnuma-sched ab --kernel /var/cache/vnuma_sched/builds/series-6.12 \\
          --arm ref=vnuma_debug.emulate_halt_preempted=0,kvm_guest.idle_halt_hint=off \\
          --arm off=vnuma_debug.emulate_halt_preempted=1,kvm_guest.idle_halt_hint=off \\
          --arm on=vnuma_debug.emulate_halt_preempted=1,kvm_guest.idle_halt_hint=on \\
          --runs 6 --boots 3
      vnuma-sched ab --kernel K --a feature.NUMA_WAKE_PREV=0 \\
          --b feature.NUMA_WAKE_PREV=1
      vnuma-sched ab --kernel K --threads 4 --arm flat=topology:1x4 \\
          --arm numa=topology:2x2 --arm full=topology:2x2,pin --runs 10
      vnuma-sched ab --kernel K --threads 8 --arm off=feature.NUMA_WAKE_PREV=0 \\
          --arm wake=feature.NUMA_WAKE_PREV=1 \\
          --arm "relax=feature.NUMA_WAKE_PREV=0 relax_domain_level=3" \\
          --runs 10 --boots 5
    """

    arm_list = arms.parse_arms(arms.named_specs(arm_specs, spec_a, spec_b),
                               _profile_dirs(settings))
    abmod.schedule([a.name for a in arm_list], runs, boots)  # BadInput before any work
    vm.check_guest_visible(out, "--out")
    kernel_image = vm.kernel_image(image)
    topos = arms.place(arm_list, spec, pin, vm.parse_size_mb(mem),
                       read_topology(settings.sysroot()),
                       vm.guest_limits([vm.image_config(kernel_image)]))
    runner = Runner()
    wl = abmod.workload(kind, cache_dir(), runner, threads, spincount, iterations, kib)
    chosen, why = vm.choose_accel(accel, kernel_image, runner,
                                  os.path.join(cache_dir(), "accel.json"))
    guests = {a.name: topos[a.name].summary() for a in arm_list}
    said = (next(iter(guests.values())) if len(set(guests.values())) == 1
            else "; ".join(f"{name} {text}" for name, text in guests.items()))
    progress(settings)(f"guest {said} under {chosen} ({why}); workload "
                       f"{' '.join(wl['argv'])}")
    doc = abmod.run(kernel_image, topos[arm_list[0].name], wl, arm_list, runs, boots, out,
                    runner, progress(settings), chosen, timeout, list(append), topos)
    click.echo(ab_text(doc, PRIMARY))
    click.echo(f"results: {Path(out) / 'results.json'}")


@click.command("compare")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: every arm's runs per primary metric, migration heatmaps.")
@click.option("--markdown", is_flag=True,
              help="A markdown table of the primary metrics instead of the text report.")
@json_option
@click.pass_obj
def compare_cmd(settings, paths, plot_path, markdown, as_json):
    """Statistics of an A/B: per metric each arm against the reference (the first):
    medians, ratio, 95% CI, Mann-Whitney p; the spread between and within boots.

    \b
    PATHS is an 'ab' output directory, or two recordings sets (A then B), each
    a 'vnuma-sched record' file or a directory of them (one run per file).
    --json gives every number.
    \b
    Examples:
      vnuma-sched compare ab-out --plot ab-out/compare.png
      vnuma-sched compare runs-off/ runs-on/
      vnuma-sched compare ab-out --markdown > table.md
    """

    settings = merge_json(settings, as_json)
    if plot_path and not Path(plot_path).resolve().parent.is_dir():
        raise BadInput(f"--plot {plot_path}: its folder does not exist")
    if len(paths) == 1 and (Path(paths[0]) / "runs.jsonl").exists():
        doc = abmod.results(paths[0])
        _, runs, _, names = abmod.read_runs(paths[0])
        title = Path(paths[0]).resolve().name
    elif len(paths) == 2:
        runs = compare.runs_from_recordings(compare.recording_files(paths[0]),
                                            compare.recording_files(paths[1]))
        names = ["a", "b"]
        doc = {"arms": {"a": {"spec": paths[0]}, "b": {"spec": paths[1]}}, "reference": "a",
               "metrics": compare.metrics(runs, f"{paths[0]} and {paths[1]}", names),
               "runs": len(runs), "boots": 1, "kernel": None}
        title = f"{Path(paths[0]).name} vs {Path(paths[1]).name}"
    else:
        raise BadInput("compare takes an 'ab' directory, or two recording sets (A B)")
    if plot_path:
        compare.plot(runs, doc["metrics"], names, compare.matrices(runs), plot_path, title)
    if markdown and not settings.json:
        click.echo(ab_markdown(doc, HEADLINE, title))
        return
    emit(settings, doc, ab_text(doc, PRIMARY) + (f"\nplot: {plot_path}" if plot_path else ""))
