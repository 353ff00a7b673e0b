"""Allow ``python -m vnuma_sched``."""

from vnuma_sched.cli import main

main()
