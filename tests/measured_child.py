"""Runs ``argv`` as a child of this small, fresh process and writes that child's own rusage
(CPU seconds, peak RSS in KiB) as JSON to the file named by HSMKM_TEST_RUSAGE.

Linux records a process's peak RSS across exec, so a child forked straight from the test
process starts with the test process's (large, growing) RSS on its account; forking it from
this process instead measures what the command itself used.
"""

from __future__ import annotations

import json
import os
import sys

target = os.environ.pop("HSMKM_TEST_RUSAGE")
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(target, "w") as fh:
    json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}, fh)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
