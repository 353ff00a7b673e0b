"""'share host': the host coordinator that shares the host between Full-vNUMA guests."""

import click

from vnuma_sched.cli.common import emit, json_option, merge_json, need_root, pid_alive
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.kernel import guests
from vnuma_sched.render import share_host_steps_text, share_host_text
from vnuma_sched.share import host_plan as H
from vnuma_sched.share import host_state as S
from vnuma_sched.share.coordinator import Coordinator
from vnuma_sched.share.host_guests import AgentGuests, read_layout
from vnuma_sched.system.topology import read_topology

NAME = guests.NAME          # a guest's name: the same rule as 'vm run --name'
NEXT = "'vnuma-sched share host resume' or 'vnuma-sched share host rollback'"


class MoveStopped(VnumaError):
    """A step was not confirmed: the move is pending (exit 1)."""


@click.group("host")
def host():
    """Share the host between Full-vNUMA guests: vCPUs per node, never overlapping.

    \b
    Each guest is booted with the whole host layout (vm run --topology host
    --agent-socket A --qmp-socket Q) and uses only its share; the others are
    parked inside it ('vnuma-sched share apply' through its qemu-ga agent),
    their threads confined to the host CPU of its boot vCPU. No host CPU runs
    two active vCPUs. A change takes effect guest by guest: those that give
    back first (confirmed by the guest), then those that take. A guest that
    does not answer in time keeps its last share and the move stays pending.
    Every command is one run of the coordinator: its state is journaled in
    --state-dir before and after every step.
    \b
    Examples:
      sudo vnuma-sched vm run --kernel K --topology host --name a -- sleep infinity &
      sudo vnuma-sched share host start --guest a --guest b --share b=node0=1
      sudo vnuma-sched share host start --guest a=/tmp/a-qmp.sock,/tmp/a-qga.sock \\
          --guest b=/tmp/b-qmp.sock,/tmp/b-qga.sock --share b=node0=1
      sudo vnuma-sched share host set a node0=1 b node0=2
      vnuma-sched share host status --json
      sudo vnuma-sched share host stop
    """


def _state_option(f):
    return click.option("--state-dir", metavar="DIR", default=S.STATE_DIR, show_default=True,
                        help="Where the coordinator journals its state (under --root).")(f)


def _dir(settings, path):
    return S.StateDir(settings.sysroot().path(path), path)


def _coordinator(settings, state_dir, timeout=None):
    """The coordinator of ``state_dir`` with its guests' channel as 'start' set it."""
    sd = _dir(settings, state_dir)
    state = sd.load()
    io = AgentGuests(state.command if state else ("vnuma-sched",),
                     timeout or (state.timeout if state else 60.0), sysroot=settings.sysroot())
    return Coordinator(sd, read_topology(settings.sysroot()), io)


def _guest(sysroot, text):
    """(name, QMP socket, agent socket) of NAME=QMP_SOCKET,AGENT_SOCKET, or of NAME
    alone: a guest that 'vm run --name NAME' runs (kernel/guests.py)."""
    name, sep, socks = text.partition("=")
    if not sep and NAME.fullmatch(name):
        g = guests.find(sysroot, name, pid_alive)
        if not g.qmp or not g.agent:
            raise BadInput(f"--guest {name}: not booted as a placed guest with an agent "
                           "(vm run --topology host --name NAME)")
        return name, g.qmp, g.agent
    qmp_sock, comma, agent = socks.partition(",")
    if not sep or not comma or not NAME.fullmatch(name) or not qmp_sock or not agent:
        raise BadInput(f"--guest {text[:80]!r}: expected NAME or NAME=QMP_SOCKET,AGENT_SOCKET "
                       f"({guests.NAME_RULE})")
    return name, qmp_sock, agent


def _requests(pairs, mems):
    """Requests from NAME SPEC pairs and --mem [NAME:]nodeN=SIZE,... options."""
    if len(pairs) % 2:
        raise BadInput(f"{pairs[-1]!r}: expected NAME SPEC pairs (a node0=2 b node0=1)")
    cpus = dict(zip(pairs[::2], pairs[1::2]))
    if len(cpus) != len(pairs) // 2:
        raise BadInput("a guest is named twice")
    mem = {}
    for text in mems:
        name, sep, spec = text.rpartition(":")
        if not sep:
            if len(cpus) != 1:
                raise BadInput(f"--mem {text!r}: name the guest (NAME:nodeN=SIZE) when "
                               "more than one guest changes")
            name, spec = next(iter(cpus)), text
        mem[name] = spec
    return [H.parse_request(n, cpus.get(n), mem.get(n)) for n in [*cpus, *(m for m in mem
                                                                     if m not in cpus)]]


def _done(settings, outcome, what):
    """Print the outcome; MoveStopped (exit 1) when a step was not confirmed."""
    doc = outcome.to_dict()
    head = (f"{what}: {sum(s.state == S.DONE for s in outcome.steps)} of "
            f"{len(outcome.steps)} step(s) done" if outcome.steps else f"{what}: nothing to do")
    emit(settings, doc, head + ("\n" + share_host_steps_text(doc) if outcome.steps else ""))
    if not outcome.finished:
        f = outcome.failed
        raise MoveStopped(f"guest {f.step.guest} did not confirm step "
                          f"{outcome.steps.index(f) + 1} ({f.reason}): it keeps its last "
                          f"share; the move is pending: {NEXT}")


@host.command("start")
@click.option("--guest", "guest_args", multiple=True, required=True,
              metavar="NAME[=QMP,AGENT]",
              help="A running Full-vNUMA guest: its QMP socket and guest-agent socket, or "
                   "the name 'vm run --name' gave it (repeatable; the order decides who "
                   "gets free vCPUs first).")
