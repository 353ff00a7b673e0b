"""vnuma-sched serve: the probes' counters for Prometheus."""

import click

from vnuma_sched.cli.common import need_root, progress
from vnuma_sched.cli.probes import _probe_session, _sigterm_as_interrupt
from vnuma_sched.errors import BadInput
from vnuma_sched.probes import catalog
from vnuma_sched.probes import serve as srv
from vnuma_sched.probes.spec import PROBES


def check_args(listen, textfile, count, names):
    """(host, port) or None, after checking the options and the probe names."""
    if (listen is None) == (textfile is None):
        raise BadInput("give exactly one of --listen ADDR:PORT and --textfile DIR")
    if count is not None and textfile is None:
        raise BadInput("--count goes with --textfile")
    for name in names:
        if name not in PROBES:
            raise catalog.unknown_probe(name)
    return srv.parse_listen(listen) if listen is not None else None


@click.command("serve")
@click.option("--listen", metavar="ADDR:PORT",
              help="Serve /metrics here (127.0.0.1:9478, [::1]:9478, :9478 = every address).")
@click.option("--textfile", metavar="DIR", type=click.Path(file_okay=False),
              help=f"Instead of listening, write DIR/{srv.TEXTFILE_NAME} for node_exporter's "
                   "textfile collector.")
@click.option("--no-per-cpu", is_flag=True,
              help="Per-node series only (no cpu label): bounded on large guests.")
@click.option("--interval", type=click.FloatRange(0.1), default=15.0, show_default=True,
              help="Seconds between text file rewrites.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="Write the text file this many times, then exit [default: until stopped].")
@click.argument("names", nargs=-1, metavar="[PROBE]...")
@click.pass_obj
def serve_cmd(settings, listen, textfile, no_per_cpu, interval, count, names):
    """Expose the probes' counters to Prometheus: [PROBE]... (all by default).

    \b
    The counters are the ones `record` samples, read when Prometheus scrapes:
    vnuma_sched_*_total in base units with cpu, node, type, cause, src_node and
    dst_node labels; vnuma_sched_probe_up{probe,reason} for every probe asked
    for (a probe that cannot load is 0 with the reason, the others are served);
    vnuma_sched_info with the kernel release, the series' gates and the applied
    tunables profile. SIGTERM or Ctrl-C detaches the probes and exits 0.
    \b
    Examples:
      sudo vnuma-sched serve --listen 127.0.0.1:9478
      sudo vnuma-sched serve --listen :9478 --no-per-cpu migrate preempt steal
      sudo vnuma-sched serve --textfile /var/lib/prometheus/node-exporter
    """

    address = check_args(listen, textfile, count, names)
    if catalog.needs_bpf(names):
        need_root(settings, "loading BPF probes")
    say = progress(settings)
    log = say if settings.verbose else None
    server = srv.bind(*address, log=log) if address else None
    target = srv.check_textfile_dir(textfile) if textfile is not None else None
    try:
        session = _probe_session(settings, names).start()
    except BaseException:
        if server is not None:
            server.server_close()
        raise
    for line in catalog.unsupported_lines(session.status):
        say(line)
    collector = srv.SessionCollector(session, settings.sysroot(), per_cpu=not no_per_cpu)
    reg = srv.registry(collector)
    with _sigterm_as_interrupt():
        try:
            if server is not None:
                say(f"serving {', '.join(session.running()) or 'no probe'} at "
                    f"http://{listen}{srv.METRICS_PATH}")
                srv.serve_http(server, reg)
            else:
                written = srv.textfile_loop(target, reg, interval, count)
                say(f"wrote {target} {written} time(s)")
        except KeyboardInterrupt:
            pass
        finally:
            collector.close()
