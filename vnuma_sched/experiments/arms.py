"""A/B arms: 'sysctl=value', '/sys/module/...=value', boot parameters, a
tunables profile name, the guest layout ('topology:SPEC', 'pin', 'nopin') and
vCPUs parked in the guest before its runs ('share:per-node=N'),
validated on the host before anything boots; named arms (--arm NAME=SPEC, or the
--a/--b shorthand), the first the reference. Pure but for reading a topology file."""

import re
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import vm
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import profile as P

RUNTIME_PREFIXES = ("/proc/sys/", "/sys/module/")
_BOOT = re.compile(r"^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:-]*)?$")
NAME = re.compile(r"[a-z][a-z0-9_-]{0,15}")
MIN_ARMS, MAX_ARMS = 2, 8
TOPOLOGY = "topology:"                        # topology:SPEC, SPEC as --topology takes
PIN_WORDS = {"pin": True, "nopin": False}     # as --pin / --no-pin
LAYOUT_ITEMS = "topology:SPEC, pin, nopin, share:per-node=N"
SHARE = re.compile(r"per-node=([1-9][0-9]{0,3})")


@dataclass(frozen=True)
class Layout:
    """An arm's own guest layout; None in a field: the run's --topology / --pin."""

    topology: str | None = None
    pin: bool | None = None

    def to_dict(self):
        return {"topology": self.topology, "pin": self.pin}


@dataclass
class Arm:
    name: str
    spec: str
    knobs: dict = field(default_factory=dict)    # registry knob -> value (run time)
    paths: dict = field(default_factory=dict)    # absolute path -> value (run time)
    boot: list = field(default_factory=list)     # kernel command line words
    layout: Layout | None = None                 # None: the run's --topology and --pin
    share: dict | None = None                    # {"per_node": N}: 'share apply' at boot

    def to_dict(self):
        return {"spec": self.spec, "knobs": self.knobs, "paths": self.paths,
                "boot": self.boot, "layout": self.layout and self.layout.to_dict(),
                "share": self.share}


def _layout_item(arm, item, where):
    """True when ``item`` is a layout item (recorded in arm.layout); BadInput for a
    malformed one: WORD:VALUE is never a knob, path, boot parameter or profile."""
    key, sep, value = item.partition(":")
    if item not in PIN_WORDS and (not sep or "=" in key or key.startswith("/")):
        return False
    lay = arm.layout or Layout()
    if key == "share":
        m = SHARE.fullmatch(value)
        if not m:
            raise BadInput(f"{where}: share: takes per-node=N (N vCPUs used on every node, "
                           "the rest parked before the runs)")
        if arm.share is not None:
            raise BadInput(f"{where}: the arm already has a share: item")
        arm.share = {"per_node": int(m.group(1))}
    elif item in PIN_WORDS:
        if lay.pin is not None:
            raise BadInput(f"{where}: the arm already says {'pin' if lay.pin else 'nopin'}")
        arm.layout = Layout(lay.topology, PIN_WORDS[item])
    elif key != TOPOLOGY[:-1]:
        raise BadInput(f"{where}: unknown layout item ({LAYOUT_ITEMS})")
    elif not value:
        raise BadInput(f"{where}: topology: needs a SPEC (NxM, host or a topology file)")
    elif lay.topology is not None:
        raise BadInput(f"{where}: the arm already has topology:{lay.topology}")
    else:
        arm.layout = Layout(value, lay.pin)
    return True


def _item(arm, item, profile_dirs, option):
    where = f"{option} {item!r}"
    if _layout_item(arm, item, where):
        return
    if "=" not in item and f"boot.{item}" in K.REGISTRY:
        arm.boot.append(item)  # a registered boot flag such as nopvspin
        return
    if "=" not in item:
        prof = P.load(item, profile_dirs)
        for knob, value in prof.settings.items():
            if K.REGISTRY[knob].kind == K.BOOT:
                arm.boot.append(_boot_word(knob[len("boot."):], value, K.REGISTRY[knob]))
            else:
                arm.knobs[knob] = value
        return
    key, value = item.split("=", 1)
    if key.startswith("/"):
        if not key.startswith(RUNTIME_PREFIXES) or ".." in key.split("/"):
            raise BadInput(f"{where}: only /proc/sys/ and /sys/module/ paths may be set")
        if not re.fullmatch(r"[\w.,:-]+", value):
            raise BadInput(f"{where}: unexpected characters in the value")
        arm.paths[key] = value
        return
    knob = K.REGISTRY.get(key) or K.REGISTRY.get(f"boot.{key}")
    if knob is None:
        if not _BOOT.match(item):
            raise BadInput(f"{where}: not a knob, path, boot parameter or profile")
        arm.boot.append(item)
        return
    value = knob.check_value(value, where)
    if knob.kind == K.BOOT:
        arm.boot.append(_boot_word(knob.name[len("boot."):], value, knob))
    else:
        arm.knobs[knob.name] = value


