#!/usr/bin/env python3
"""A sleep/wake workload: pairs of processes ping-pong over pipes, sleeping
briefly between messages so CPUs go idle and wake-ups need IPIs.

    sleepwake.py [pairs] [rounds] [exit_code]
"""

import sys
import time
from multiprocessing import Pipe, Process


def pinger(conn, rounds):
    for _ in range(rounds):
        conn.send(b"x")
        conn.recv()


def ponger(conn, rounds):
    for _ in range(rounds):
        conn.recv()
        time.sleep(0.0002)
        conn.send(b"y")


def main(pairs=2, rounds=2000, code=0):
    procs = []
    for _ in range(pairs):
        a, b = Pipe()
        procs += [Process(target=pinger, args=(a, rounds)),
                  Process(target=ponger, args=(b, rounds))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return code


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:4])))
