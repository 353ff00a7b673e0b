"""Profiles: INI files with [main] summary= / include= and one section per knob kind.

A small parser of our own (not configparser) so that every error names the file
and line, and so that only registry knobs can appear: no paths, no '..'.
Parsing is pure: it never touches the system.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched import resources
from vnuma_sched.errors import BadInput
from vnuma_sched.tunables import knobs

BUILTIN_DIR = resources.profiles_dir()
SECTIONS = {"sysctl": "", "sched": "sched.", "features": "feature.", "domains": "domain.",
            "modules": "", "boot": "boot."}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Profile:
    name: str
    summary: str = ""
    includes: list = field(default_factory=list)
    include_at: str = ""                              # "file:line" of include=
    settings: dict = field(default_factory=dict)     # knob name -> normalised value
    origin: dict = field(default_factory=dict)       # knob name -> "file:line"


def parse(text, source):
    """Profile from INI text; BadInput naming ``source:line`` on any problem."""
    prof = Profile(name=Path(source).stem)
    section = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([a-z]+)\]", line)
        if m:
            section = m.group(1)
            if section != "main" and section not in SECTIONS:
                raise BadInput(f"{where}: unknown section [{section}]")
            continue
        if "=" not in line:
            raise BadInput(f"{where}: expected key = value")
        key, value = (part.strip() for part in line.split("=", 1))
        if section is None:
            raise BadInput(f"{where}: setting outside a section")
        if section == "main":
            _main_key(prof, key, value, where)
            continue
        if not _NAME.match(key) or ".." in key or "/" in key:
            raise BadInput(f"{where}: {key!r} is not a knob name (paths are not allowed)")
        knob = knobs.lookup(SECTIONS[section] + key, where)
        expected = {"sysctl": knobs.SYSCTL, "modules": knobs.MODULE}.get(section)
        if expected and knob.kind != expected:
            raise BadInput(f"{where}: {knob.name} is not a {section} knob")
        prof.settings[knob.name] = knob.check_value(value, where)
        prof.origin[knob.name] = where
    return prof


def _main_key(prof, key, value, where):
    if key == "summary":
        prof.summary = value
    elif key == "include":
        prof.includes = [v.strip() for v in value.split(",") if v.strip()]
        prof.include_at = where
        for inc in prof.includes:
            if not _NAME.match(inc) or ".." in inc:
                raise BadInput(f"{where}: include {inc!r} is not a profile name")
    else:
        raise BadInput(f"{where}: unknown key {key!r} in [main]")


def search_path(user_dir=None, config_home=None, warn=None):
    """The profile directories, first match wins. With ``warn``, only the ones this
    process can list: one it may not read (HOME=/root as a user) is skipped with a
    warning, a missing one silently."""
    dirs = [Path(user_dir)] if user_dir else []
    if config_home:
        dirs.append(Path(config_home) / "vnuma_sched" / "profiles")
    dirs.append(BUILTIN_DIR)
    return dirs if warn is None else [d for d in dirs if _listable(d, warn)]


def _listable(path, warn):
    try:
        os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        warn(f"skipping profile directory {path}: {err.strerror}")
        return False
    return True


def _is_file(path):
    try:
        return path.is_file()
    except OSError:
        return False


def find(name, dirs, where=""):
    """The file of profile ``name``; ``where``: the include= line that names it."""
    lead = f"{where}: included " if where else ""
    if not _NAME.match(name) or ".." in name:
        raise BadInput(f"{lead}profile {name!r}: not a profile name")
    for d in dirs:
        path = Path(d) / f"{name}.ini"
        if _is_file(path):
            return path
    raise BadInput(f"{lead}profile {name!r} not found (looked in "
                   f"{', '.join(map(str, dirs))})")


def available(dirs):
    """{name: file} of every profile on the search path (the first directory wins)."""
    seen = {}
    for d in reversed(list(dirs)):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for entry in names:
            path = Path(d) / entry
            if entry.endswith(".ini") and _NAME.match(path.stem) and _is_file(path):
                seen[path.stem] = path
    return dict(sorted(seen.items()))


def read_text(path):
    """A profile file's text; BadInput naming it when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise BadInput(f"{path}: cannot read ({err.strerror or type(err).__name__})") from err


def load(name, dirs, _stack=(), _where=""):
    """The profile with its includes merged (included first, own settings win)."""
    if name in _stack:
        raise BadInput(f"{_where}: include loop ({' -> '.join(_stack + (name,))})")
    path = find(name, dirs, _where)
    prof = parse(read_text(path), str(path))
    merged = Profile(name=name, summary=prof.summary, includes=prof.includes)
    for inc in prof.includes:
        base = load(inc, dirs, _stack + (name,), prof.include_at)
        merged.settings.update(base.settings)
        merged.origin.update(base.origin)
    merged.settings.update(prof.settings)
    merged.origin.update(prof.origin)
    return merged
