"""Helpers shared by the test modules (fixtures stay in conftest.py)."""

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

from vnuma_sched.probes import events as E
from vnuma_sched.system.doctor import DoctorEnv, run_checks
from vnuma_sched.system.sysroot import SysRoot

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
FAKE_KERNEL = DATA / "fakekernel"
# The version in FAKE_KERNEL's Makefile: a fixture, not a Debian package version.
FAKE_VERSION = "6.12.117"
CACHE = Path(os.environ.get("VNUMA_SCHED_CACHE", "/var/cache/vnuma_sched"))
VNUMA = str(Path(sys.executable).parent / "vnuma-sched")

# A fixed identity and date: the synthetic repositories get the same hashes every run.
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_AUTHOR_DATE": "@1700000000 +0000", "GIT_COMMITTER_DATE": "@1700000000 +0000",
           "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def git(repo, *args):
    """Run git in repo with GIT_ENV; its stdout, stripped."""
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=repo,
                          check=True, capture_output=True, text=True,
                          env=GIT_ENV).stdout.strip()


def write(root, path, text):
    """Write root/path (a leading "/" is under root), making its directories."""
    p = Path(root) / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def fake_cpuid(eax_features, edx_hints=0, base=0x40000000, hypervisor=True):
    """cpuid(leaf) of a KVM guest with these PV feature (EAX) and hint (EDX) bits."""
    sig = struct.unpack("<3I", b"KVMKVMKVM\0\0\0")

    def cpuid(leaf, subleaf=0):
        if leaf == 1:
            return (0, 0, (1 << 31) if hypervisor else 0, 0)
        if leaf == base:
            return (base + 1, *sig)
        if leaf == base + 1:
            return (eax_features, 0, 0, edx_hints)
        return (0, 0, 0, 0)

    return cpuid


def checks_for(root, **kw):
    """doctor's checks of the tree at ``root``, by name (DoctorEnv fields as keywords)."""
    env = DoctorEnv(sysroot=SysRoot(root), euid=kw.pop("euid", 0), **kw)
    return {c.name: c for c in run_checks(env)}


def golden(name, text):
    """Compare text with tests/data/golden/<name>; UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


def debian_source_version(series):
    """Upstream version of the installed linux-source-<series> package, e.g. "6.12.117"
    for 6.12.117-1~deb12u1: the tree `kernel fetch` extracts (dpkg-query)."""
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", f"linux-source-{series}"],
                             capture_output=True, text=True, check=True).stdout
    m = re.match(r"(\d+\.\d+\.\d+)", version)
    assert m, f"linux-source-{series}: unexpected package version {version!r}"
    return m.group(1)


# --- recordings ----------------------------------------------------------------------

def interval(topo_nodes, dt=1.0):
    """One interval record with known counters (5 wake and 2 newidle migrations, 3 of
    the wake ones avoidable...)."""
    mx = {c: {"busy": [[0] * topo_nodes for _ in range(topo_nodes)],
              "idle": [[0] * topo_nodes for _ in range(topo_nodes)]} for c in E.CAUSE_NAMES}
    mx["wake"]["busy"][0][1] = 5
    mx["newidle"]["idle"][1][1] = 2
    avoidable = {c: [[0] * topo_nodes for _ in range(topo_nodes)] for c in E.CAUSE_NAMES}
    avoidable["wake"][0][1] = 3     # 3 of the 5 wake-up moves left an idle allowed CPU
    return {"type": "interval", "t": 0.0, "dt": dt, "probes": {
        "ipi": {"per_cpu": [[3, 4, 0, 1], [1, 0, 0, 0], [0, 2, 0, 0], [5, 5, 1, 0]]},
        "halt": {"count": [[2] + [0] * 7] * 4, "ns": [[3_000_000] + [0] * 7] * 4,
                 "hist": [0, 1, 4, 2] + [0] * 28, "pvspin": [[0, 0]] * 4},
        "migrate": {"matrix": mx, "wake_place": [20, 3], "avoidable": avoidable,
                    "avoid_seen": [7, 5, 0, 0]},
        "preempt": {"checked": [4, 4, 0, 0], "rejected": [1, 2, 0, 0]},
        "steal": {"ms": [0, 1, 0, 2]}}}


def write_recording(path, intervals, end=True, meta=None):
    """A JSON-lines recording: meta, the intervals, and an end record unless end=False."""
    lines = [json.dumps(meta or {"type": "meta", "version": 1, "kernel": "6.12.117",
                                 "probes": {"preempt": {"available": False,
                                                        "reason": "no kprobes"}}})]
    lines += [json.dumps(i) for i in intervals]
    if end:
        lines.append(json.dumps({"type": "end", "lost": 3, "exit_code": 0}))
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line(res, code, *needles):
    """A CLI result that failed with ``code`` and one line on stderr holding the needles."""
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- BTF ------------------------------------------------------------------------------

def btf_blob(structs, order="<"):
    """A minimal BTF blob (Documentation/bpf/btf.rst): type 1 is a 4-byte int, then one
    struct per entry of ``structs`` ({name: [(member, byte offset, type)]}, type "int"
    or the name of another struct of the dict; "" names an anonymous struct), in order."""
    import struct as S  # noqa: PLC0415 - only for this builder

    strings, offsets = bytearray(b"\0"), {"": 0}

    def name_off(name):
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return offsets[name]

    ids = {"int": 1, **{name: 2 + i for i, name in enumerate(structs)}}
    types = bytearray(S.pack(order + "3I", name_off("int"), 1 << 24, 4) +
                      S.pack(order + "I", 32))
    for key, members in structs.items():
        name = key.split("#")[0]       # "#n" makes anonymous keys unique
        size = max((off + 8 for _, off, _ in members), default=0)
        types += S.pack(order + "3I", name_off(name), (4 << 24) | len(members), size)
        for member, off, typ in members:
            types += S.pack(order + "3I", name_off(member), ids[typ], off * 8)
    header = S.pack(order + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                    len(strings))
    return header + bytes(types) + bytes(strings)


TASK_BTF = {"thread_info": [("flags", 0, "int"), ("status", 16, "int"), ("cpu", 20, "int")],
            "task_struct": [("thread_info", 0, "thread_info"), ("__state", 24, "int"),
                            ("cpus_ptr", 800, "int"),
                            ("pid", 1264, "int"), ("comm", 1752, "int")]}
