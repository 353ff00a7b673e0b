"""The relax_domain_level that turns off newidle (and wake) balancing in NUMA domains.

The kernel compares relax_domain_level with sd->level (kernel/sched/topology.c,
set_domain_attribute(): ``sd->level >= request`` in 6.1 and 6.12; ``request <
sd->level`` in kernels without the v6.9 change). sd->level counts every level of
the topology table (build_sched_domain(): child->level + 1), also the levels
later dropped as degenerate, while debugfs numbers only the domains left: domainN
is not level N. The x86 table (arch/x86/kernel/smpboot.c) is SMT, CLS, MC (each
if configured), then PKG (DIE before 6.7) unless a package spans NUMA nodes;
sched_init_numa() appends NODE and the NUMA levels. So NODE is at level
len(table) and the first NUMA level one above. When NODE is degenerate (not among
the debugfs names), relax_domain_level=<NODE's level> turns off every NUMA level
with either comparison; otherwise the first NUMA level is given (6.1+ semantics).
Pure: reads through the SysRoot passed in.
"""

import gzip
import re
from dataclasses import dataclass

from vnuma_sched.system import facts
from vnuma_sched.system.topology import packages_of_cpus, parse_cpulist

DOMAINS = "/sys/kernel/debug/sched/domains"
NODE_DIR = "/sys/devices/system/node"
ARCH_LEVELS = (("SMT", "CONFIG_SCHED_SMT", (2, 6)), ("CLS", "CONFIG_SCHED_CLUSTER", (5, 16)),
               ("MC", "CONFIG_SCHED_MC", (2, 6)))   # name, option, first version with it
PACKAGE_NAMES = ("PKG", "DIE")


@dataclass(frozen=True)
class Relax:
    value: int          # relax_domain_level=value
    table: tuple        # the topology levels below NODE, in order
    assumed: tuple      # what could not be read and was assumed

    def explain(self):
        first = len(self.table) + 1
        why = (f"relax_domain_level={self.value}: NUMA domains start at level {first} "
               f"({' '.join((*self.table, 'NODE', 'NUMA'))})")
        return why + (f"; assumed {', '.join(self.assumed)}" if self.assumed else "")


def domain_names(sysroot, cpu="cpu0"):
    """The names of one CPU's sched domains, domain0 first ([] when none)."""
    base = f"{DOMAINS}/{cpu}"
    dirs = [d for d in sysroot.listdir(base) if re.fullmatch(r"domain[0-9]+", d)]
    dirs.sort(key=lambda d: int(d[len("domain"):]))
    return [sysroot.read_optional(f"{base}/{d}/name", "").strip() for d in dirs]


def kernel_config(sysroot):
    """{option: value} from /boot/config-<release> or /proc/config.gz; None if neither."""
    text = sysroot.read_optional(f"/boot/config-{facts.release(sysroot, '')}")
    if text is None and sysroot.exists("/proc/config.gz"):
        try:
            with sysroot.open_binary("/proc/config.gz") as f:
                text = gzip.decompress(f.read()).decode("utf-8", "replace")
        except (OSError, EOFError):
            text = None
    if text is None:
        return None
    return dict(m.groups() for m in re.finditer(r"^(CONFIG_\w+)=(\S+)$", text, re.M))


def numa_in_package(sysroot):
    """True when one package holds CPUs of two nodes; None when that cannot be read."""
    node_of = {}
    for node in sysroot.listdir(NODE_DIR):
        if re.fullmatch(r"node[0-9]+", node):
            try:
                cpus = parse_cpulist(sysroot.read_optional(f"{NODE_DIR}/{node}/cpulist", ""))
            except ValueError:
                return None
            node_of.update((cpu, node) for cpu in cpus)
    packages = packages_of_cpus(sysroot, sorted(node_of))
    if packages is None:
        return None
    nodes_of_package = {}
    for cpu, node in node_of.items():
        nodes_of_package.setdefault(packages[cpu], set()).add(node)
    if not nodes_of_package:
        return None
    return any(len(nodes) > 1 for nodes in nodes_of_package.values())


def _arch_levels(names, config, version, assumed):
    table = []
    for name, option, since in ARCH_LEVELS:
        if name in names:
            table.append(name)
        elif config is not None:
            if config.get(option) == "y":
                table.append(name)
        elif version >= since:
            table.append(name)
            assumed.append(f"{name} built in (no kernel config)")
    return table


def _package_level(names, sysroot, version, assumed):
    pkg = "PKG" if version >= (6, 7) else "DIE"
    if any(n in names for n in PACKAGE_NAMES):
        return [pkg]
    spans = numa_in_package(sysroot)
    if spans is None:
        assumed.append(f"{pkg} in the table (package/node layout unreadable)")
        return [pkg]
    return [] if spans else [pkg]


def numa_relax(sysroot, version, names):
    """The Relax for the guest whose cpu0 domains are ``names`` (must include NUMA)."""
    config = kernel_config(sysroot)
    assumed = []
    table = _arch_levels(names, config, version, assumed)
    table += _package_level(names, sysroot, version, assumed)
    node_level = len(table)
    value = node_level + 1 if "NODE" in names else node_level
    return Relax(value, tuple(table), tuple(assumed))


def cmdline_relax(cmdline):
    """The relax_domain_level on a kernel command line (-1 when absent or unparsable)."""
    value = -1
    for token in cmdline.split():
        key, _, text = token.partition("=")
        if key == "relax_domain_level":
            value = int(text) if re.fullmatch(r"-?[0-9]{1,3}", text) else -1
    return value
