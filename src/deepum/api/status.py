"""A live status line on the terminal while ``deepum run`` trains.

Off when stderr is not a terminal (logs, pipes, CI) and under ``--quiet``.
A daemon thread samples the pager's counters twice a second; the counters
are plain ints the pager updates under its lock, so reading them without the
lock gives at worst a value one operator old.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


class StatusLine:
    def __init__(self, session, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.session = session
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval if interval is not None else float(os.environ.get("DEEPUM_STATUS_INTERVAL", "0.5"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start if the stream is a terminal; return whether it started."""
        isatty = getattr(self.stream, "isatty", None)
        if not (isatty and isatty()):
            return False
        self._thread = threading.Thread(target=self._run, name="deepum-status", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.interval):
            pager = self.session.pager
            if pager is None:
                continue
            pr = pager.progress()
            now = (time.perf_counter(), pr.ops, pr.faults, pr.bytes_to_device, pr.bytes_to_host,
                   pr.stall_seconds)
            if last is not None:
                dt = max(now[0] - last[0], 1e-9)
                line = (f"deepum: {now[1]} ops | {(now[2] - last[2]) / dt:.0f} faults/s | "
                        f"in {_gb((now[3] - last[3]) / dt)} GB/s, out {_gb((now[4] - last[4]) / dt)} GB/s | "
                        f"stall {100 * (now[5] - last[5]) / dt:.0f}% | "
                        f"resident {pr.resident_bytes / 2**30:.2f}/{pr.budget_bytes / 2**30:.2f} GiB")
                self.stream.write("\r" + line + "\x1b[K")
                self.stream.flush()
            last = now
