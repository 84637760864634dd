"""A live status line on the terminal while ``deepum run`` trains.

Off when stderr is not a terminal (logs, pipes, CI) and under ``--quiet``.
A daemon thread samples the pager's counters twice a second; the counters
are plain ints the pager updates under its lock, so reading them without the
lock gives at worst a value one operator old.

[Note: the status line and the program's output]
The line is drawn at the start of a terminal line and must never be spliced
into what the program prints. While it is shown, sys.stdout and sys.stderr
are wrapped: a write first erases the line (carriage return, erase to end of
line), and the line is drawn again only once the program's output ends with a
newline. One lock orders the drawing thread and the program's writes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO


def fmt_bytes(n: float, unit: str | None = None) -> str:
    """``n`` bytes in the largest unit it fills (or in ``unit``): '600 KiB', '12.5 MiB', '1.25 GiB'."""
    sizes = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
    for name, size in sizes:
        if name == unit or (unit is None and abs(n) >= size):
            v = n / size
            return f"{v:.3g} {name}" if abs(v) < 100 else f"{v:.0f} {name}"
    return f"{int(n)} B"


def unit_for(nbytes: int) -> str:
    """The unit a size of about ``nbytes`` reads best in."""
    return "GiB" if nbytes >= 1 << 30 else "MiB"


class _Erasing:
    """A text stream that erases the status line before the program writes to it."""

    def __init__(self, inner: TextIO, status: StatusLine) -> None:
        self._inner = inner
        self._status = status

    def write(self, s: str) -> int:
        with self._status.lock:
            self._status.erase()
            n = self._inner.write(s)
            if s:
                self._status.at_line_start = s.endswith("\n")
            return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class StatusLine:
    def __init__(self, session, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.session = session
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval if interval is not None else float(os.environ.get("DEEPUM_STATUS_INTERVAL", "0.5"))
        self.lock = threading.RLock()
        self.shown = False
        self.at_line_start = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wrapped: list[tuple[str, _Erasing]] = []

    def start(self) -> bool:
        """Start if the stream is a terminal; return whether it started."""
        isatty = getattr(self.stream, "isatty", None)
        if not (isatty and isatty()):
            return False
        for name in ("stdout", "stderr"):
            wrapper = _Erasing(getattr(sys, name), self)
            setattr(sys, name, wrapper)
            self._wrapped.append((name, wrapper))
        self._thread = threading.Thread(target=self._run, name="deepum-status", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self.lock:
            self.erase()
        for name, wrapper in self._wrapped:
            if getattr(sys, name) is wrapper:  # the program may have replaced it meanwhile
                setattr(sys, name, wrapper._inner)
        self._wrapped = []

    def erase(self) -> None:
        """Take the line off the terminal (called under the lock)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def show(self, line: str) -> None:
        with self.lock:
            if not self.at_line_start:
                return
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self.shown = True

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.interval):
            pager = self.session.pager
            if pager is None:
                continue
            pr = pager.progress()
            now = (time.perf_counter(), pr.ops, pr.faults, pr.bytes_to_device, pr.bytes_to_host,
                   pr.stall_seconds, pr.resident_bytes, pr.budget_bytes)
            if last is not None:
                self.show(self.line(now, last))
            last = now

    def line(self, now: tuple, last: tuple) -> str:
        """The status from two samples: (time, ops, faults, bytes in, bytes out, stall, resident, budget)."""
        dt = max(now[0] - last[0], 1e-9)
        resident_bytes, budget = now[6], now[7]
        unit = unit_for(budget)
        resident = fmt_bytes(resident_bytes, unit).split()[0]
        return (f"deepum: {now[1]} ops | {(now[2] - last[2]) / dt:.0f} faults/s | "
                f"in {fmt_bytes((now[3] - last[3]) / dt)}/s, out {fmt_bytes((now[4] - last[4]) / dt)}/s | "
                f"stall {100 * (now[5] - last[5]) / dt:.0f}% | "
                f"resident {resident}/{fmt_bytes(budget, unit)}")
