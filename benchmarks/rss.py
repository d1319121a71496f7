"""Peak resident memory of the running process, for benchmarks that measure it in a child.

``getrusage(RUSAGE_SELF).ru_maxrss`` cannot be used in a child started by ``subprocess``:
Linux carries across ``exec`` the high-water mark of the forked copy of the parent, so a
child reports at least its parent's size at the fork (measured here: a 14 MiB child of a
1.5 GiB parent reported 1.5 GiB). ``VmHWM`` in ``/proc/self/status`` belongs to the
process image after ``exec``, so it is the child's own peak.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (its own, not a parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:  # no /proc (macOS): ru_maxrss, in bytes there
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
