"""When to hold a pod while a model is idle, from the idle gaps it has shown: keep alive,
pre-warm, or step aside.

    best_window(gaps, lead_s=16, kpa_keep_s=60, cold_cost_s=600) -> IdleWindow | None

An idle gap is the time from a model going idle to its next request. Over the gaps seen,
each choice has an expected cost per gap, in pod-seconds, with a cold start priced at
`cold_cost_s` pod-seconds (ski rental: Karlin et al. 1988, "Competitive snoopy caching",
Algorithmica 3; a fixed keep-alive of that length is the rule that is never worse than
twice the best offline choice; AWS Lambda's 10-minute keep-alive, the state of the practice
in Shahrad et al. ATC'20 §4.1, prices one at 600 pod-seconds):

- **step aside**: hold nothing beyond what Knative's autoscaler keeps anyway (its stable
  window, `kpa_keep_s`): every gap longer than that pays a cold start;
- **a window [start, end]** after the model goes idle: a pod is held (or started `lead_s`
  before `start`, to be ready at it) until `end`. A gap inside the window is warm and costs
  the pod's time; one before it is cold; one after it costs the window and a cold start.
  A window from 0 is a keep-alive; a later one is Shahrad et al.'s pre-warm (their hybrid
  histogram policy, §4.2, picks its window from the 5th and 99th percentiles of the idle
  times with 10 % margins; here the window is the one the cost says, among the gaps'
  quantiles with the same margin).

The cheapest wins; `None` is step aside. With no cost to compare (too few gaps), nothing is
held: a model has to show a pattern before it is paid for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Candidate window edges: the gaps' quantiles in 2.5 % steps (41 values), each widened by
# the margin (hybrid histogram's 10 %: the window opens 10 % before, closes 10 % after).
EDGE_QUANTILES = np.linspace(0.0, 1.0, 41)


@dataclass(frozen=True)
class IdleWindow:
    start_s: float  # after the model went idle, a pod is ready from here (0: kept alive)
    end_s: float  # and held until here
    cost_s: float  # expected pod-seconds per gap, cold starts priced in
    aside_cost_s: float  # the same for stepping aside

    @property
    def keep_alive(self) -> bool:
        return self.start_s == 0.0


def gap_costs(
    gaps: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    lead_s: float,
    kpa_keep_s: float,
    cold_cost_s: float,
) -> np.ndarray:
    """Mean cost per gap of each window (starts[i], ends[i]); pod time beyond the KPA's own
    keep counts, and a pre-warmed pod is paid from its start, `lead_s` before the window."""
    g = gaps[None, :]
    start, end = starts[:, None], ends[:, None]
    kept = start <= kpa_keep_s  # a keep-alive: the KPA's pod is held on
    paid_from = np.where(kept, kpa_keep_s, np.maximum(start - lead_s, kpa_keep_s))
    warm = (g <= kpa_keep_s) | ((g >= start) & (g <= end))
    cold = ~warm
    pod_time = np.clip(np.minimum(g, end) - paid_from, 0.0, None)
    # A gap that ends before a pre-warmed pod starts costs no pod time.
    pod_time = np.where(~kept & (g < start - lead_s), 0.0, pod_time)
    return (pod_time + cold * cold_cost_s).mean(axis=1)


def best_window(
    gaps: np.ndarray | list[float],
    lead_s: float,
    kpa_keep_s: float,
    cold_cost_s: float,
    margin: float = 0.10,
    max_end_s: float = 4 * 3600.0,
    min_gaps: int = 10,
) -> IdleWindow | None:
    """The cheapest window over `gaps` that held a pod for at least `min_gaps` of them, or
    None where stepping aside costs no more (or there are fewer than `min_gaps` gaps)."""
    g = np.asarray(gaps, dtype=float)
    if len(g) < min_gaps:
        return None
    aside = float(((g > kpa_keep_s) * cold_cost_s).mean())
    edges = np.quantile(g, EDGE_QUANTILES)
    starts = np.concatenate([[0.0], edges * (1 - margin)])
    ends = np.minimum(edges * (1 + margin), max_end_s)
    s, e = np.meshgrid(starts, ends, indexing="ij")
    keep = e.ravel() > s.ravel()
    s, e = s.ravel()[keep], e.ravel()[keep]
    costs = gap_costs(g, s, e, lead_s, kpa_keep_s, cold_cost_s)
    # A window must have been right at least min_gaps times: one fitted around a single
    # long gap looks cheap on the very gaps it was fitted to, and is chance.
    inside = (g[None, :] >= s[:, None]) & (g[None, :] <= e[:, None]) & (g[None, :] > kpa_keep_s)
    costs = np.where(inside.sum(axis=1) >= min_gaps, costs, np.inf)
    best = int(np.argmin(costs))
    if not costs[best] < aside:
        return None
    start = float(s[best]) if s[best] > kpa_keep_s else 0.0
    return IdleWindow(start, float(e[best]), float(costs[best]), aside)
