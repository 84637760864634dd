"""Building the small native extensions (engine/native/) through torch's extension API.

[Note: a build lock left behind]
``torch.utils.cpp_extension.load`` serialises builds of one extension with a
lock file in its build directory and waits, with no limit, while the file
exists. A process killed during a build (a timeout, Ctrl-C) leaves the file,
and every later session then hangs at its first use of the extension. A
build takes seconds, so a lock older than Thresholds.native_lock_stale_s is
taken as left behind and removed, with a warning naming it.
"""

from __future__ import annotations

import logging
import os
import time

from ..core.config import THRESHOLDS

log = logging.getLogger("deepum")


def build(name: str, source: str):
    """The extension ``name`` built from ``source`` (or loaded from torch's cache); raises
    what the build raises (no compiler, no headers, a read-only cache)."""
    from torch.utils.cpp_extension import load  # noqa: PLC0415  (imports setuptools)

    try:  # torch's private helper: where it is missing, the build goes on as torch's load does
        from torch.utils.cpp_extension import _get_build_directory  # noqa: PLC0415

        clear_stale_lock(os.path.join(_get_build_directory(name, False), "lock"))
    except (ImportError, OSError, TypeError):
        pass
    return load(name=name, sources=[source], extra_cflags=["-O2"], verbose=False)


def clear_stale_lock(path: str, stale_s: float = THRESHOLDS.native_lock_stale_s) -> bool:
    """Remove the build lock at ``path`` if it is older than ``stale_s``; whether it was."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return False  # no lock: the usual case
    if age < stale_s:
        return False  # another process may be building now: torch's load waits for it
    try:
        os.remove(path)
    except OSError:
        return False
    log.warning("deepum: removed a build lock left %.0f s ago by a process that did not finish "
                "(%s)", age, path)
    return True
