"""User values handed to git: never where git parses options.

Every value that came from a user (an option, a file the tool reads) is checked
here before any git command runs: a leading "-" is refused (git would take
``--upload-pack=...`` as an option), refs are resolved with
``rev-parse --end-of-options`` to a commit id, and paths are made absolute (an
absolute path cannot start with "-"). Pure checks raise BadInput; nothing runs.
"""

import re
from pathlib import Path

from vnuma_sched.errors import BadInput

_OBJECT_ID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def not_option(value, what):
    """``value`` as a string; BadInput naming ``what`` when git could take it as an option."""
    text = str(value)
    if not text:
        raise BadInput(f"{what}: empty value")
    if text.startswith("-"):
        raise BadInput(f"{what} {text!r}: must not start with '-'")
    if _CONTROL.search(text):
        raise BadInput(f"{what} {text!r}: control characters are not allowed")
    return text


def ref(value, what):
    """A revision (branch, tag, commit id, HEAD~2) given by a user."""
    return not_option(value, what)


def source(value, what):
    """A repository URL or path given by a user; only plain URLs and paths.

    ``ext::`` and ``fd::`` transports run commands; git refuses ext:: by default
    and this refuses both whatever the user's git configuration says.
    """
    text = not_option(value, what)
    if re.match(r"^(ext|fd)::", text):
        raise BadInput(f"{what} {text!r}: the {text.split('::')[0]}:: transport is not allowed")
    return text


def object_id(value, what):
    """A full commit id (40 or 64 hex digits), e.g. one read from a state or log file."""
    text = str(value).strip()
    if not _OBJECT_ID.fullmatch(text):
        raise BadInput(f"{what} {text[:60]!r}: not a full commit id")
    return text


def path(value):
    """An absolute path string: git and make never read it as an option."""
    return str(Path(value).absolute())


def check_branch(name, runner, cwd):
    """A new branch name that git accepts (``git check-ref-format --branch``)."""
    name = not_option(name, "--branch")
    res = runner.run(["git", "check-ref-format", "--branch", name], cwd=cwd, check=False)
    if res.returncode != 0:
        raise BadInput(f"--branch {name!r}: not a valid git branch name")
    return name
