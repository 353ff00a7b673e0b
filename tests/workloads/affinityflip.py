#!/usr/bin/env python3
"""A migration-heavy load: a busy child (comm "affinityflip") whose affinity is
flipped between CPU 0 and CPU 1, each flip a forced migration.

    affinityflip.py [flips] [period_s]

Prints the child's pid on stdout (first line) before it starts flipping.
"""

import os
import signal
import sys
import time

COMM = "affinityflip"


def busy():
    with open("/proc/self/comm", "w", encoding="ascii") as f:
        f.write(COMM)
    while True:
        pass


def main(flips=20, period=0.05):
    pid = os.fork()
    if pid == 0:
        busy()
    print(pid, flush=True)
    try:
        time.sleep(period)
        for i in range(flips):
            os.sched_setaffinity(pid, {i % 2})
            time.sleep(period)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(sys.argv[1]) if i == 0 else float(sys.argv[2])
                    for i in range(min(len(sys.argv) - 1, 2)))))
