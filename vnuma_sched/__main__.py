"""Allow ``python -m vnuma_sched``."""

from vnuma_sched.cli.main import main

main()
