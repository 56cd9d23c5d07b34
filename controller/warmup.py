"""One warm-up request through a model's route, to wake a Revision at zero.

A raised min-scale does not scale a Revision at zero until a request reaches it: the
autoscaler's decider has no valid desired scale without metrics (knative/serving#10327).
One GET of the runtime's readiness path through the Knative Service's URL goes through the
activator, which asks for a pod; the new floor then holds the pods up.

Bounded: one request, a timeout, no redirect followed (a redirect points somewhere the
controller was not asked to call), and calling a `WarmUp` with a Target runs it on a daemon
thread, so the control loop never waits on it. `base_url` (the KINDLING_WARMUP_URL setting,
with {namespace} and {workload}) replaces the URL's scheme, host and port: tests, or a
cluster whose ingress the controller reaches at another address; the Host header keeps the
Service's own host (status.url), which is how Knative's ingress routes it.

Each Revision that carries traffic gets its own request naming it in the headers an
ingress adds for the activator (`Knative-Serving-Namespace`, `Knative-Serving-Revision`:
serving pkg/activator/handler/context_handler.go routes by them), since the floor was
raised on each: through an ingress they are what it would set itself (Kourier overwrites
them), and without one (KINDLING_WARMUP_URL at the activator's Service) they are the
route.
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.parse
from dataclasses import dataclass, field

from kindling.controller.targets import Target

log = logging.getLogger(__name__)

# The runtime's readiness endpoint (runtime/rest.py, KServe open inference protocol v2).
READY_PATH = "/v2/health/ready"


@dataclass
class WarmUp:
    path: str = READY_PATH
    # Seconds per socket operation (connect, send, each read). A cold start takes longer:
    # the request only has to reach the activator, which counts it as demand and asks for
    # a pod; the answer is not waited for beyond this.
    timeout_s: float = 2.0
    base_url: str | None = None
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    def __call__(self, target: Target) -> threading.Thread | None:
        """Wake `target` without waiting: `send` on a daemon thread (returned, so tests can
        join it); None when there is nowhere to send it."""
        url = self.url(target)
        if url is None:
            return None
        return self.fire(url, target.url, target.ref.namespace, target.revisions)

    def url(self, target: Target) -> str | None:
        if self.base_url:
            ref = target.ref
            return self.base_url.format(namespace=ref.namespace, workload=ref.workload)
        return target.url

    def send(
        self, url: str, host_url: str | None = None, namespace: str = "", revision: str = ""
    ) -> int | None:
        """GET `path` at `url` with the Host of `host_url` (default: url's own), naming
        `revision` for the activator when given; the status code, or None when no answer
        came (refused, timed out). Never raises for a network failure; a 3xx is returned
        as is, not followed."""
        connect = urllib.parse.urlsplit(url)
        host = urllib.parse.urlsplit(host_url).netloc if host_url else connect.netloc
        cls = (
            http.client.HTTPSConnection if connect.scheme == "https" else http.client.HTTPConnection
        )
        conn = cls(connect.hostname or "", connect.port, timeout=self.timeout_s)
        try:
            headers = {"Host": host, "User-Agent": "kindling-controller"}
            if revision:
                headers |= {
                    "Knative-Serving-Namespace": namespace,
                    "Knative-Serving-Revision": revision,
                }
            conn.request("GET", self.path, headers=headers)
            response = conn.getresponse()
            response.read(4096)
            log.info(
                "warm-up %s%s (Host %s, revision %s): %d",
                url, self.path, host, revision or "-", response.status,
            )  # fmt: skip
            return response.status
        except (OSError, http.client.HTTPException) as exc:
            log.info("warm-up %s%s: no answer (%s)", url, self.path, exc)
            return None
        finally:
            conn.close()

    def fire(
        self,
        url: str,
        host_url: str | None = None,
        namespace: str = "",
        revisions: tuple[str, ...] = (),
    ) -> threading.Thread:
        """`send` on a daemon thread, once per Revision (once if none is named)."""

        def each() -> None:
            for revision in revisions or ("",):
                self.send(url, host_url, namespace, revision)

        thread = threading.Thread(target=each, name="kindling-warmup", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return thread
