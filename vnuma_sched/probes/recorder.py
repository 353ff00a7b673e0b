"""The record loop: samples a running session into a JSON-lines file, for a
duration or exactly while a command runs."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from vnuma_sched.errors import BadInput, Missing
from vnuma_sched.probes import catalog, recording


def check_output(output, force):
    """BadInput unless ``output`` can be written: its folder exists, and it does not
    exist yet (or ``force``)."""
    path = Path(output)
    if not path.resolve().parent.is_dir():
        raise BadInput(f"-o {output}: its folder does not exist")
    if path.is_symlink():
        raise BadInput(f"-o {output}: is a symbolic link; give the file itself")
    if path.is_dir():
        raise BadInput(f"-o {output}: is a directory")
    if path.exists() and not force:
        raise BadInput(f"-o {output}: exists; --force overwrites it")


def check_command(command):
    """BadInput for nothing after '--', Missing when the command cannot be found."""
    if not command:
        raise BadInput("nothing after '--': give the command to record, or drop '--'")
    if shutil.which(command[0]) is None:
        raise Missing(f"{command[0]}: command not found")


def _open(output, force):
    """Create ``output`` (truncate it only with ``force``), never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        return os.fdopen(os.open(output, flags, 0o644), "w", encoding="utf-8")
    except FileExistsError as err:
        raise BadInput(f"-o {output}: exists; --force overwrites it") from err
    except OSError as err:
        raise BadInput(f"-o {output}: {err.strerror}") from err


def _start(command, fh, output):
    """Start the command; when it cannot start, the file just begun is removed."""
    try:
        return subprocess.Popen(command)
    except OSError as err:
        fh.close()
        Path(output).unlink(missing_ok=True)
        raise Missing(f"{command[0]}: cannot run: {err.strerror}") from err


def _write(fh, rec):
    fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    fh.flush()


def record(session, sysroot, output, interval, duration, command, progress, force=False):
    """Returns the exit code: the command's, or 0 after a duration (130 on Ctrl-C).
    ``output`` is created (replaced only with ``force``)."""
    for line in catalog.unsupported_lines(session.status):
        progress(line)
    if not session.running():
        session.close()
        raise BadInput("no probe can run here (see 'vnuma-sched probes')")
    code, proc, t0 = 0, None, time.monotonic()
    try:
        with _open(output, force) as fh:
            _write(fh, recording.meta(session, sysroot, interval, command or None))
            sampler = recording.Sampler(session)
            if command:
                proc = _start(command, fh, output)
            try:
                while True:
                    deadline = time.monotonic() + interval
                    while time.monotonic() < deadline:
                        if proc is not None and proc.poll() is not None:
                            break
                        time.sleep(min(0.05, interval))
                    _write(fh, sampler.interval())
                    for ev in session.take_events():
                        _write(fh, {"type": "event", **ev})
                    if proc is not None and proc.poll() is not None:
                        code = proc.returncode
                        break
                    if proc is None and time.monotonic() - t0 >= duration:
                        break
            except KeyboardInterrupt:
                code = 130
                if proc is not None:
                    proc.terminate()
                    proc.wait()
                _write(fh, sampler.interval())
            _write(fh, {"type": "end", "lost": session.lost, "exit_code": code,
                        "duration_s": round(time.monotonic() - t0, 3)})
    finally:
        session.close()
    progress(f"recorded {time.monotonic() - t0:.1f} s to {output} (lost events: "
             f"{session.lost})")
    return code
