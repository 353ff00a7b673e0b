"""/proc/interrupts and /proc/softirqs: how many interrupts of each source, and
softirqs of each kind, every online CPU has handled. Pure parsing, plus reads
through the SysRoot passed in.

/proc/interrupts has a header naming the online CPUs ("CPU0 CPU2": an offline CPU
has no column), then one line per source: a label ("24" for an IRQ, "LOC", "RES",
"CAL" for the architecture's vectors), one count per CPU, and a description (the
IRQ's chip, its type and the names of its handlers; the vector's name). ERR and MIS
have one count for the whole system and no description. /proc/softirqs is laid
out the same way, without descriptions."""

import re
from dataclasses import dataclass

from vnuma_sched.errors import DataError

INTERRUPTS = "/proc/interrupts"
SOFTIRQS = "/proc/softirqs"
_CPU = re.compile(r"CPU([0-9]+)")
_LABEL = re.compile(r"\s*([^\s:]+):(.*)")


@dataclass(frozen=True)
class Source:
    label: str          # "24", "LOC", "TIMER"
    what: str           # "IO-APIC 4-edge ttyS0", "Local timer interrupts", ""
    counts: dict        # {cpu: count}; one whole-system count is under cpu -1

    def name(self):
        """How to name it to a user: "LOC (Local timer interrupts)", "irq 24 (...)"."""
        head = f"irq {self.label}" if self.label.isdigit() else self.label
        return f"{head} ({self.what})" if self.what else head


def parse(text, where=INTERRUPTS):
    """{label: Source} of an /proc/interrupts or /proc/softirqs text; ValueError
    naming the line when it is not such a file."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty")
    cpus = [int(c) for c in _CPU.findall(lines[0])]
    if not cpus or _CPU.sub("", lines[0]).strip():
        raise ValueError(f"line 1: not a header of CPU columns: {lines[0][:60]!r}")
    out = {}
    for n, line in enumerate(lines[1:], 2):
        m = _LABEL.fullmatch(line)
        if not m:
            raise ValueError(f"line {n}: no 'LABEL:' in {line[:60]!r}")
        words = m.group(2).split()
        values = []
        while words and len(values) < len(cpus) and words[0].isdigit():
            values.append(int(words.pop(0)))
        if not values:
            raise ValueError(f"line {n}: no count in {line[:60]!r}")
        counts = dict(zip(cpus, values)) if len(values) == len(cpus) else {-1: sum(values)}
        out[m.group(1)] = Source(m.group(1), " ".join(words), counts)
    return out


def read(sysroot, path=INTERRUPTS):
    """parse() of the file; DataError naming it."""
    try:
        return parse(sysroot.read(path))
    except ValueError as err:
        raise DataError(path, f"not an interrupts table: {err}") from err


def delta(before, after):
    """{label: Source} of what happened in between: per CPU the difference (a CPU or
    a source present only afterwards counts from 0); sources with nothing left out."""
    out = {}
    for label, src in after.items():
        old = before.get(label)
        counts = {cpu: n - (old.counts.get(cpu, 0) if old else 0)
                  for cpu, n in src.counts.items()}
        counts = {cpu: n for cpu, n in counts.items() if n}
        if counts:
            out[label] = Source(label, src.what, counts)
    return out
