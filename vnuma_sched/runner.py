"""Subprocesses: argv lists only, cwd= instead of chdir, never shell=True.

Every process runs in its own session so a timeout or Ctrl-C can kill the
whole tree (QEMU under virtme-ng under us) with one killpg(). On Ctrl-C the
tree first gets SIGTERM and a moment to clean up (git removes its lock files),
then SIGKILL.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
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


TERM_GRACE_S = 5.0


def _kill_tree(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_tree(proc, grace=TERM_GRACE_S):
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds; reaps ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.returncode is None:
            _kill_tree(proc)
            proc.wait()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises KeyboardInterrupt, like Ctrl-C, so the
    caller's rollback runs for both."""
    if not _in_main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def signals_ignored():
    """SIGINT and SIGTERM ignored inside the block (a rollback must finish).

    Children started inside inherit the ignored dispositions.
    """
    if not _in_main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def tool_dirs(environ, executable):
    """Where tools are looked up: beside the running interpreter (a venv's bin/,
    where pip installs virtme-ng), then $PATH."""
    dirs = [os.path.dirname(executable)] if executable else []
    return dirs + [d for d in environ.get("PATH", os.defpath).split(os.pathsep) if d]


def find_tool(name, environ=None, executable=None):
    """Absolute path of tool ``name`` (see tool_dirs), or None.

    ``environ`` and ``executable`` default to this process's.
    """
    environ = os.environ if environ is None else environ
    executable = sys.executable if executable is None else executable
    return shutil.which(name, path=os.pathsep.join(tool_dirs(environ, executable)))


def path_with(tool, environ=None):
    """{"PATH": ...} with ``tool``'s directory first, for tools that run their
    siblings by name (vng runs virtme-run through the shell)."""
    environ = os.environ if environ is None else environ
    here = os.path.dirname(tool)
    rest = [d for d in environ.get("PATH", os.defpath).split(os.pathsep) if d and d != here]
    return {"PATH": os.pathsep.join([here, *rest])}


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
            _stop_tree(proc)
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
            _stop_tree(proc)
            raise
