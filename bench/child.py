"""Run a command as this small process's only child, then write its wall time and peak RSS to a file.

Usage: python -S bench/child.py RESULT_FILE COMMAND [ARG...]. The child's output goes where this process's goes.

Why a go-between: Linux counts into a child's peak RSS (ru_maxrss) the memory of the process it was forked from,
so a command started straight from the benchmark, which holds torch and data by then, would report the
benchmark's size instead of its own. Forked from this process (a few MiB), the figure is the command's.
"""

import os
import sys
import time


def main() -> int:
    result, args = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(args[0], args)
        except OSError as error:
            os.write(2, f"cannot run {args[0]}: {error}\n".encode())
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    with open(result, "w") as file:
        file.write(f"{seconds!r} {usage.ru_maxrss * 1024}\n")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
