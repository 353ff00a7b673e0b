"""The only module that imports bcc (Debian's python3-bpfcc)."""

import contextlib
import os
import sys
import tempfile

NOOP_PROGRAM = "int vnuma_sched_noop(void *ctx) { return 0; }"


@contextlib.contextmanager
def captured_output():
    """Capture file descriptors 1 and 2 (bcc and clang print diagnostics on both)."""
    lines = []
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _first_error(lines, fallback):
    if any("kernel headers" in ln or "kheaders" in ln for ln in lines):
        return ("no kernel headers for the running kernel (install them, or link "
                "/lib/modules/$(uname -r)/build to a headers tree; CONFIG_IKHEADERS=y also works)")
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line.strip()
    return fallback


def compile_check():
    """(status, detail): can bcc compile and load a trivial program here?"""
    try:
        from bcc import BPF  # noqa: PLC0415 - bcc is optional and heavy
    except ImportError as err:
        return "missing", f"bcc not importable ({err}); install Debian's python3-bpfcc"
    try:
        with captured_output() as errors:
            bpf = BPF(text=NOOP_PROGRAM)
            bpf.load_func("vnuma_sched_noop", BPF.TRACEPOINT)
            bpf.cleanup()
    except Exception as err:  # bcc raises bare Exception on compile/load failure
        return "missing", "bcc cannot compile/load: " + _first_error(errors, str(err))
    import bcc  # noqa: PLC0415

    version = getattr(bcc, "__version__", "?")
    return "ok", f"bcc {version} compiled and loaded a program"
