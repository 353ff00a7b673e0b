"""KVM paravirt feature bits from CPUID (through /dev/cpu/N/cpuid), decoded purely.

The reader goes through SysRoot, so on a recorded tree (no character device)
it is simply unavailable and callers fall back to other evidence.
"""

import os
import struct

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX

# CPUID 0x40000001 EAX bits (arch/x86/include/uapi/asm/kvm_para.h)
KVM_FEATURES = {
    "steal_time": (5, "KVM_FEATURE_STEAL_TIME"),
    "pv_unhalt": (7, "KVM_FEATURE_PV_UNHALT"),
    "pv_tlb_flush": (9, "KVM_FEATURE_PV_TLB_FLUSH"),
    "pv_send_ipi": (11, "KVM_FEATURE_PV_SEND_IPI"),
    "poll_control": (12, "KVM_FEATURE_POLL_CONTROL"),
    "sched_yield": (13, "KVM_FEATURE_PV_SCHED_YIELD"),
}
# CPUID 0x40000001 EDX bits
KVM_HINTS = {"realtime_hint": (0, "KVM_HINTS_REALTIME")}


def device_reader(sysroot, cpu=0):
    """Return cpuid(leaf) -> (eax, ebx, ecx, edx) reading /dev/cpu/<cpu>/cpuid.

    Returns None when the device is absent (CONFIG_X86_CPUID=n, recorded tree).
    Reading may raise PermissionError (the device is root-only).
    """
    path = f"/dev/cpu/{cpu}/cpuid"
    if not sysroot.exists(path) or not sysroot.is_live:
        return None

    def cpuid(leaf, subleaf=0):
        with sysroot.open_binary(path) as f:
            # the device takes the leaf in the low 32 bits of the file offset
            data = os.pread(f.fileno(), 16, leaf | (subleaf << 32))
        return struct.unpack("<4I", data)

    return cpuid


def find_kvm_base(cpuid):
    """The KVM leaf base (0x40000000, or +0x100.. with Hyper-V enlightenments), or None."""
    if not cpuid(1)[2] & HYPERVISOR_BIT:
        return None
    for base in range(0x40000000, 0x40010000, 0x100):
        _, ebx, ecx, edx = cpuid(base)
        if struct.pack("<3I", ebx, ecx, edx) == KVM_SIGNATURE:
            return base
    return None


def decode_features(eax, edx):
    """{name: bool} for every PV feature and hint the doctor reports."""
    out = {name: bool(eax >> bit & 1) for name, (bit, _) in KVM_FEATURES.items()}
    out.update({name: bool(edx >> bit & 1) for name, (bit, _) in KVM_HINTS.items()})
    return out
