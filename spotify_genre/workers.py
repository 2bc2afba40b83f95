"""Worker processes that end when their parent does, however it ends (even by SIGKILL), rather than run on unseen:
predict's `--workers` pool and tune's workers."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAX_WORKERS = 64  # worker processes a command may start: each holds its own model, about 0.5 GB


def _pdeathsig(sent: int) -> bool:
    """Ask Linux to send `sent` to this process when the thread that started it ends; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sent), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent: int) -> None:
    """End this worker when `parent` ends, rather than run on holding its memory (and Python's resource tracker,
    which waits for every holder of its pipe): on Linux at once, by PR_SET_PDEATHSIG (SIGKILL, sent when the
    parent's thread that started this process ends: its main thread, in predict's pool and tune); elsewhere
    within a second, by a thread that watches for a new parent."""
    if _pdeathsig(signal.SIGKILL):
        if os.getppid() != parent:  # the parent ended before the request was in place
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
