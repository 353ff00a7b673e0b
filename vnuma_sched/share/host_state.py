"""The coordinator's state on disk: the guests, the confirmed assignment, the move in
progress with its steps, and the guests that did not answer.

One JSON document, ``<state dir>/state.json``, replaced atomically (a temporary
file beside it, fsync, rename, fsync of the directory) before and after every step:
a coordinator killed at any point finds on restart which steps are done, which one
was under way (its guest may be on either side of it), and what to do next. The
file is data: every field is checked before anything acts on it (DataError, exit 3).
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched.errors import DataError
from vnuma_sched.share import host_plan as H

STATE_DIR = "/run/vnuma_sched/share-host"      # default, under --root
STATE_FILE = "state.json"
LOCK_FILE = "lock"
VERSION = 2             # 2: memory per guest node (with its host node)
TODO, STARTED, DONE, FAILED = "todo", "started", "done", "failed"
STEP_STATES = (TODO, STARTED, DONE, FAILED)


@dataclass
class GuestRecord:
    layout: H.GuestLayout
    qmp: str            # QEMU's QMP socket
    agent: str          # the guest agent's socket (virtio-serial, qemu-ga)

    def to_dict(self):
        return {"qmp": self.qmp, "agent": self.agent, "layout": self.layout.to_dict()}


@dataclass
class StepState:
    step: H.Step
    state: str = TODO
    reason: str = ""

    def to_dict(self):
        return {**self.step.to_dict(), "state": self.state, "reason": self.reason}


@dataclass
class PendingMove:
    kind: str           # "start", "set", "stop", "rollback"
    request: str        # what was asked, for status
    before: dict        # {guest: GuestShare}
    after: dict
    steps: list         # [StepState]

    def to_dict(self):
        return {"kind": self.kind, "request": self.request,
                "before": _assignment_dict(self.before), "after": _assignment_dict(self.after),
                "steps": [s.to_dict() for s in self.steps]}


@dataclass
class State:
    guests: dict                        # {name: GuestRecord}, in the order given
    assignment: dict                    # {name: GuestShare}: what each guest confirmed
    move: PendingMove | None = None
    behind: dict = field(default_factory=dict)     # {name: reason}
    command: tuple = ("vnuma-sched",)   # how vnuma-sched starts in the guests
    timeout: float = 60.0               # seconds a guest has for each command

    @property
    def layouts(self):
        return {n: g.layout for n, g in self.guests.items()}

    def to_dict(self):
        return {"version": VERSION,
                "guests": {n: g.to_dict() for n, g in self.guests.items()},
                "assignment": _assignment_dict(self.assignment),
                "move": self.move.to_dict() if self.move else None,
                "behind": dict(self.behind), "command": list(self.command),
                "timeout": self.timeout}


def _assignment_dict(assignment):
    return {n: s.to_dict() for n, s in assignment.items()}


class StateDir:
    """Where the state and the lock live."""

    def __init__(self, path, shown=None):
        self.path = Path(path)
        self.shown = str(shown or path)

    @property
    def file(self):
        return self.path / STATE_FILE

    @property
    def lock(self):
        return self.path / LOCK_FILE

    def shown_file(self):
        return f"{self.shown.rstrip('/')}/{STATE_FILE}"

    def load(self):
        """The State, or None when there is none."""
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DataError(self.shown_file(), err.strerror or str(err)) from err
        try:
            return from_dict(json.loads(text))
        except (ValueError, RecursionError) as err:
            raise DataError(self.shown_file(), f"not a coordinator state: {err}") from err

    def save(self, state):
        self.path.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path / f".{STATE_FILE}.tmp"
        data = (json.dumps(state.to_dict(), indent=1) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.file)
        _sync_dir(self.path)

    def remove(self):
        self.file.unlink(missing_ok=True)
        _sync_dir(self.path)


def _sync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading it back: every field checked --------------------------------------------

def _need(cond, what):
    if not cond:
        raise ValueError(what)


def _int(v):
    return type(v) is int and v >= 0


def _ints(v):
    return isinstance(v, list) and all(_int(x) for x in v)


def _obj(v, what):
    _need(isinstance(v, dict), f"{what} is not an object")
    return v


def _share(d, what):
    _obj(d, what)
    _need(_ints(d.get("used")), f"{what}.used is not a list of vCPUs")
    mem = _obj(d.get("mem_mb", {}), f"{what}.mem_mb")
    _need(all(k.isdigit() and _int(v) for k, v in mem.items()),
          f"{what}.mem_mb is not {{node: MiB}}")
    return H.share(d["used"], {int(k): v for k, v in mem.items()})


def _layout(name, d):
    _obj(d, f"guest {name}'s layout")
    vcpus = d.get("vcpus")
    _need(isinstance(vcpus, list) and all(isinstance(x, dict) and _int(x.get("vcpu"))
                                          and _int(x.get("host_cpu")) for x in vcpus),
          f"guest {name}: vcpus is not [{{vcpu, host_cpu}}]")
    _need(_ints(d.get("fixed")), f"guest {name}: fixed is not a list of vCPUs")
    mem = d.get("memory")
    _need(isinstance(mem, list) and all(isinstance(x, dict) and
                                        all(_int(x.get(k)) for k in H.MemNode._fields)
                                        for x in mem), f"guest {name}: memory is malformed")
    return H.GuestLayout(name, tuple((x["vcpu"], x["host_cpu"]) for x in vcpus),
                         tuple(H.MemNode(*(x[k] for k in H.MemNode._fields)) for x in mem),
                         frozenset(d["fixed"]))


def _assignment(d, names, what):
    _obj(d, what)
    _need(set(d) == set(names), f"{what} does not name exactly the guests")
    return {n: _share(d[n], f"{what}.{n}") for n in names}


def _step(d, names, i):
    _obj(d, f"step {i}")
    _need(d.get("guest") in names, f"step {i} names an unknown guest")
    _need(d.get("phase") in (H.GIVE, H.TAKE), f"step {i} has no phase give/take")
    _need(d.get("state") in STEP_STATES, f"step {i} has no state {'/'.join(STEP_STATES)}")
    _need(isinstance(d.get("reason", ""), str), f"step {i}: reason is not text")
    step = H.Step(d["guest"], d["phase"], _share(d.get("before"), f"step {i}.before"),
                  _share(d.get("after"), f"step {i}.after"))
    return StepState(step, d["state"], d.get("reason", ""))


def _move(d, names):
    if d is None:
        return None
    _obj(d, "move")
    _need(d.get("kind") in ("start", "set", "stop", "rollback"), "move has an unknown kind")
    _need(isinstance(d.get("request"), str), "move.request is not text")
    _need(isinstance(d.get("steps"), list), "move.steps is not a list")
    return PendingMove(d["kind"], d["request"], _assignment(d.get("before"), names, "move.before"),
                       _assignment(d.get("after"), names, "move.after"),
                       [_step(s, names, i) for i, s in enumerate(d["steps"])])


def from_dict(d):
    """A State from its JSON document; ValueError naming the first bad field."""
    _obj(d, "the document")
    _need(d.get("version") == VERSION, f"version {d.get('version')!r}, expected {VERSION}")
    guests = {}
    for name, g in _obj(d.get("guests"), "guests").items():
        _obj(g, f"guest {name}")
        _need(isinstance(g.get("qmp"), str) and isinstance(g.get("agent"), str),
              f"guest {name}: qmp and agent must be socket paths")
        guests[name] = GuestRecord(_layout(name, g.get("layout")), g["qmp"], g["agent"])
    behind = _obj(d.get("behind", {}), "behind")
    _need(set(behind) <= set(guests) and all(isinstance(v, str) for v in behind.values()),
          "behind is not {guest: reason}")
    command, timeout = d.get("command"), d.get("timeout")
    _need(isinstance(command, list) and command and all(isinstance(c, str) and c
                                                        for c in command),
          "command is not a list of words")
    _need(type(timeout) in (int, float) and 0 < timeout <= 86400, "timeout is not seconds")
    return State(guests, _assignment(d.get("assignment"), list(guests), "assignment"),
                 _move(d.get("move"), list(guests)), dict(behind), tuple(command),
                 float(timeout))
