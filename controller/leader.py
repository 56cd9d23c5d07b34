"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection package
does it (k8s.io/client-go/tools/leaderelection): two controller replicas, one writer.

- Acquire: the Lease is free (no holder), ours, or its holder has not renewed it for a
  whole lease duration *as observed here* (client-go times expiry from when this replica
  last saw the record change, on its own monotonic clock, so clock skew between nodes does
  not matter).
- Renew every `retry_s`; if no renewal succeeds within `renew_deadline_s`, leadership is
  lost: `on_lost` runs and the elector goes back to trying to acquire.
- Stop: a leader gives the Lease up (holder emptied, ReleaseOnCancel), so a standby takes
  over on its next try instead of waiting the lease out.

Every write is a replace carrying the read resourceVersion: two candidates that both saw a
free Lease cannot both win (the second gets 409). The Role allows `create` on leases and
`get`/`update` on this one Lease by name.

Timings: client-go's defaults for the kube components (kube-controller-manager,
kube-scheduler): lease 15 s, renew deadline 10 s, retry 2 s.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from kindling.controller import kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTimings:
    lease_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0


class LeaderElector:
    def __init__(
        self,
        api_client: Any,
        namespace: str,
        lease: str,
        identity: str,
        timings: LeaseTimings = LeaseTimings(),
        on_started: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.lease = lease
        self.identity = identity
        self.timings = timings
        self.on_started = on_started
        self.on_lost = on_lost
        self.monotonic = monotonic
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set once a try found the Lease held by someone else (tests wait on it).
        self.observed = threading.Event()
        # What we last saw of the record, and when (our clock): the expiry reference.
        self._observed: tuple[str | None, Any] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def wait_leading(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"leader-election-{self.identity}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop trying; a leader gives the Lease up first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    acquired = self._try_acquire_or_renew()
                except Exception as exc:  # an API failure is one failed try
                    log.info("lease %s: %s", self.lease, kube.classify(exc) or exc)
                    acquired = False
                now = self.monotonic()
                if acquired:
                    self._renewed_at = now
                    if not self._leading.is_set():
                        log.info("lease %s: %s leads", self.lease, self.identity)
                        self._leading.set()
                        if self.on_started:
                            self.on_started()
                elif self._leading.is_set() and (
                    now - self._renewed_at >= self.timings.renew_deadline_s
                ):
                    self._lose()
                self._stop.wait(self.timings.retry_s)
        finally:
            if self._leading.is_set():
                self._release()
                self._lose()

    def _lose(self) -> None:
        log.warning("lease %s: %s no longer leads", self.lease, self.identity)
        self._leading.clear()
        if self.on_lost:
            self.on_lost()

    def _try_acquire_or_renew(self) -> bool:
        now = _now()
        try:
            lease = self.api.read_namespaced_lease(
                self.lease, self.namespace, **kube.request_kwargs()
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.lease),
                spec=self._spec(now, now, 0),
            )
            self.api.create_namespaced_lease(self.namespace, body, **kube.request_kwargs())
            return True
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time)
        if record != self._observed:
            self._observed, self._observed_at = record, self.monotonic()
        holder = spec.holder_identity
        ours = holder == self.identity
        expired = self.monotonic() - self._observed_at >= (
            spec.lease_duration_seconds or self.timings.lease_s
        )
        if holder and not ours and not expired:
            self.observed.set()
            return False
        transitions = spec.lease_transitions or 0
        acquire = spec.acquire_time if ours else now
        lease.spec = self._spec(acquire, now, transitions if ours else transitions + 1)
        # replace carries the resourceVersion read above: 409 if another candidate won.
        self.api.replace_namespaced_lease(
            self.lease, self.namespace, lease, **kube.request_kwargs()
        )
        return True

    def _release(self) -> None:
        """Give the Lease up (client-go ReleaseOnCancel): no holder, 1 s duration."""
        try:
            lease = self.api.read_namespaced_lease(
                self.lease, self.namespace, **kube.request_kwargs()
            )
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            now = _now()
            lease.spec = client.V1LeaseSpec(
                holder_identity=None, lease_duration_seconds=1, acquire_time=now,
                renew_time=now, lease_transitions=lease.spec.lease_transitions,
            )  # fmt: skip
            self.api.replace_namespaced_lease(
                self.lease, self.namespace, lease, **kube.request_kwargs()
            )
            log.info("lease %s: released by %s", self.lease, self.identity)
        except Exception as exc:  # the lease then expires on its own
            log.warning("lease %s not released: %s", self.lease, exc)

    def _spec(self, acquire: Any, renew: Any, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.timings.lease_s),
            acquire_time=acquire,
            renew_time=renew,
            lease_transitions=transitions,
        )


def _now() -> datetime.datetime:
    # MicroTime: the API server keeps microseconds.
    return datetime.datetime.now(datetime.UTC)
