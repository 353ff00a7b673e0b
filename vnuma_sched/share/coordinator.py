"""The host coordinator: starts sharing between Full-vNUMA guests, applies changes
step by step, resumes or rolls back a move a killed run left, and gives every guest
its whole layout back.

There is no daemon: each command is one run of the coordinator, under the state
directory's lock, reading and journaling the state (share/host_state.py) before and
after every step. The guests are reached through ``io`` (share/host_guests.py in
real use, a fake in tests), which either confirms a step or raises GuestBehind.

A step that fails or times out stops the move: the guest keeps the share it last
confirmed, the move stays pending with that step marked, and status names the guest
as behind. 'resume' tries the remaining steps again; 'rollback' undoes the move in
reverse order (each state it passes through is one the move passed through).
"""

import functools
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.share import host_plan as H
from vnuma_sched.share import host_state as S
from vnuma_sched.system.topology import format_cpulist
from vnuma_sched.tunables import lock


class GuestBehind(VnumaError):
    """A guest did not confirm a step (no answer in time, or its command failed)."""

    exit_code = 1

    def __init__(self, guest, reason):
        super().__init__(f"guest {guest}: {reason}")
        self.guest, self.reason = guest, reason


@dataclass
class Outcome:
    kind: str
    request: str
    steps: list = field(default_factory=list)     # [StepState]
    failed: S.StepState | None = None

    @property
    def finished(self):
        return self.failed is None

    def to_dict(self):
        return {"kind": self.kind, "request": self.request, "finished": self.finished,
                "steps": [s.to_dict() for s in self.steps],
                "failed": self.failed.to_dict() if self.failed else None}


def _pending(kind, request, move):
    return S.PendingMove(kind, request, move.before, move.after,
                         [S.StepState(s) for s in move.steps])


def reversed_move(move, assignment):
    """The move that undoes ``move`` from where it stopped: its steps that started,
    newest first, each from its 'after' back to its 'before'. Undoing a start ends the
    coordinator (a stop)."""
    steps = []
    for ss in reversed(move.steps):
        if ss.state == S.TODO:
            continue
        s = ss.step
        steps.append(S.StepState(H.Step(s.guest, H.TAKE if s.phase == H.GIVE else H.GIVE,
                                         s.after, s.before)))
    kind = "stop" if move.kind == "start" else "rollback"
    return S.PendingMove(kind, f"rollback of {move.kind} {move.request}".strip(),
                         dict(assignment), dict(move.before), steps)


def _locked(method):
    """Run a command under the state directory's lock (one command at a time)."""
    @functools.wraps(method)
    def run(self, *args, **kw):
        with lock.held_at(self.dir.lock, f"vnuma-sched share host {method.__name__}",
                          f"{self.dir.shown}/{S.LOCK_FILE}"):
            return method(self, *args, **kw)
    return run


