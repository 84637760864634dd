"""What things cost: operator device time, output bytes, and the host link.

The planner (:mod:`.planner`) and the online victim policy
(:mod:`.remat_policy`) weigh two ways of freeing a page against each other:
copying it to the host and back, which costs link time, and dropping it and
running its operator again, which costs device time. :class:`Costs` keeps the
figures both need, per execution ID, fed by the glue from real runs.

[Note: robust timing]
The first samples of an operator are the least trustworthy (allocator
warm-up, autotuning, a cold cache), and a later sample can be an outlier (a
stall on another stream). So the estimate is the median of the first
``warmup`` samples, and from then on an exponential moving average whose
samples are first clamped to ``[estimate / CLAMP, estimate * CLAMP]``: one
outlier moves the estimate by at most ``alpha`` of a factor ``CLAMP``, while a
real, lasting change is followed within a few dozen samples.

[Note: fallback cost]
An operator never timed is assumed to be memory bound: it reads about two
output sizes and writes one, at ``memory_Bps``, plus one launch
(``launch_s``). That is right for casts and pointwise operators, which are most
of the bytes, and it underestimates matmuls and attention; the glue times
those in the first steps, so the fallback only decides until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

H2D = "h2d"
D2H = "d2h"

# A PCIe 4.0 x16 link as pinned copies see it; the glue measures the real one.
DEFAULT_LINK_BPS = 20e9
# HBM-class device memory; on the cpu device the glue should pass the host's.
DEFAULT_MEMORY_BPS = 1.5e12
DEFAULT_LAUNCH_S = 5e-6
CLAMP = 4.0


@dataclass
class _Estimate:
    warm: list[float] = field(default_factory=list)
    value: float | None = None
    # The median of ``warm`` while it fills: asked for on every victim
    # choice, while samples come only from the first steps.
    warm_median: float | None = None


class Costs:
    """Per execution ID: device seconds and output bytes; the link, each way.

    ``h2d_Bps`` and ``d2h_Bps`` are bytes per second host to device and back
    (set by the glue from a measurement at session start). ``memory_Bps`` and
    ``launch_s`` make the fallback cost of an operator never timed
    ([Note: fallback cost]). ``warmup`` and ``alpha`` shape the running
    estimate ([Note: robust timing]).
    """

    def __init__(self, h2d_Bps: float = DEFAULT_LINK_BPS, d2h_Bps: float = DEFAULT_LINK_BPS,
                 memory_Bps: float = DEFAULT_MEMORY_BPS, launch_s: float = DEFAULT_LAUNCH_S,
                 warmup: int = 5, alpha: float = 0.1) -> None:
        if min(h2d_Bps, d2h_Bps, memory_Bps) <= 0:
            raise ValueError("bandwidths must be positive bytes per second")
        if warmup < 1 or not (0.0 < alpha <= 1.0):
            raise ValueError("warmup must be >= 1 and alpha in (0, 1]")
        self.h2d_Bps = float(h2d_Bps)
        self.d2h_Bps = float(d2h_Bps)
        self.memory_Bps = float(memory_Bps)
        self.launch_s = float(launch_s)
        self.warmup = warmup
        self.alpha = alpha
        self._time: dict[int, _Estimate] = {}
        self._bytes: dict[int, int] = {}

    def note_time(self, eid: int, seconds: float) -> None:
        """One sample of the device time of operator ``eid``."""
        if seconds < 0:
            raise ValueError(f"operator {eid}: negative time {seconds}")
        est = self._time.get(eid)
        if est is None:
            est = self._time[eid] = _Estimate()
        if est.value is None:
            est.warm.append(seconds)
            est.warm_median = _median(est.warm)
            if len(est.warm) == self.warmup:
                est.value = est.warm_median
                est.warm = []
            return
        lo, hi = est.value / CLAMP, est.value * CLAMP
        sample = min(max(seconds, lo), hi) if est.value > 0 else seconds
        est.value += self.alpha * (sample - est.value)

    def note_bytes(self, eid: int, nbytes: int) -> None:
        """Bytes operator ``eid`` produced (the largest seen is kept)."""
        if nbytes > self._bytes.get(eid, -1):
            self._bytes[eid] = int(nbytes)

    def seconds(self, eid: int) -> float | None:
        """The running estimate of ``eid``'s device time; None if never timed."""
        est = self._time.get(eid)
        if est is None:
            return None
        if est.value is not None:
            return est.value
        return est.warm_median

    def nbytes(self, eid: int) -> int | None:
        return self._bytes.get(eid)

    def copy_seconds(self, nbytes: int, direction: str) -> float:
        """Seconds the link takes to move ``nbytes`` in ``direction`` (H2D or D2H)."""
        if direction == H2D:
            return nbytes / self.h2d_Bps
        if direction == D2H:
            return nbytes / self.d2h_Bps
        raise ValueError(f"direction {direction!r}: use {H2D!r} or {D2H!r}")

    def recompute_seconds(self, eid: int) -> float | None:
        """Seconds to run ``eid`` again: its estimate, else the fallback
        ([Note: fallback cost]); None if it was neither timed nor sized."""
        s = self.seconds(eid)
        if s is not None:
            return s
        nbytes = self._bytes.get(eid)
        if nbytes is None:
            return None
        return self.fallback_seconds(nbytes)

    def fallback_seconds(self, nbytes: int) -> float:
        """What an operator never timed that made ``nbytes`` is assumed to take ([Note: fallback cost])."""
        return self.launch_s + 3 * nbytes / self.memory_Bps


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])
