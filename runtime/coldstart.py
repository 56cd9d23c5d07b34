"""When each cold-start step finished, measured from the process's exec.

Paper 001 measured 2.25 s (Lambda) to 8.16 s (Cloud Functions) of cold start and asked
for its steps to be overlapped; you cannot shorten what you do not measure per step.
"""

from __future__ import annotations

import json
import os
import sys
import time

# Process-level phases, then per-model ones, in the order they normally complete.
# `first_answer`: the first inference answer, the request that woke the pod; after
# `ready`, it holds what a pod sees of its routing (the queue-proxy's and activator's
# probes and forwarding) and of that request's inference.
PROCESS_PHASES = ("start", "imports", "ready", "first_answer")
MODEL_PHASES = ("fetched", "session", "warmup", "ready")


def process_start_time() -> float:
    """Wall-clock time of this process's exec, from /proc (falls back to now).

    Reading it from the kernel counts the interpreter's own start-up, which a timer
    started in Python would miss.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            # Field 22 (starttime, in clock ticks since boot) comes after the ")" that
            # ends the command name, which may itself contain spaces.
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class ColdStartTimeline:
    """Seconds since exec at which each phase finished, for the process and each model."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = process_start_time() if started_at is None else started_at
        self.process: dict[str, float] = {"start": 0.0}
        self.models: dict[str, dict[str, float]] = {}

    def mark(self, phase: str, model: str | None = None) -> float:
        elapsed = max(0.0, time.time() - self.started_at)
        (self.models.setdefault(model, {}) if model else self.process)[phase] = elapsed
        return elapsed

    def phases(self, model: str | None = None) -> dict[str, float]:
        """Process phases merged with one model's (model phases prefixed `model_`)."""
        merged = dict(self.process)
        for phase, t in self.models.get(model or "", {}).items():
            merged[f"model_{phase}"] = t
        return merged

    def log(self, stream: object = None) -> None:
        """One JSON line with every phase, for log pipelines (stderr by default)."""
        line = {
            "event": "cold_start",
            "started_at": self.started_at,
            "phases_s": {k: round(v, 4) for k, v in self.process.items()},
            "models": {m: {k: round(v, 4) for k, v in p.items()} for m, p in self.models.items()},
        }
        out = stream or sys.stderr
        print(json.dumps(line), file=out, flush=True)  # type: ignore[call-overload]
