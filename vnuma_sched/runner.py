"""Subprocesses: argv lists only, cwd= instead of chdir, never shell=True.

Every process runs in its own session so a timeout or Ctrl-C can kill the
whole tree (QEMU under virtme-ng under us) with one killpg().
"""

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field

from vnuma_sched.errors import Missing, VnumaError


class CommandFailed(VnumaError):
    def __init__(self, argv, returncode, tail):
        msg = f"{shlex.join(argv[:3])}{' ...' if len(argv) > 3 else ''} exited {returncode}"
        if tail:
            msg += f": {tail}"
        super().__init__(msg)
        self.returncode = returncode


@dataclass
class Result:
    argv: list
    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


def _kill_tree(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Runner:
    """Runs commands; with dry_run it prints them (shlex.join) and runs nothing."""

    dry_run: bool = False
    echo: object = None          # callable(str) shown each command, or None
    env: dict = field(default_factory=dict)

    def _env(self, extra):
        merged = dict(os.environ)
        merged.update(self.env)
        merged.update(extra or {})
        return merged

    def run(self, argv, cwd=None, env=None, check=True, timeout=None, stdout=None,
            input_text=None):
        """Run argv to completion. Output is captured unless ``stdout`` is a file."""
        argv = [str(a) for a in argv]
        if self.echo is not None or self.dry_run:
            (self.echo or print)(("would run: " if self.dry_run else "+ ") + shlex.join(argv))
        if self.dry_run:
            return Result(argv, 0)
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=self._env(env), text=True, start_new_session=True,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=stdout or subprocess.PIPE,
                stderr=subprocess.STDOUT if stdout else subprocess.PIPE)
        except FileNotFoundError as err:
            raise Missing(f"{argv[0]}: command not found") from err
        try:
            out, err = proc.communicate(input=input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            out, err = proc.communicate()
            return Result(argv, proc.returncode, out or "", err or "", timed_out=True)
        except BaseException:
            _kill_tree(proc)
            proc.wait()
            raise
        result = Result(argv, proc.returncode, out or "", err or "")
        if check and proc.returncode != 0:
            tail = (err or out or "").strip().splitlines()[-1:] or [""]
            raise CommandFailed(argv, proc.returncode, tail[0][:200])
        return result

    def output(self, argv, cwd=None, env=None):
        """stdout of a command that must succeed, stripped."""
        return self.run(argv, cwd=cwd, env=env).stdout.strip()


def stream(argv, log_path, on_line, cwd=None, env=None):
    """Run argv with stdout+stderr going line by line to ``log_path`` and ``on_line``.

    Returns the exit code. Ctrl-C kills the whole process group.
    """
    argv = [str(a) for a in argv]
    merged = dict(os.environ)
    merged.update(env or {})
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=merged, text=True, errors="replace",
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as err:
            raise Missing(f"{argv[0]}: command not found") from err
        try:
            for line in proc.stdout:
                log.write(line)
                on_line(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            _kill_tree(proc)
            proc.wait()
            raise
