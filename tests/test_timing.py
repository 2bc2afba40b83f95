"""pipeline/timing.py: a stage process's age, and its exit with main()'s code, flushed, the garbage collector
spared the last walk."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import ROOT


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, **kwargs)


def test_seconds_since_start_is_this_process_age():
    """A fresh Python's age when it asks: at least the time it slept, never more than its own wall time (plus the
    kernel's clock tick)."""
    started = time.perf_counter()
    result = _python("from pipeline.timing import seconds_since_start; import time; time.sleep(0.3); "
                     "print(seconds_since_start())", check=True)
    wall = time.perf_counter() - started
    age = float(result.stdout)
    assert 0.3 <= age <= wall + 0.02, (age, wall)


def test_exit_with_exits_with_mains_code_after_everything_is_written(tmp_path):
    """The process's code is main()'s, what main() printed and the files it closed are written, exit handlers
    run, and the objects alive at the end are frozen (the collector does not walk them)."""
    code = (
        "import atexit, gc\n"
        "from pipeline.timing import exit_with\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "def main():\n"
        f"    with open({str(tmp_path / 'written.txt')!r}, 'w') as out:\n"
        "        out.write('all of it')\n"
        "    print('from main', end='')\n"
        "    atexit.register(lambda: print(' frozen', gc.get_freeze_count() > 0, end=''))\n"
        "    return 3\n"
        "exit_with(main)\n")
    result = _python(code)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "from main frozen Trueexit handler ran\n"
    assert (tmp_path / "written.txt").read_text() == "all of it"
