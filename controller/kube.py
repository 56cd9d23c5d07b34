"""Calls to the Kubernetes API server: which failures are worth another try, and how long to
wait before it.

Three kinds of failure, as client-go's own retry helpers sort them
(k8s.io/client-go/util/retry, k8s.io/apimachinery/pkg/api/errors):
- a conflict (409): someone else wrote the object between our read and our write; the
  whole read-modify-write runs again on a fresh read (retry.RetryOnConflict);
- the server is busy or away: 429 (honouring its Retry-After), 5xx, a refused or reset
  connection, a timeout: the same call again after a backoff;
- permanent: 4xx other than those (403 forbidden by the Role, 404 gone, 422 invalid):
  another try would get the same answer, so it is raised at once.

Backoff is exponential with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015: sleep = random(0, min(cap, base * 2**attempt))), a bounded number of attempts,
then `RetriesExhausted`. Every call carries a request timeout, so no call hangs on a
half-open connection. The sleep and the random source are injected: unit tests never wait.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

T = TypeVar("T")

# (connect, read) seconds on every request. The API server answers a get or a patch in
# milliseconds; 5 s to connect and 15 s to read leave room for a loaded control plane while
# keeping one stuck call well inside a 15 s lease's renew deadline budget of a few tries.
REQUEST_TIMEOUT: tuple[float, float] = (5.0, 15.0)

# Statuses worth another try (client-go rest/request.go retries 429 and 5xx with a
# Retry-After; 409 is retried by the caller's read-modify-write, retry.RetryOnConflict).
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class KubeError(Exception):
    """A call to the API server failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Retryable(KubeError):
    """Worth another try: 429, 5xx, a connection error or a timeout."""

    def __init__(
        self, message: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after_s = retry_after_s


class Conflict(Retryable):
    """Someone else changed the object since we read it (409, or a JSON-patch `test` op
    that failed): read it again and redo the change."""


class Permanent(KubeError):
    """Another try would get the same answer (403, 404, 422, other 4xx)."""


class Forbidden(Permanent):
    """403: the Role does not allow it."""


class NotFound(Permanent):
    """404: the object (or the kind) is not there."""


class RetriesExhausted(KubeError):
    """Every attempt failed on a retryable error; `__cause__` is the last one."""


def classify(exc: BaseException) -> KubeError | None:
    """The KubeError an exception from kubernetes.client stands for; None when it is not an
    API failure at all (a bug of ours: let it through)."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = f"{status} {exc.reason}: {_short(exc.body)}"
        if status == 409:
            return Conflict(message, status)
        if status in RETRYABLE_STATUSES or status == 0:
            # status 0: the client raised without a response (its own timeout wrapper).
            return Retryable(message, status, _retry_after(exc.headers))
        if status == 403:
            return Forbidden(message, status)
        if status == 404:
            return NotFound(message, status)
        return Permanent(message, status)
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        # MaxRetryError (refused: the API server is down), ProtocolError (reset mid-answer),
        # ReadTimeoutError, NewConnectionError, SSLError: all transient from here.
        return Retryable(f"{type(exc).__name__}: {exc}")
    return None


@dataclass
class Retry:
    """How many tries and how long between them. `on_retry(attempt, error, delay_s)` is
    called after each failed attempt that will be tried again, before the wait (for logs,
    metrics, and tests that act on the first failure)."""

    attempts: int = 6
    base_s: float = 0.2
    cap_s: float = 10.0
    # Retry-After above this is not honoured in full: the loop must come round again.
    max_retry_after_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    on_retry: Callable[[int, KubeError, float], None] | None = None

    def delay(self, attempt: int, error: KubeError) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based)."""
        jittered = self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))
        if isinstance(error, Retryable) and error.retry_after_s is not None:
            # The server said when: at least that long (RFC 9110 §10.2.3), jitter on top so
            # that replicas told the same second do not come back together.
            return min(error.retry_after_s, self.max_retry_after_s) + jittered
        return jittered

    def call(self, operation: Callable[[], T], what: str = "") -> T:
        """Run `operation` (a whole read-modify-write when it writes) until it succeeds, a
        permanent error, or the attempts run out."""
        last: KubeError | None = None
        for attempt in range(self.attempts):
            try:
                return operation()
            except Exception as exc:
                error = classify(exc)
                if error is None or isinstance(error, Permanent):
                    if error is None or error is exc:
                        raise
                    raise error from exc
                last = error
                if attempt + 1 == self.attempts:
                    break
                wait = self.delay(attempt, error)
                log.info("%s: %s; try %d of %d in %.2f s", what, error, attempt + 2,
                         self.attempts, wait)  # fmt: skip
                if self.on_retry is not None:
                    self.on_retry(attempt, error, wait)
                self.sleep(wait)
        assert last is not None
        raise RetriesExhausted(
            f"{what}: {self.attempts} attempts failed, last: {last}", last.status
        ) from last


def own_retries(api_client: Any) -> Any:
    """Turn off urllib3's own retries in a kubernetes.client ApiClient, so that every
    failure reaches `Retry` (its classification, its bounded attempts, its injected sleep):
    urllib3's default retries a refused connection three times at once and sleeps out a
    429's or 503's Retry-After itself, out of sight. Returns the same client."""
    api_client.configuration.retries = False
    pool = api_client.rest_client.pool_manager
    pool.connection_pool_kw["retries"] = False
    pool.clear()  # pools made before keep the retries they were made with
    return api_client


def request_kwargs() -> dict[str, Any]:
    """Keyword arguments every kubernetes.client call takes: the request timeout."""
    return {"_request_timeout": REQUEST_TIMEOUT}


def json_patch(
    api_client: Any,
    group: str,
    version: str,
    namespace: str,
    plural: str,
    name: str,
    operations: list[dict[str, Any]],
) -> dict[str, Any]:
    """PATCH one namespaced custom object with a JSON patch (RFC 6902,
    application/json-patch+json; kubernetes.client picks merge-patch unless told). A failed
    `test` op is a Conflict: the object changed since it was read."""
    from kubernetes import client

    try:
        answer = client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            group, version, namespace, plural, name, operations,
            _content_type="application/json-patch+json", **request_kwargs(),
        )  # fmt: skip
    except ApiException as exc:
        # The API server answers a JSON patch it cannot apply (a `test` op that no longer
        # holds, a `remove` of a key that is gone) with a bare 422 Invalid: "the server
        # rejected our request due to an error in our request", no details (measured on
        # kube-apiserver 1.35; apiserver pkg/endpoints/handlers/patch.go). A real validation
        # failure names its causes. The bare one is a lost race: the object changed since
        # it was read.
        if exc.status == 422 and not _causes(exc.body):
            raise Conflict(f"JSON patch no longer applies to {plural}/{name} (changed since "
                           "read)", 422) from exc  # fmt: skip
        raise (classify(exc) or exc) from exc
    return dict(answer or {})


def escape_pointer(key: str) -> str:
    """A map key as one JSON-pointer token (RFC 6901 §3: ~ → ~0, / → ~1)."""
    return key.replace("~", "~0").replace("/", "~1")


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # The HTTP-date form (RFC 9110 §10.2.3).
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _causes(body: Any) -> list[Any]:
    try:
        status = json.loads(body) if body else {}
    except ValueError:
        return ["unparsed body"]
    return list((status.get("details") or {}).get("causes") or [])


def _short(body: Any, limit: int = 300) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    return text if len(text) <= limit else text[:limit] + "..."
