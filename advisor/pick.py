"""Step 3 of `kindling advise`: the cheapest candidate that meets the SLO, and why the
others lost.

    pick(search) -> Advice            raises NoCandidateMeetsSlo (the CLI's exit code 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kindling.advisor.search import AdviceError, Candidate, Outcome, Search

RUNNERS_UP = 3


class NoCandidateMeetsSlo(AdviceError):
    """No simulated candidate meets the p99 SLO (and the cold-request bound, if any)."""

    exit_code = 1

    def __init__(self, search: Search, closest: Outcome | None) -> None:
        space = search.space
        bound = "" if space.max_cold_ratio is None else f", cold <= {space.max_cold_ratio:.2%}"
        head = (
            f"{search.measurement.model}: no candidate meets p99 <= {space.slo_p99_ms:g} ms"
            f"{bound} on {search.workload} ({search.simulated} simulated of {search.considered}"
            f"; {_pruned(search)})"
        )
        if closest is not None:
            head += (
                f"; closest: {closest.candidate.label()} at p99 {closest.sim.p99_ms:.0f} ms, "
                f"cold {closest.cold_ratio:.2%}, ${closest.cost_usd:.4f}"
            )
        else:
            setting, cc, p99 = best_measured(search)
            head += (
                f"; the lowest measured p99 is {p99:.0f} ms ({setting} at concurrency {cc}): "
                "the SLO is below what one pod does"
            )
        super().__init__(head)
        self.search = search
        self.closest = closest


@dataclass(frozen=True)
class Ranked:
    outcome: Outcome
    why: str  # why it lost to the pick, or why it failed


@dataclass(frozen=True)
class Advice:
    search: Search
    pick: Outcome
    runners_up: tuple[Ranked, ...]  # the next cheapest that meet the bounds
    failed: tuple[Ranked, ...]  # simulated, missed a bound; cheapest first


def pick(search: Search, runners_up: int = RUNNERS_UP) -> Advice:
    space = search.space
    meeting = search.meeting()  # cheapest first (Search.outcomes is ranked)
    failed = tuple(Ranked(o, why) for o in search.outcomes if (why := o.misses(space)) is not None)
    if not meeting:
        closest = min(
            search.outcomes, key=lambda o: (o.rank()[1], o.cold_ratio, o.rank()), default=None
        )
        raise NoCandidateMeetsSlo(search, closest)
    best = meeting[0]
    others = tuple(Ranked(o, lost_because(o, best)) for o in meeting[1 : 1 + runners_up])
    return Advice(search, best, others, failed)


def lost_because(other: Outcome, best: Outcome) -> str:
    """What the runner-up costs over the pick, and what it does differently."""
    extra = other.cost_usd - best.cost_usd
    if extra > 0:
        why = f"costs ${extra:.4f} more (+{extra / best.cost_usd:.0%})"
    else:
        why = f"same cost, p99 {other.sim.p99_ms:.0f} ms vs {best.sim.p99_ms:.0f} ms"
    diff = differences(other.candidate, best.candidate)
    if diff:
        why += f": {diff}"
    return why + (
        f"; p99 {other.sim.p99_ms:.0f} ms, {other.sim.pod_seconds:.0f} pod-s, "
        f"cold {other.cold_ratio:.2%}"
    )


def differences(a: Candidate, b: Candidate) -> str:
    """`a`'s knobs that differ from `b`'s, as 'x instead of y'."""
    pairs = [
        ("threads", a.setting.threads, b.setting.threads),
        ("max_batch_size", a.setting.max_batch_size, b.setting.max_batch_size),
        (
            "queue delay",
            f"{a.setting.max_queue_delay_ms:g} ms",
            f"{b.setting.max_queue_delay_ms:g} ms",
        ),
        ("memory", f"{a.resources.memory_mib} MiB", f"{b.resources.memory_mib} MiB"),
        ("containerConcurrency", a.container_concurrency, b.container_concurrency),
        ("target", f"{a.target:g}", f"{b.target:g}"),
        ("min-scale", a.min_scale, b.min_scale),
        ("margin_k", a.margin_k, b.margin_k),
    ]
    return ", ".join(f"{name} {x} instead of {y}" for name, x, y in pairs if x != y)


def best_measured(search: Search) -> tuple[str, int, float]:
    """(setting label, concurrency, p99 ms) of the lowest p99 measured anywhere."""
    return min(
        (
            (s.setting.label(), p.concurrency, float(np.percentile(p.latencies_ms, 99)))
            for s in search.measurement.settings
            for p in s.points
        ),
        key=lambda t: t[2],
    )


def _pruned(search: Search) -> str:
    return ", ".join(f"{n} pruned: {reason}" for reason, n in search.pruned.items() if n)
