"""The record loop: samples a running session into a JSON-lines file, for a
duration or exactly while a command runs."""

import json
import subprocess
import time

from vnuma_sched.errors import BadInput, Missing
from vnuma_sched.probes import recording


def _write(fh, rec):
    fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    fh.flush()


def record(session, sysroot, output, interval, duration, command, progress):
    """Returns the exit code: the command's, or 0 after a duration (130 on Ctrl-C)."""
    for name, a in session.status.items():
        if not a.ok:
            progress(f"{name}: unsupported: {a.reason}")
    if not session.running():
        session.close()
        raise BadInput("no probe can run here (see 'vnuma-sched probes')")
    code, proc, t0 = 0, None, time.monotonic()
    try:
        with open(output, "w", encoding="utf-8") as fh:
            _write(fh, recording.meta(session, sysroot, interval, command or None))
            sampler = recording.Sampler(session)
            if command:
                try:
                    proc = subprocess.Popen(command)
                except FileNotFoundError as err:
                    raise Missing(f"{command[0]}: command not found") from err
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
