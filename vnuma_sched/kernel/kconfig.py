"""Kconfig fragments: parse, merge, and check which requested values survived.

``merge_config.sh -m`` + ``olddefconfig`` silently drops options whose
dependencies are unmet; the check here makes that loud.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from vnuma_sched.errors import BadInput

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_VALUE = re.compile(r'^(y|m|n|-?\d+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')


@dataclass(frozen=True)
class Dropped:
    symbol: str
    wanted: str
    got: str  # "n" when the option vanished

    def __str__(self):
        return f"{self.symbol}: requested {self.wanted}, got {self.got}"


def parse(text, name="<config>", strict=True):
    """{CONFIG_X: value} in file order; "# CONFIG_X is not set" gives "n".

    With ``strict`` (fragments written by people), anything else that is not a
    comment or blank is a BadInput naming ``name:line``.
    """
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        m = _SET.match(line)
        if m:
            if strict and not _VALUE.match(m.group(2)):
                raise BadInput(f"{name}:{lineno}: bad value {m.group(2)!r} for {m.group(1)}")
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = "n"
        elif strict and line and not line.startswith("#"):
            raise BadInput(f"{name}:{lineno}: not a Kconfig assignment: {line[:60]!r}")
    return out


def read_fragment(path):
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInput(f"{path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise BadInput(f"{path}: not a text file (kconfig fragment expected)") from err
    if "\0" in text:
        raise BadInput(f"{path}: not a text file (kconfig fragment expected)")
    return parse(text, str(path))


def merge(base, fragments):
    """Later fragments override earlier ones, like merge_config.sh."""
    merged = dict(base)
    requested = {}
    for frag in fragments:
        merged.update(frag)
        requested.update(frag)
    return merged, requested


def render(config):
    lines = [f"# {sym} is not set" if val == "n" else f"{sym}={val}"
             for sym, val in config.items()]
    return "\n".join(lines) + "\n"


def dropped(requested, final):
    """Requested values that olddefconfig did not keep."""
    return [Dropped(sym, want, final.get(sym, "n")) for sym, want in requested.items()
            if final.get(sym, "n") != want]
