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

Each wake from zero (a cold request, or a pre-warm) also costs `wake_s` pod-seconds of the
pods Knative adds around it (see WarmPolicy.wake_cost_s), which holding a pod avoids.

The cheapest wins; `None` is step aside. With no cost to compare (too few gaps), nothing is
held: a model has to show a pattern before it is paid for.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

# Candidate window edges: the gaps' quantiles in 2.5 % steps (41 values), each widened by
# the margin (hybrid histogram's 10 %: the window opens 10 % before, closes 10 % after).
EDGE_STEPS = 40


@dataclass(frozen=True)
class IdleWindow:
    start_s: float  # after the model went idle, a pod is ready from here (0: kept alive)
    end_s: float  # and held until here
    cost_s: float  # expected pod-seconds per gap, cold starts priced in
    aside_cost_s: float  # the same for stepping aside

    @property
    def keep_alive(self) -> bool:
        return self.start_s == 0.0


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly between ranks (numpy's and
    R's default, type 7)."""
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


class Gaps:
    """Sorted idle gaps with prefix sums, so a window's cost is a few binary searches:
    the simulator asks for thousands of windows, and the controller's image has no numpy."""

    def __init__(self, gaps: Iterable[float]) -> None:
        self.sorted = sorted(float(g) for g in gaps)
        self.sums = [0.0, *accumulate(self.sorted)]

    def __len__(self) -> int:
        return len(self.sorted)

    def count(self, lo: float, hi: float, closed_hi: bool = True) -> int:
        """Gaps g with lo < g <= hi (g < hi when not closed_hi)."""
        right = bisect_right(self.sorted, hi) if closed_hi else bisect_left(self.sorted, hi)
        return max(0, right - bisect_right(self.sorted, lo))

    def at(self, x: float) -> int:
        """Gaps exactly x long (a window's edge: a gap there is inside it)."""
        return bisect_right(self.sorted, x) - bisect_left(self.sorted, x)

    def excess(self, lo: float, hi: float, base: float, closed_hi: bool = True) -> float:
        """The sum of g - base over gaps lo < g <= hi (g < hi when not closed_hi)."""
        left = bisect_right(self.sorted, lo)
        right = bisect_right(self.sorted, hi) if closed_hi else bisect_left(self.sorted, hi)
        if right <= left:
            return 0.0
        return self.sums[right] - self.sums[left] - base * (right - left)


def window_cost(
    gaps: Gaps,
    start: float,
    end: float,
    lead_s: float,
    kpa_keep_s: float,
    cold_cost_s: float,
    wake_s: float = 0.0,
) -> float:
    """Mean cost per gap of holding a pod from `start` to `end` into the idle period: pod
    time beyond the KPA's own keep, cold_cost_s for each gap that found no pod, and wake_s
    for each wake from zero (a cold one, or a pre-warm). A gap the KPA's keep covers costs
    nothing. A keep-alive (start within the KPA's keep) holds the KPA's pod on; a pre-warm
    pays from lead_s before start, and a gap that ends before that costs no pod time."""
    k, c, n = kpa_keep_s, cold_cost_s, len(gaps)
    if start <= k:  # a keep-alive to `end`
        if end <= k:
            return gaps.count(k, math.inf) * (c + wake_s) / n
        held = gaps.excess(k, end, k)
        late = gaps.count(end, math.inf)
        return (held + late * (end - k + c + wake_s)) / n
    # The pod is started (and paid for) one lead before the window, never within the KPA's
    # own keep.
    paid = max(start - lead_s, k)
    early = gaps.count(k, start - lead_s, closed_hi=False)  # cold, no pod time yet
    # Cold while the pod is starting: paid <= g < start (and g > k).
    waiting = gaps.count(paid, start, closed_hi=False) + (gaps.at(paid) if paid > k else 0)
    waited = gaps.excess(paid, start, paid, closed_hi=False)
    warm = gaps.excess(start, end, paid) + gaps.at(start) * (start - paid)
    late = gaps.count(end, math.inf)
    total = early * c + waiting * c + waited + warm + late * (end - paid + c)
    # Every gap past the KPA's keep wakes the Revision once (the pre-warm, or a cold
    # request before it); one past the window's end wakes it again.
    return (total + (gaps.count(k, math.inf) + late) * wake_s) / n


def best_window(
    gaps: Iterable[float],
    lead_s: float,
    kpa_keep_s: float,
    cold_cost_s: float,
    margin: float = 0.10,
    max_end_s: float = 4 * 3600.0,
    min_gaps: int = 10,
    wake_s: float = 0.0,
) -> IdleWindow | None:
    """The cheapest window over `gaps` that held a pod for at least `min_gaps` of them, or
    None where stepping aside costs no more (or there are fewer than `min_gaps` gaps)."""
    g = Gaps(gaps)
    n = len(g)
    if n < min_gaps:
        return None
    k = kpa_keep_s
    aside = g.count(k, math.inf) * (cold_cost_s + wake_s) / n
    edges = [quantile(g.sorted, i / EDGE_STEPS) for i in range(EDGE_STEPS + 1)]
    starts = [0.0, *(e * (1 - margin) for e in edges)]
    ends = [min(e * (1 + margin), max_end_s) for e in edges]
    best: tuple[float, float, float] | None = None  # (cost, start, end)
    for start in starts:
        for end in ends:
            if end <= start:
                continue
            # A window must have been right at least min_gaps times: one fitted around a
            # single long gap looks cheap on the very gaps it was fitted to, and is chance.
            inside = g.count(max(start, k), end) + (g.at(start) if start > k else 0)
            if inside < min_gaps:
                continue
            cost = window_cost(g, start, end, lead_s, k, cold_cost_s, wake_s)
            if best is None or cost < best[0]:
                best = (cost, start, end)
    if best is None or not best[0] < aside:
        return None
    cost, start, end = best
    return IdleWindow(start if start > k else 0.0, end, cost, aside)
