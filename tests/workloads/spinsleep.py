#!/usr/bin/env python3
"""More runnable tasks than CPUs that compute and sleep in turns, so CPUs keep
going idle while others have a queue: wake-up placement and newidle balancing
both move tasks.

    spinsleep.py [procs] [seconds] [exit_code]
"""

import os
import sys
import time


def worker(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        spin = time.monotonic() + 0.002
        while time.monotonic() < spin:
            pass
        time.sleep(0.001)


def main(procs=6, seconds=3, code=0):
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            worker(seconds)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return code


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:4])))
