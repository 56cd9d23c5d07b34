"""How many CPUs this container may use: the cgroup quota, not the node's core count.

onnxruntime defaults to one intra-op thread per *node* core; in a pod limited to 1 CPU on
a 64-core node that means 64 threads time-sliced onto one CPU by CFS throttling, which
wrecks tail latency. So the thread count follows the quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, else v1 `cpu.cfs_*`), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may run on, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def spinning_by_default(threads: int, root: Path = CGROUP_ROOT) -> bool:
    """Whether onnxruntime's idle threads should spin (KINDLING_SPIN=auto): only when a CFS
    quota covers every one of the `threads` intra-op threads.

    Measured with loadtest/bench_spinning.py (MobileNetV2, 2 threads, 2-core VM; README
    "Latency"): spinning cuts latency at concurrency 1 by 0.6-1.2 ms wherever the cores
    are free, and costs 15-25 % more CPU per request. Under a quota of 2 CPUs nothing was
    throttled either way; under 1.5 or 1 CPU it was throttled more (1 CPU, concurrency 1:
    3.4 s against 1.6 s) and p99 rose (1.5 CPUs: 21-27 ms against 11-12). With no quota
    the pod shares the node's cores (and takes one thread per core): beside one busy
    process, spinning made latency 2.1-6.6 ms worse, throughput 30-36 % lower and CPU per
    request 70-90 % higher. The runtime cannot see its neighbours, so without a quota it
    does not spin."""
    limit = cgroup_cpu_limit(root)
    return limit is not None and limit >= threads
