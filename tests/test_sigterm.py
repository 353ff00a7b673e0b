"""SIGTERM to any vnuma-sched command is Ctrl-C: it exits 130 with one line, and the
process trees it started in sessions of their own (a guest's vng and QEMU) are
stopped, not left running."""

import os
import signal
import subprocess
import sys
import time

from helpers import REPO

# A command of the real CLI group that starts a long child through the Runner.
CODE = """
import sys, click
from vnuma_sched.cli.main import main
from vnuma_sched.runner import Runner

@main.command("sleeper")
def sleeper():
    Runner().run(["sh", "-c", "echo $$ > " + sys.argv[1] + "; exec sleep 300"])

main(["sleeper"])
"""


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_children_and_exits_130(tmp_path):
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", CODE, str(pidfile)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert alive(child)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vnuma-sched: error: interrupted"
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:    # reaped by its own parent
        time.sleep(0.05)
    assert not alive(child)
