"""Resident memory of a process, read from /proc (Linux), for the benchmark scripts."""
from __future__ import annotations

import resource


def rss_mib(pid: int | str = "self") -> float:
    """Current resident memory (MiB) of a process on this machine; NaN if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
