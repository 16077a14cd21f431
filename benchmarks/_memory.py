"""Resident memory of this process, for the benchmarks (standard library only: the peer
benchmark's workers run in other environments too)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """The peak resident memory so far (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over from the parent through fork and exec, so a worker started by a benchmark
    that built a model would report the parent's peak."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def rss_mb() -> float:
    """The resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