class Coordinator:
    def __init__(self, state_dir, host, io, between=None):
        """``state_dir``: a StateDir; ``host``: the host Topology; ``io``: the guests'
        channel (used(name, record), memory(name, record), apply(name, record, before,
        after));
        ``between(i)``: called before step i > 0 (tests stop there)."""
        self.dir, self.host, self.io, self.between = state_dir, host, io, between

    def load(self):
        state = self.dir.load()
        if state is None:
            raise BadInput(f"no coordinator state in {self.dir.shown}: "
                           "run 'vnuma-sched share host start' first")
        return state

    # --- commands --------------------------------------------------------------------

    @_locked
    def start(self, records, requests=(), request="", command=("vnuma-sched",), timeout=60.0):
        """Take the guests (``records``: {name: GuestRecord}, in order) under the
        coordinator: ask each what it uses now, then apply the first assignment.
        ``command`` and ``timeout`` are kept for the later commands' channel."""
        if self.dir.load() is not None:
            raise BadInput(f"a coordinator state exists in {self.dir.shown}: "
                           "'vnuma-sched share host stop' first (or 'status')")
        layouts = {n: r.layout for n, r in records.items()}
        H.check_layouts(self.host, layouts)
        actual = {n: H.share(self.io.used(n, r), mem_now(layouts[n], self.io.memory(n, r)))
                  for n, r in records.items()}
        move = H.plan_start(self.host, layouts, actual, requests)
        state = S.State(dict(records), dict(actual), _pending("start", request, move),
                        command=tuple(command), timeout=float(timeout))
        return self._run(state)

    @_locked
    def set(self, requests, request=""):
        state = self.load()
        _no_pending(state)
        move = H.plan_change(self.host, state.layouts, state.assignment, requests)
        if not move.steps:
            return Outcome("set", request)
        state.move = _pending("set", request, move)
        return self._run(state)

    @_locked
    def resume(self):
        return self._run(self._pending("resume"))

    @_locked
    def rollback(self):
        state = self._pending("roll back")
        state.move = reversed_move(state.move, state.assignment)
        return self._run(state)

    def _pending(self, what):
        state = self.load()
        if state.move is None:
            raise BadInput(f"no move is pending: nothing to {what}")
        return state

    @_locked
    def stop(self):
        """Every guest back to its whole Full-vNUMA layout; then the state is removed.
        A pending move is replaced: giving everything back is right whatever it did."""
        state = self.load()
        move = H.plan_stop(state.layouts, state.assignment)
        uncertain = {ss.step.guest for ss in (state.move.steps if state.move else ())
                     if ss.state in (S.STARTED, S.FAILED)}
        steps = list(move.steps)
        steps += [H.Step(n, H.TAKE, state.assignment[n], move.after[n])
                  for n in state.guests if n in uncertain and n not in {s.guest for s in steps}]
        state.move = S.PendingMove("stop", "", move.before, move.after,
                                   [S.StepState(s) for s in steps])
        return self._run(state)

    def report(self, query=True):
        """What status shows: per guest and host node the vCPUs in use (and their host
        CPUs) and memory, per guest node its memory, whether it is behind, and
        (``query``) what the guest itself says it uses and what QEMU has plugged; the
        pending move, step by step."""
        state = self.load()
        guests = []
        for name, rec in state.guests.items():
            sh, lay = state.assignment[name], rec.layout
            nodes = []
            for node in self.host.nodes:
                mine = [v for v in lay.on_node(self.host, node.id) if v in sh.used]
                nodes.append({"node": node.id, "used": format_cpulist(mine),
                              "host_cpus": format_cpulist(lay.hosts[v] for v in mine),
                              "mem_mb": lay.mem_on(sh, node.id)})
            memory = [{"node": m.node, "host_node": m.host_node, "mem_mb": sh.mem_of(m.node),
                       "boot_mb": m.min_mb, "max_mb": m.max_mb} for m in lay.mem_bounds]
            entry = {"name": name, "qmp": rec.qmp, "agent": rec.agent,
                     "used": format_cpulist(sh.used), "nodes": nodes, "memory": memory,
                     "behind": state.behind.get(name)}
            if query:
                try:
                    said = self.io.used(name, rec)
                    entry.update(guest_says=format_cpulist(said), agrees=said == list(sh.used))
                    _query_memory(entry, self.io.memory(name, rec))
                except GuestBehind as err:
                    entry.update(guest_says=None, agrees=None, no_answer=err.reason)
            guests.append(entry)
        return {"state": self.dir.shown_file(), "guests": guests,
                "move": state.move.to_dict() if state.move else None}

    # --- the steps ------------------------------------------------------------------

    def _run(self, state):
        move = state.move
        self.dir.save(state)
        for i, ss in enumerate(move.steps):
            if ss.state == S.DONE:
                continue
            if self.between and i > 0:
                self.between(i)
            name = ss.step.guest
            ss.state, ss.reason = S.STARTED, ""
            self.dir.save(state)
            try:
                self.io.apply(name, state.guests[name], ss.step.before, ss.step.after)
            except GuestBehind as err:
                ss.state, ss.reason = S.FAILED, err.reason
                state.behind[name] = err.reason
                self.dir.save(state)
                return Outcome(move.kind, move.request, move.steps, ss)
            ss.state = S.DONE
            state.assignment[name] = ss.step.after
            state.behind.pop(name, None)
            self.dir.save(state)
        if move.kind == "stop":
            self.dir.remove()
        else:
            state.move = None
            self.dir.save(state)
        return Outcome(move.kind, move.request, move.steps)


def mem_now(layout_, memory):
    """{guest node: MiB} a guest has now: boot memory plus what QEMU has plugged
    (``memory``: io.memory's answer)."""
    return {m.node: m.min_mb + memory.get(m.node, {}).get("plugged_mb", 0)
            for m in layout_.mem_bounds}


def _query_memory(entry, memory):
    """Add to a status entry, per guest node, what QEMU has plugged and the MemTotal
    the guest reports; ``mem_agrees``: QEMU's plugged size is the share's."""
    agree = True
    for m in entry["memory"]:
        got = memory.get(m["node"], {})
        m.update(plugged_mb=got.get("plugged_mb", 0), guest_mb=got.get("guest_mb"))
        agree &= m["boot_mb"] + m["plugged_mb"] == m["mem_mb"]
    entry["mem_agrees"] = agree


def _no_pending(state):
    move = state.move
    if move is None:
        return
    failed = next((ss for ss in move.steps if ss.state in (S.FAILED, S.STARTED)), None)
    where = (f": step {move.steps.index(failed) + 1} of {len(move.steps)} ({failed.step.guest}"
             f"{', ' + failed.reason if failed.reason else ''}) did not finish") if failed else ""
    raise BadInput(f"a {move.kind} move is pending{where}: 'vnuma-sched share host resume' "
                   "or 'vnuma-sched share host rollback' first")
