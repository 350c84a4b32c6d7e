"""A process of a 2-process `frpo launch` that records its pid and then waits: tests/test_compute.py kills the
launcher with SIGKILL and checks that this process dies with it (frpo.launch.die_with_launcher)."""
import os
import sys
import time

from frpo.launch import die_with_launcher

die_with_launcher()
out = sys.argv[1]
with open(os.path.join(out, f"pid{os.environ['RANK']}"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(600)
