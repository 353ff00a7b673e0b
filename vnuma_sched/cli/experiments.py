"""The A/B commands: ab (run an experiment in a guest) and compare (statistics, plot)."""

import os
from pathlib import Path

import click

from vnuma_sched.cli.common import cache_dir, emit, json_option, merge_json, progress
from vnuma_sched.cli.tune import _profile_dirs
from vnuma_sched.errors import BadInput
from vnuma_sched.experiments import ab as abmod
from vnuma_sched.experiments import arms, compare
from vnuma_sched.kernel import vm
from vnuma_sched.probes.spec import PRIMARY
from vnuma_sched.render import ab_text
from vnuma_sched.runner import Runner


@click.command("ab")
@click.option("--kernel", "image", required=True, type=click.Path(),
              help="bzImage or build directory of a (patched) guest kernel.")
@click.option("--topology", "spec", default="2x2", show_default=True)
@click.option("--mem", default="2G", show_default=True)
@click.option("--workload", "kind", default="omp-barrier", show_default=True,
              help="omp-barrier, perf-pipe, perf-messaging, or cmd:COMMAND")
@click.option("--threads", type=click.IntRange(1, 1024), default=6, show_default=True,
              help="OMP_NUM_THREADS (perf-messaging: groups).")
@click.option("--spincount", default="0", show_default=True, help="GOMP_SPINCOUNT.")
@click.option("--iterations", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--kib", type=click.IntRange(8), default=256, show_default=True,
              help="omp-barrier: memory block per thread.")
@click.option("--a", "spec_a", required=True, help="Arm A: knobs/paths/boot params/profile.")
@click.option("--b", "spec_b", required=True, help="Arm B.")
@click.option("--append", multiple=True, help="Kernel command line for both arms.")
@click.option("--runs", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Runs per arm, interleaved A B A B ...")
@click.option("--out", type=click.Path(file_okay=False), default="ab-out", show_default=True)
@click.option("--timeout", type=click.IntRange(10), default=600, show_default=True,
              help="Seconds per boot (multiplied by the runs when one boot serves all).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto")
@click.pass_obj
def ab(settings, image, spec, mem, kind, threads, spincount, iterations, kib, spec_a, spec_b,
       append, runs, out, timeout, accel):
    """Run arms A and B interleaved in a vNUMA guest, probes around every run.

    \b
    Writes OUT/runs.jsonl (one line per run) and OUT/results.json (medians,
    B/A ratio with 95% bootstrap interval, Mann-Whitney p per metric).
    \b
    Example:
      vnuma-sched ab --kernel /var/cache/vnuma_sched/builds/series-6.12 \\
          --a kernel.sched_numa_idle_damp=0 --b kernel.sched_numa_idle_damp=3
    """

    dirs = _profile_dirs(settings)
    arm_a, arm_b = arms.parse_arm("a", spec_a, dirs), arms.parse_arm("b", spec_b, dirs)
    kernel_image = vm.kernel_image(image)
    topo = vm.parse_topology(spec, vm.parse_size_mb(mem),
                             limits=vm.guest_limits([vm.image_config(kernel_image)]))
    runner = Runner()
    wl = abmod.workload(kind, cache_dir(), runner, threads, spincount, iterations, kib)
    chosen, why = vm.choose_accel(accel, kernel_image, runner,
                                  os.path.join(cache_dir(), "accel.json"))
    progress(settings)(f"guest {spec} under {chosen} ({why}); workload {' '.join(wl['argv'])}")
    doc = abmod.run(kernel_image, topo, wl, arm_a, arm_b, runs, out, runner,
                    progress(settings), chosen, timeout, list(append))
    click.echo(ab_text(doc, PRIMARY))
    click.echo(f"results: {Path(out) / 'results.json'}")


@click.command("compare")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: ratios with intervals, migration heatmaps per arm.")
@json_option
@click.pass_obj
def compare_cmd(settings, paths, plot_path, as_json):
    """Statistics of an A/B: per metric A and B medians, B/A, 95% CI, Mann-Whitney p.

    \b
    PATHS is an 'ab' output directory, or two recordings sets (A then B), each
    a 'vnuma-sched record' file or a directory of them (one run per file).
    \b
    Examples:
      vnuma-sched compare ab-out --plot ab-out/compare.png
      vnuma-sched compare runs-off/ runs-on/
    """

    settings = merge_json(settings, as_json)
    if plot_path and not Path(plot_path).resolve().parent.is_dir():
        raise BadInput(f"--plot {plot_path}: its folder does not exist")
    if len(paths) == 1 and (Path(paths[0]) / "runs.jsonl").exists():
        doc = abmod.results(paths[0])
        _, runs = compare.read_runs(Path(paths[0]) / "runs.jsonl")
        title = Path(paths[0]).resolve().name
    elif len(paths) == 2:
        runs = compare.runs_from_recordings(compare.recording_files(paths[0]),
                                            compare.recording_files(paths[1]))
        doc = {"arms": {"a": {"spec": paths[0]}, "b": {"spec": paths[1]}},
               "metrics": compare.metrics(runs, f"{paths[0]} and {paths[1]}"),
               "runs": len(runs), "kernel": None}
        title = f"{Path(paths[0]).name} vs {Path(paths[1]).name}"
    else:
        raise BadInput("compare takes an 'ab' directory, or two recording sets (A B)")
    if plot_path:
        compare.plot(doc["metrics"], compare.matrices(runs), plot_path, title)
    emit(settings, doc, ab_text(doc, PRIMARY) + (f"\nplot: {plot_path}" if plot_path else ""))
