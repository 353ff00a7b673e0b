"""A/B arms: 'sysctl=value', '/sys/module/...=value', boot parameters, or a
tunables profile name, validated on the host before anything boots. Pure."""

import re
from dataclasses import dataclass, field

from vnuma_sched.errors import BadInput
from vnuma_sched.tunables import knobs as K
from vnuma_sched.tunables import profile as P

RUNTIME_PREFIXES = ("/proc/sys/", "/sys/module/")
_BOOT = re.compile(r"^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.,:-]*)?$")


@dataclass
class Arm:
    name: str
    spec: str
    knobs: dict = field(default_factory=dict)    # registry knob -> value (run time)
    paths: dict = field(default_factory=dict)    # absolute path -> value (run time)
    boot: list = field(default_factory=list)     # kernel command line words

    def to_dict(self):
        return {"spec": self.spec, "knobs": self.knobs, "paths": self.paths,
                "boot": self.boot}


def _item(arm, item, profile_dirs):
    where = f"--{arm.name} {item!r}"
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


def parse_arm(name, spec, profile_dirs):
    """'kernel.sched_numa_idle_damp=0 kvm_guest.idle_halt_hint=off' (spaces or commas)."""
    arm = Arm(name, spec)
    items = [i for i in re.split(r"[\s,]+", spec.strip()) if i]
    if not items:
        raise BadInput(f"--{name}: empty arm")
    for item in items:
        _item(arm, item, profile_dirs)
    arm.boot = [w for w in arm.boot if w]
    return arm


def needs_boot_per_run(a, b):
    return sorted(a.boot) != sorted(b.boot)
