"""A --measure-cmd for the bisect tests: the metric comes from the image.

The fake kernel's image ends with the tree's 'metric' file ("value=N" and
optionally "noise=M"); each run prints N plus a fixed jitter, or N plus
+-M alternately when noisy. Every call appends the commit to $FAKE_MEASURE_LOG;
a commit listed in $FAKE_MEASURE_ABORT: exit 3 (an infrastructure failure)."""

import json
import os
import re
import sys

JITTER = (0, -2, 3, -1, 2, 1, -3)

if os.environ["VNUMA_SCHED_COMMIT"] in os.environ.get("FAKE_MEASURE_ABORT", "").split(","):
    print("lab unreachable", file=sys.stderr)
    sys.exit(3)
text = open(os.environ["VNUMA_SCHED_IMAGE"], encoding="utf-8").read()
value = int(re.search(r"^value=(\d+)", text, re.M).group(1))
noise = re.search(r"^noise=(\d+)", text, re.M)
with open(os.environ["FAKE_MEASURE_LOG"], "a", encoding="utf-8") as log:
    log.write(os.environ["VNUMA_SCHED_COMMIT"] + "\n")
for i in range(int(os.environ["VNUMA_SCHED_RUNS"])):
    v = value + (int(noise.group(1)) * (-1) ** i if noise else JITTER[i % len(JITTER)])
    print(json.dumps({"metrics": {os.environ["VNUMA_SCHED_METRIC"]: v}}))