def _boot_word(name, value, knob):
    if knob.vtype == "bool":
        return name if value == "1" else ""
    return f"{name}={value}"


def parse_arm(name, spec, profile_dirs, option=None):
    """'feature.NUMA_WAKE_PREV=0 kvm_guest.idle_halt_hint=off' (spaces or commas);
    errors name ``option`` (default --NAME)."""
    option = option or f"--{name}"
    arm = Arm(name, spec)
    items = [i for i in re.split(r"[\s,]+", spec.strip()) if i]
    if not items:
        raise BadInput(f"{option}: empty arm")
    for item in items:
        _item(arm, item, profile_dirs, option)
    arm.boot = [w for w in arm.boot if w]
    return arm


def boot_key(arm):
    """What an arm fixes when its guest boots: its boot parameters and the vCPUs it
    parks (a guest parks once, at boot). Arms with the same key can share a boot."""
    return tuple(sorted(arm.boot)), str(arm.share)


def needs_boot_per_run(*arms):
    """True when the arms differ in boot parameters or in the vCPUs they park: then
    they cannot share a boot."""
    return len({boot_key(a) for a in arms}) > 1


def place(arm_list, spec, pin, mem_mb, host, limits):
    """{arm name: the vm.GuestTopology it boots}: the arm's layout over the run's
    --topology ``spec`` and --pin ``pin``, checked against the kernel (``limits``)
    and the host (``host``, a system Topology) as vm.parse_topology does; BadInput
    naming the arm when its own layout does not fit."""
    out = {}
    for arm in arm_list:
        lay = arm.layout or Layout()
        try:
            out[arm.name] = vm.parse_topology(lay.topology or spec, mem_mb, host, limits,
                                              pin if lay.pin is None else lay.pin)
        except BadInput as err:
            if arm.layout is None:
                raise
            raise BadInput(f"--arm {arm.name}: {err}") from err
    return out


def named_specs(arm_opts, spec_a=None, spec_b=None):
    """[(name, spec, option)] from repeated --arm NAME=SPEC, or from the --a/--b
    shorthand (arms a and b); BadInput for a mix, a bad or repeated name, a count
    outside MIN_ARMS..MAX_ARMS. The first arm is the reference."""
    if (spec_a is not None or spec_b is not None) and arm_opts:
        raise BadInput("--a/--b is shorthand for --arm a=SPEC --arm b=SPEC: give one "
                       "form, not both")
    if spec_a is not None or spec_b is not None:
        if spec_a is None or spec_b is None:
            raise BadInput("--a and --b go together (or give --arm NAME=SPEC, repeated)")
        return [("a", spec_a, "--a"), ("b", spec_b, "--b")]
    out = []
    for text in arm_opts:
        name, sep, spec = text.partition("=")
        if not sep:
            raise BadInput(f"--arm {text[:60]!r}: expected NAME=SPEC")
        if not NAME.fullmatch(name):
            raise BadInput(f"--arm {name[:40]!r}: a name is a lower-case letter and up "
                           "to 15 more of a-z 0-9 _ -")
        if name in (n for n, _, _ in out):
            raise BadInput(f"--arm {name}: the name is given twice")
        out.append((name, spec, f"--arm {name}"))
    if not MIN_ARMS <= len(out) <= MAX_ARMS:
        raise BadInput(f"{len(out)} arm(s): give {MIN_ARMS} to {MAX_ARMS} (--arm NAME=SPEC, "
                       "repeated; the first is the reference), or --a SPEC --b SPEC")
    return out


def parse_arms(named, profile_dirs):
    """Arms from named_specs' (name, spec, option) triples, in order."""
    return [parse_arm(name, spec, profile_dirs, option) for name, spec, option in named]