@click.option("--share", "shares", multiple=True, metavar="NAME=SPEC",
              help="A guest's first share, e.g. b=node0=1,node1=2 (repeatable); the "
                   "others take every free vCPU, in --guest order.")
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=60, show_default=True,
              help="Seconds a guest has to answer each command.")
@click.option("--guest-command", default="vnuma-sched", show_default=True, metavar="PATH",
              help="How the guests start vnuma-sched (guest-exec searches their PATH).")
@_state_option
@json_option
@click.pass_obj
def host_start(settings, guest_args, shares, timeout, guest_command, state_dir, as_json):
    """Take running guests under the coordinator and apply the first assignment.

    \b
    Every guest keeps its boot vCPU (never parked): two guests whose boot
    vCPUs run on the same host CPU are refused.
    Example:
      sudo vnuma-sched share host start --guest a=/tmp/a-qmp.sock,/tmp/a-qga.sock \\
          --guest b=/tmp/b-qmp.sock,/tmp/b-qga.sock --share b=node0=1,node1=1
    """
    settings = merge_json(settings, as_json)
    need_root(settings, "pinning vCPU threads and parking vCPUs")
    parsed = [_guest(settings.sysroot(), g) for g in guest_args]
    if len({n for n, _, _ in parsed}) != len(parsed):
        raise BadInput("--guest: a name is given twice")
    records = {n: S.GuestRecord(read_layout(n, q), q, a) for n, q, a in parsed}
    pairs = []
    for text in shares:
        name, sep, spec = text.partition("=")
        if not sep:
            raise BadInput(f"--share {text!r}: expected NAME=node0=N,...")
        pairs += [name, spec]
    coord = Coordinator(_dir(settings, state_dir), read_topology(settings.sysroot()),
                        AgentGuests((guest_command,), timeout, sysroot=settings.sysroot()))
    _done(settings, coord.start(records, _requests(pairs, ()), " ".join(shares),
                                (guest_command,), timeout), "start")


@host.command("set")
@click.argument("pairs", nargs=-1, metavar="[NAME SPEC]...")
@click.option("--mem", "mems", multiple=True, metavar="[NAME:]nodeN=SIZE,...",
              help="A guest's memory on its guest node N, boot memory included "
                   "(repeatable; needs 'vm run --mem-hotplug').")
@click.option("--timeout", type=click.FloatRange(0.1, 86400),
              help="Seconds a guest has for each command (default: as at start).")
@_state_option
@json_option
@click.pass_obj
def host_set(settings, pairs, mems, timeout, state_dir, as_json):
    """Change guests' vCPUs per node and memory per node; name the guests that
    give back too.

    \b
    SPEC: nodeN=COUNT,... vCPUs on host node N (nodes not named keep their
    count). A host CPU in use by a guest not named is refused, naming it:
    nothing is taken silently. --mem NAME:nodeN=SIZE sets the memory of the
    guest's node N (its boot memory plus what its virtio-mem device plugs,
    in steps of 2M); no host node may hold more guest memory than it has.
    Examples:
      sudo vnuma-sched share host set a node1=0 b node1=4
      sudo vnuma-sched share host set a node0=2,node1=2
      sudo vnuma-sched share host set --mem a:node1=1G --mem b:node1=3G
    """
    settings = merge_json(settings, as_json)
    if not pairs and not mems:
        raise BadInput("nothing to change: give NAME SPEC pairs or --mem NAME:nodeN=SIZE")
    need_root(settings, "pinning vCPU threads and parking vCPUs")
    coord = _coordinator(settings, state_dir, timeout)
    _done(settings, coord.set(_requests(pairs, mems), " ".join([*pairs, *mems])), "set")


def _simple(name, method, doc):
    @host.command(name, help=doc)
    @click.option("--timeout", type=click.FloatRange(0.1, 86400),
                  help="Seconds a guest has for each command (default: as at start).")
    @_state_option
    @json_option
    @click.pass_obj
    def command(settings, timeout, state_dir, as_json):
        settings = merge_json(settings, as_json)
        need_root(settings, "pinning vCPU threads and parking vCPUs")
        _done(settings, getattr(_coordinator(settings, state_dir, timeout), method)(), name)
    return command


_simple("resume", "resume", """Go on with the pending move from its first unfinished step.

    \b
    Example:
      sudo vnuma-sched share host resume
    """)
_simple("rollback", "rollback", """Undo the pending move, newest step first.

    \b
    Undoing a start gives the guests their whole layout back (a stop).
    Example:
      sudo vnuma-sched share host rollback
    """)
_simple("stop", "stop", """Give every guest its whole Full-vNUMA layout back and end.

    \b
    Every parked vCPU is unparked ('share revert' in the guest), every vCPU
    thread pinned to its own host CPU again; the state is removed.
    Example:
      sudo vnuma-sched share host stop
    """)


@host.command("status")
@click.option("--no-query", is_flag=True, help="Only the journaled state; ask no guest.")
@click.option("--timeout", type=click.FloatRange(0.1, 86400),
              help="Seconds a guest has to answer (default: as at start).")
@_state_option
@json_option
@click.pass_obj
def host_status(settings, no_query, timeout, state_dir, as_json):
    """Per guest and node the vCPUs in use, what each guest says, the pending move.

    \b
    Example:
      vnuma-sched share host status --json
    """
    settings = merge_json(settings, as_json)
    report = _coordinator(settings, state_dir, timeout).report(query=not no_query)
    emit(settings, report, share_host_text(report))
