"""The controller's configuration: environment -> `ControllerSettings`, read once at start.

Each field is declared once, with its variable in the field's metadata and its default
beside it; `from_env` walks the fields, so a variable cannot drift from its field. The
chart's controller Deployment sets these (charts/kindling/templates/controller/).
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from kindling.controller.policy import WarmPolicy
from kindling.controller.raw import RawWorkload
from kindling.env import env_number

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

SERVING_MODES = ("knative", "raw")
FORECASTERS = ("holt", "ewma", "seasonal")


class SettingsError(ValueError):
    """A bad variable: start-up stops with its name."""


def _env(name: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": name, "doc": doc})


def policy_default(name: str) -> Any:
    # The policy's own default, so the number and its reason live in policy.py only.
    return WarmPolicy.__dataclass_fields__[name].default


@dataclass(frozen=True)
class ControllerSettings:
    namespace: str = _env(
        "KINDLING_NAMESPACE",
        "",
        "Namespace of the models (and the Lease); empty: the pod's own (service account).",
    )
    pod_name: str = _env(
        "KINDLING_POD_NAME", "", "Holder identity on the Lease; empty: the host name."
    )
    serving_mode: str = _env(
        "KINDLING_SERVING_MODE",
        "knative",
        "knative: min-scale on live Revisions; raw: replicas through the scale subresource.",
    )
    selector: str = _env(
        "KINDLING_SELECTOR",
        "app.kubernetes.io/component=runtime",
        "Label selector of the Knative Services (raw: Deployments) to manage.",
    )
    workloads: str = _env(
        "KINDLING_WORKLOADS",
        "",
        'Raw mode: the Deployments, as JSON [{"deployment", "model", "hpa"}]; the chart '
        "writes it (its Role may scale them by name but not list them).",
    )
    knative_version: str = _env(
        "KINDLING_KNATIVE_VERSION",
        "auto",
        "Knative Serving's minor version ('1.23'), or auto; before 1.21 the PodAutoscaler "
        "is patched instead of the Revision (knative/serving#16186).",
    )
    leader_elect: bool = _env(
        "KINDLING_LEADER_ELECT", True, "Hold a Lease before acting, so replicas never fight."
    )
    lease_name: str = _env("KINDLING_LEASE_NAME", "kindling-controller", "The Lease's name.")
    interval_s: float = _env(
        "KINDLING_INTERVAL_S",
        10.0,
        "Seconds between decisions. 10 s: five of KPA's 2 s ticks, and the scrape interval "
        "of a Prometheus tuned for autoscaling; part of the policy's reaction delay.",
    )
    prometheus_url: str = _env(
        "KINDLING_PROMETHEUS_URL",
        "",
        "Prometheus' base URL; empty: scrape the runtimes' /metrics directly.",
    )
    prometheus_selector: str = _env(
        "KINDLING_PROMETHEUS_SELECTOR",
        "",
        "PromQL label matchers with {namespace}, {workload}, {model}; empty: the source's "
        "default (controller/prometheus.py).",
    )
    window_s: float = _env(
        "KINDLING_WINDOW_S",
        60.0,
        "The rate window. 60 s: KPA's stable window (config-autoscaler stable-window).",
    )
    metrics_port: int = _env(
        "KINDLING_METRICS_PORT",
        8080,
        "Where the runtimes serve /metrics, for direct scraping (the runtime's port).",
    )
    input_timeout_s: float = _env(
        "KINDLING_INPUT_TIMEOUT_S",
        5.0,
        "The longest one read of Prometheus or of a pod's /metrics may take.",
    )
    pod_start_s: float = _env(
        "KINDLING_POD_START_S",
        5.0,
        "What a pod's start costs before the runtime runs (scheduling, sandbox, container "
        "start), added to the cold start the runtime measures itself. 5 s: Kubernetes' pod "
        "startup SLO (SIG Scalability: p99 <= 5 s, images pulled).",
    )
    forecaster: str = _env(
        "KINDLING_FORECASTER", "holt", "holt, ewma or seasonal (controller/forecast.py)."
    )
    margin_k: float = _env(
        "KINDLING_MARGIN_K", policy_default("margin_k"), "Margin in forecast errors (MAE)."
    )
    cooldown_s: float = _env(
        "KINDLING_COOLDOWN_S", policy_default("cooldown_s"), "Seconds before scaling down."
    )
    idle_to_zero_s: float = _env(
        "KINDLING_IDLE_TO_ZERO_S",
        math.nan,
        "Idle seconds before zero; unset: learned from the idle gaps seen (keep alive, "
        "pre-warm or step aside, whichever costs least).",
    )
    cold_cost_s: float = _env(
        "KINDLING_COLD_COST_S",
        policy_default("cold_cost_s"),
        "What one cold start is worth in pod-seconds, for the learned idle window: higher "
        "holds pods longer while idle.",
    )
    warmup_url: str = _env(
        "KINDLING_WARMUP_URL",
        "",
        "Base URL for the warm-up request that wakes a Revision at zero, with {namespace} "
        "and {workload}; empty: the Knative Service's status.url.",
    )
    dry_run: bool = _env("KINDLING_DRY_RUN", False, "Decide and log, never patch.")
    release_on_exit: bool = _env(
        "KINDLING_RELEASE_ON_EXIT",
        True,
        "On SIGTERM, give the user's own values back (uninstall leaves nothing behind; a new "
        "leader re-applies within a tick, well inside KPA's 60 s stable window).",
    )
    port: int = _env("KINDLING_PORT", 8080, "The controller's /metrics, /healthz and /readyz.")
    log_level: str = _env("KINDLING_LOG_LEVEL", "info", "debug, info, warning or error.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ControllerSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"], "").strip()
            if raw:
                values[f.name] = _parse(f.metadata["env"], raw, type(f.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings.resolved()

    def check(self) -> None:
        if self.serving_mode not in SERVING_MODES:
            raise SettingsError(f"KINDLING_SERVING_MODE must be one of {SERVING_MODES}")
        if self.forecaster not in FORECASTERS:
            raise SettingsError(f"KINDLING_FORECASTER must be one of {FORECASTERS}")
        for name in ("interval_s", "window_s", "input_timeout_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{_var(name)} must be > 0")
        for name in ("pod_start_s", "margin_k", "cooldown_s", "cold_cost_s"):
            if not getattr(self, name) >= 0:
                raise SettingsError(f"{_var(name)} must be >= 0")
        if not (math.isnan(self.idle_to_zero_s) or self.idle_to_zero_s >= 0):
            raise SettingsError("KINDLING_IDLE_TO_ZERO_S must be >= 0")
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise SettingsError("KINDLING_PROMETHEUS_URL must be an http(s) URL")
        self.raw_workloads()  # refused at start, not on the first tick

    def raw_workloads(self) -> list[RawWorkload]:
        if not self.workloads:
            return []
        try:
            listed = json.loads(self.workloads)
            return [
                RawWorkload(
                    deployment=str(w["deployment"]),
                    model=str(w["model"]),
                    concurrency_target=float(w.get("concurrencyTarget", 1.0)),
                    hpa=bool(w.get("hpa", False)),
                )
                for w in listed
            ]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SettingsError(f"KINDLING_WORKLOADS is not a list of workloads: {exc}") from None

    def resolved(self) -> ControllerSettings:
        """Fill what comes from the pod itself: its namespace and name."""
        from dataclasses import replace

        namespace = self.namespace or _own_namespace()
        return replace(self, namespace=namespace, pod_name=self.pod_name or socket.gethostname())

    def warm_policy(
        self,
        cold_start_s: float,
        concurrency_target: float,
        margin_k: float | None = None,
        min_scale: int = 0,
        max_scale: int | None = None,
    ) -> WarmPolicy:
        """The policy one model is decided by: the loop builds it every tick, the simulator
        once per run (simulate.make_policy), so both decide alike. `margin_k`: the model's
        own (its prewarm-margin-k annotation) over the global one."""
        return WarmPolicy(
            cold_start_s=cold_start_s,
            reaction_delay_s=self.interval_s + self.input_timeout_s,
            sample_interval_s=self.interval_s,
            target_concurrency=concurrency_target,
            margin_k=self.margin_k if margin_k is None else margin_k,
            cooldown_s=self.cooldown_s,
            idle_to_zero_s=None if self.learned_idle else self.idle_to_zero_s,
            cold_cost_s=self.cold_cost_s,
            stale_after_s=max(policy_default("stale_after_s"), 3 * self.interval_s),
            min_scale=min_scale,
            max_scale=max_scale,
        )

    @property
    def learned_idle(self) -> bool:
        return math.isnan(self.idle_to_zero_s)


def _var(name: str) -> str:
    return str(ControllerSettings.__dataclass_fields__[name].metadata["env"])


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean")
    if kind in (int, float):
        value = env_number({name: raw}, name, kind, kind(0), SettingsError, non_negative=False)
        if not math.isfinite(value):
            raise SettingsError(f"{name}={raw!r} must be finite")
        return value
    return raw


def _own_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def documented() -> list[tuple[str, Any, str]]:
    """(variable, default, doc) for every setting: the README's table is checked against it."""
    return [
        (f.metadata["env"], None if f.default is MISSING else f.default, f.metadata["doc"])
        for f in fields(ControllerSettings)
    ]


def markdown_table() -> str:
    """The README's settings table (controller/README.md), written from the fields:
    `python -m kindling.controller.settings` prints it, a test checks the README has it."""
    rows = ["| variable | default | what it sets |", "| --- | --- | --- |"]
    for name, default, doc in documented():
        shown = "learned" if isinstance(default, float) and math.isnan(default) else default
        shown = (
            "(empty)" if shown == "" else str(shown).lower() if isinstance(shown, bool) else shown
        )
        rows.append(f"| `{name}` | {shown} | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
