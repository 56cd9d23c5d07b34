"""The simulator's event engine: one model's pods, its request queue and the clock.

Modelled on Knative Serving's data path:

- a pod is created, starts (a cold start sampled from the measured distribution), then is
  ready; pod-seconds count from creation to removal (or the end of the window);
- each ready pod serves up to `container_concurrency` requests at once (1 for CPU
  inference); beyond that, requests wait (queue-proxy), and while no pod is ready the
  activator buffers them. Both are one FIFO queue here, dispatched to any ready pod with a
  free slot: the activator's load balancing, which is in the path at every scale when
  target-burst-capacity exceeds what the pods can take (see baselines.KnativeKpa);
- a request's latency is its wait plus its service time (sampled from the measured
  distribution); it is a *cold request* when the pod that served it was not ready when
  it arrived: it waited on a pod start;
- removing pods takes starting pods first, then idle ones; busy ones drain (finish what
  they hold, take nothing new), as a terminating pod's queue-proxy does.

A policy steers the pods through `Engine.scale_to` and `Engine.start_pod`/`remove_pod`
from two hooks the engine calls: `on_second(engine, t)` at every whole second (after the
second's events) and `on_arrival(engine, t)` after each request is queued or served.
Everything is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np


@dataclass
class Pod:
    id: int
    created: float
    ready_at: float
    busy: int = 0
    last_used: float = 0.0
    ready: bool = False
    draining: bool = False
    removed: float | None = None
    listed: bool = False  # in Engine.free_ready
    prestarted: bool = False  # up before the run (the initial scale): never a start


class Policy(Protocol):
    name: str

    def on_second(self, engine: Engine, t: float) -> None: ...

    def on_arrival(self, engine: Engine, t: float) -> None: ...


@dataclass
class Timeline:
    """Per whole second, for the plots."""

    arrivals: list[int] = field(default_factory=list)
    ready_pods: list[int] = field(default_factory=list)
    pods: list[int] = field(default_factory=list)
    cold: list[int] = field(default_factory=list)
    forecast: list[float] = field(default_factory=list)

    def after(self, second: int) -> Timeline:
        """The seconds from `second` on (a run's counted part, after its history)."""
        return Timeline(*(getattr(self, f.name)[second:] for f in fields(self)))


class Engine:
    def __init__(
        self,
        arrivals: np.ndarray,
        service_s: np.ndarray,
        end_s: float,
        cold_start: np.random.Generator,
        cold_start_samples: np.ndarray,
        container_concurrency: int = 1,
        pod_overhead_s: float | np.ndarray = 0.0,
        drain_s: float = 0.0,
    ) -> None:
        if len(arrivals) != len(service_s):
            raise ValueError("one service time per arrival")
        self.arrivals = arrivals
        self.service_s = service_s
        self.end_s = float(end_s)
        self.cc = container_concurrency
        self._rng = cold_start
        self._cold_samples = cold_start_samples
        # What the cluster adds to each cold start: a constant, or samples to draw from.
        self._overhead = np.atleast_1d(np.asarray(pod_overhead_s, dtype=float))
        # A removed pod still holds its node's resources this long: it is Terminating
        # while its queue-proxy drains (simulate.py DRAIN_S).
        self.drain_s = drain_s
        self.pods: dict[int, Pod] = {}
        self.removed: list[Pod] = []
        self._next_id = 0
        self.queue: deque[int] = deque()  # request indices, FIFO
        self._events: list[tuple[float, int, int, int]] = []  # (t, kind, seq, payload)
        self._seq = 0
        # Pod ids with a free slot, a min-heap (entries may be stale): the oldest pod with
        # room gets the next request, as the activator's firstAvailableLBPolicy does for
        # containerConcurrency <= 3 (knative/serving pkg/activator/net/throttler.go).
        self.free_ready: list[int] = []
        # Per-request results.
        n = len(arrivals)
        self.start = np.full(n, np.nan)
        self.cold = np.zeros(n, dtype=bool)
        # Revision-wide concurrency (queued + in service), integrated per second.
        self.in_system = 0
        # When the system last emptied (None: it holds requests, or never held one), and
        # the idle gap the latest arrival ended (None: it found requests in the system).
        self.idle_since: float | None = None
        self.last_gap: float | None = None
        self._conc_area = 0.0
        self._conc_t = 0.0
        self.now = 0.0
        self.arrived = 0
        # Requests a pod has taken, ever: the runtimes' kindling_requests_total summed.
        self.served = 0
        self.timeline = Timeline()
        self._second_arrivals = 0
        self._second_cold = 0
        self.forecast_now = float("nan")
        # Stop at the first cold request arriving at or after this time (None: run to the
        # end): a search for a setting with no cold request needs no more of a run.
        self.stop_on_cold_after: float | None = None
        self.stopped = False

    # -- pods ---------------------------------------------------------------------------

    def start_pod(self, t: float, warm: bool = False) -> Pod:
        """Create a pod at t; it is ready after a sampled cold start (at once if `warm`:
        the pod the revision's initial scale started before the run)."""
        cold = 0.0
        if not warm:
            cold = float(self._rng.choice(self._cold_samples))
            overhead = self._overhead
            cold += float(overhead[0] if len(overhead) == 1 else self._rng.choice(overhead))
        pod = Pod(self._next_id, created=t, ready_at=t + cold, last_used=t, prestarted=warm)
        self._next_id += 1
        self.pods[pod.id] = pod
        self._push(pod.ready_at, _READY, pod.id)
        return pod

    def remove_pod(self, pod: Pod, t: float) -> None:
        """Take a pod away: at once when it holds nothing, else after it drains."""
        if pod.busy:
            pod.draining = True
            return
        pod.removed = t
        del self.pods[pod.id]
        self.removed.append(pod)

    def active_pods(self) -> list[Pod]:
        """Pods that count towards the scale: starting or ready, not draining."""
        return [p for p in self.pods.values() if not p.draining]

    def ready_count(self) -> int:
        return sum(1 for p in self.pods.values() if p.ready and not p.draining)

    def starting_count(self) -> int:
        return sum(1 for p in self.pods.values() if not p.ready)

    def idle_ready(self) -> list[Pod]:
        return [p for p in self.pods.values() if p.ready and not p.draining and p.busy == 0]

    def scale_to(self, n: int, t: float) -> None:
        """A Deployment's replicas set to n: start pods, or remove starting, then idle
        (longest idle first), then busy ones (draining)."""
        active = self.active_pods()
        if n > len(active):
            for _ in range(n - len(active)):
                self.start_pod(t)
            return
        excess = len(active) - n
        if excess <= 0:
            return
        starting = sorted((p for p in active if not p.ready), key=lambda p: -p.created)
        idle = sorted((p for p in active if p.ready and p.busy == 0), key=lambda p: p.last_used)
        busy = sorted((p for p in active if p.ready and p.busy > 0), key=lambda p: -p.created)
        for pod in (starting + idle + busy)[:excess]:
            self.remove_pod(pod, t)

    # -- the clock ----------------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, payload))

    def _advance(self, t: float) -> None:
        self._conc_area += self.in_system * (t - self._conc_t)
        self._conc_t = t
        self.now = t

    def take_concurrency(self) -> float:
        """Mean requests in the system since the last call (the second just ended)."""
        area, self._conc_area = self._conc_area, 0.0
        return area

    def run(self, policy: Policy, initial_pods: int = 1) -> None:
        """Run to end_s. `initial_pods` are up and ready at 0: the revision was deployed
        before the run, and its initial-scale pod (Knative's default 1) came up."""
        for _ in range(initial_pods):
            self._ready(self.start_pod(0.0, warm=True).id, 0.0)
        arrivals = self.arrivals
        n = len(arrivals)
        i = 0
        second = 1.0
        end = self.end_s
        while True:
            next_event = self._events[0][0] if self._events else float("inf")
            next_arrival = arrivals[i] if i < n else float("inf")
            t = min(next_event, next_arrival, second)
            if t > end or self.stopped:
                break
            self._advance(t)
            if t == next_event and next_event <= next_arrival:
                _, kind, _, payload = heapq.heappop(self._events)
                if kind == _DONE:
                    self._done(payload, t)
                else:
                    self._ready(payload, t)
            elif t == next_arrival and next_arrival < second:
                self._arrive(i, t)
                i += 1
                policy.on_arrival(self, t)
            else:
                self._close_second(policy, t)
                second += 1.0
                if not (self.pods or self._events or self.queue):
                    second = self._skip_idle(policy, second, next_arrival)
        self._advance(end)
        self.arrived = i
        for pod in list(self.pods.values()):
            pod.removed = end
            self.removed.append(pod)
        self.pods.clear()

    def _skip_idle(self, policy: Policy, second: float, next_arrival: float) -> float:
        """With no pod, no request and no event pending, jump to the earlier of the second
        the next arrival falls in and the second the policy next acts at
        (`resume_at(engine, second)`: the same results, simulated faster; a policy without
        it is called every second). The seconds skipped go on the timeline as empty."""
        resume_at = getattr(policy, "resume_at", None)
        if resume_at is None:
            return second
        arrival_second = math.floor(next_arrival) + 1 if next_arrival < math.inf else math.inf
        target = min(resume_at(self, second), arrival_second, math.floor(self.end_s) + 1)
        skipped = int(target - second)
        if skipped <= 0:
            return second
        tl = self.timeline
        tl.arrivals.extend([0] * skipped)
        tl.cold.extend([0] * skipped)
        tl.ready_pods.extend([0] * skipped)
        tl.pods.extend([0] * skipped)
        tl.forecast.extend([self.forecast_now] * skipped)
        return second + skipped

    def _close_second(self, policy: Policy, t: float) -> None:
        policy.on_second(self, t)
        tl = self.timeline
        tl.arrivals.append(self._second_arrivals)
        tl.cold.append(self._second_cold)
        tl.ready_pods.append(self.ready_count())
        tl.pods.append(len(self.active_pods()))
        tl.forecast.append(self.forecast_now)
        self._second_arrivals = 0
        self._second_cold = 0

    # -- requests -----------------------------------------------------------------------

    def _free_pod(self) -> Pod | None:
        while self.free_ready:
            pod = self.pods.get(self.free_ready[0])
            if pod is not None and pod.ready and not pod.draining and pod.busy < self.cc:
                return pod
            heapq.heappop(self.free_ready)
            if pod is not None:
                pod.listed = False
        return None

    def _serve(self, request: int, pod: Pod, t: float) -> None:
        pod.busy += 1
        if pod.busy >= self.cc and self.free_ready and self.free_ready[0] == pod.id:
            heapq.heappop(self.free_ready)
            pod.listed = False
        self.start[request] = t
        self.served += 1
        if pod.ready_at > self.arrivals[request]:
            self.cold[request] = True
            self._second_cold += 1
            after = self.stop_on_cold_after
            if after is not None and self.arrivals[request] >= after:
                self.stopped = True
        self._push(t + float(self.service_s[request]), _DONE, pod.id)

    def _arrive(self, request: int, t: float) -> None:
        self.last_gap = t - self.idle_since if self.idle_since is not None else None
        self.idle_since = None
        self.in_system += 1
        self._second_arrivals += 1
        pod = self._free_pod()
        if pod is not None and not self.queue:
            self._serve(request, pod, t)
        else:
            self.queue.append(request)

    def _ready(self, pod_id: int, t: float) -> None:
        pod = self.pods.get(pod_id)
        if pod is None:
            return  # removed while starting
        pod.ready = True
        pod.last_used = t
        if pod.draining:
            self.remove_pod(pod, t)
            return
        self._fill(pod, t)

    def _fill(self, pod: Pod, t: float) -> None:
        while self.queue and pod.busy < self.cc:
            self._serve(self.queue.popleft(), pod, t)
        if pod.busy < self.cc and not pod.listed:
            heapq.heappush(self.free_ready, pod.id)
            pod.listed = True

    def _done(self, pod_id: int, t: float) -> None:
        self.in_system -= 1
        if self.in_system == 0:
            self.idle_since = t
        pod = self.pods[pod_id]
        pod.busy -= 1
        pod.last_used = t
        if pod.draining:
            if pod.busy == 0:
                self.remove_pod(pod, t)
            return
        self._fill(pod, t)

    # -- results ------------------------------------------------------------------------

    def pod_seconds(self, since_s: float = 0.0) -> float:
        """Pod-seconds from creation to removal and its drain, counting only what lies
        after since_s and before the end."""
        total = 0.0
        for p in self.removed:
            gone = self.end_s if p.removed is None else min(p.removed + self.drain_s, self.end_s)
            total += max(0.0, gone - max(p.created, since_s))
        return total

    def pods_started(self, since_s: float = 0.0) -> int:
        """Pods created at or after since_s: instances started, as Lambda counts cold
        starts, whether or not a request waited on them (one started under a keep-alive
        or a forecast is a start too)."""
        pods = (*self.removed, *self.pods.values())
        return sum(1 for p in pods if p.created >= since_s and not p.prestarted)

    def counted(self, since_s: float = 0.0) -> np.ndarray:
        """Which arrivals count: those at or after since_s."""
        return self.arrivals[: self.arrived] >= since_s

    def latencies_s(self, since_s: float = 0.0) -> np.ndarray:
        """Wait + service of every counted request that started within the window."""
        mask = self.counted(since_s) & ~np.isnan(self.start[: self.arrived])
        wait = self.start[: self.arrived][mask] - self.arrivals[: self.arrived][mask]
        return wait + self.service_s[: self.arrived][mask]


# Event kinds; completions sort before readiness at the same instant.
_DONE = 0
_READY = 1
