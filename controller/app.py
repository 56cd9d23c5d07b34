"""`kindling controller run`: settings -> the API client, the actuator, the metrics source,
the Lease, the HTTP endpoints -> the loop, until SIGTERM.

On SIGTERM the leader gives the user's own values back (settings.release_on_exit) and
then its Lease, so a standby takes over on its next try.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

from kubernetes import client, config

from kindling.controller import kube
from kindling.controller.inputs import MetricsSource, ModelRef
from kindling.controller.knative import KnativeActuator
from kindling.controller.leader import LeaderElector
from kindling.controller.loop import Controller
from kindling.controller.prometheus import PrometheusSource
from kindling.controller.raw import RawActuator
from kindling.controller.scrape import ScrapeSource
from kindling.controller.server import Health, serve
from kindling.controller.settings import ControllerSettings
from kindling.controller.targets import Actuator
from kindling.controller.telemetry import ControllerMetrics
from kindling.controller.warmup import WarmUp

log = logging.getLogger("kindling.controller")

MODEL_LABEL = "kindling.dev/model"


def api_client(kubeconfig: str | None) -> Any:
    """In a pod: its service account. Else the kubeconfig given, or $KUBECONFIG."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return kube.own_retries(client.ApiClient())
        except config.ConfigException:
            pass
    return kube.own_retries(config.new_client_from_config(config_file=kubeconfig))


def actuator(settings: ControllerSettings, api: Any) -> Actuator:
    if settings.serving_mode == "raw":
        return RawActuator(
            api, settings.namespace, settings.raw_workloads(), lease=settings.lease_name
        )
    return KnativeActuator(api, settings.namespace, settings.selector, settings.knative_version)


def metrics_source(settings: ControllerSettings, api: Any) -> MetricsSource:
    if settings.prometheus_url:
        options: dict[str, Any] = {}
        if settings.prometheus_selector:
            options["selector_template"] = settings.prometheus_selector
        return PrometheusSource(
            settings.prometheus_url,
            window_s=settings.window_s,
            timeout_s=settings.input_timeout_s,
            **options,
        )
    return ScrapeSource(PodEndpoints(settings, api), timeout_s=settings.input_timeout_s)


class PodEndpoints:
    """The Ready runtime pods of a model, as http://<pod IP>:<metrics port>, for scraping
    /metrics directly: the pods the chart's selector picks, of this model."""

    def __init__(self, settings: ControllerSettings, api: Any) -> None:
        self.core = client.CoreV1Api(api)
        self.settings = settings
        self.retry = kube.Retry()

    def __call__(self, ref: ModelRef) -> list[str]:
        selector = f"{self.settings.selector},{MODEL_LABEL}={ref.model}"
        pods = self.retry.call(
            lambda: self.core.list_namespaced_pod(
                ref.namespace, label_selector=selector, **kube.request_kwargs()
            ),
            "list runtime pods",
        ).items
        port = self.settings.metrics_port
        return [
            f"http://{pod.status.pod_ip}:{port}"
            for pod in pods
            if pod.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        ]


def run(settings: ControllerSettings, kubeconfig: str | None = None, once: bool = False) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    api = api_client(kubeconfig)
    metrics = ControllerMetrics()
    warmup = WarmUp(base_url=settings.warmup_url or None)
    controller = Controller(
        settings, actuator(settings, api), metrics_source(settings, api), metrics, warmup
    )
    if once:
        for outcome in controller.tick(time.time()):
            print(f"{outcome.ref.namespace}/{outcome.ref.workload}: {outcome.decision.reason}")
        return 0

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = serve(settings.port, metrics, Health(metrics, settings.interval_s))
    elector = None
    if settings.leader_elect:
        elector = LeaderElector(
            api,
            settings.namespace,
            settings.lease_name,
            settings.pod_name,
            on_lost=lambda: log.warning("lost the lease: standing by"),
        )
        elector.start()
    leading = elector.is_leader if elector is not None else (lambda: True)
    log.info(
        "kindling controller %s in %s (%s mode, %s), every %.0fs",
        settings.pod_name,
        settings.namespace,
        settings.serving_mode,
        f"Prometheus {settings.prometheus_url}" if settings.prometheus_url else "scraping pods",
        settings.interval_s,
    )
    try:
        controller.run(stop, leading)
    finally:
        if settings.release_on_exit and leading() and not settings.dry_run:
            log.info("stopping: giving the user's own values back")
            controller.release_all()
        if elector is not None:
            elector.stop()
        server.shutdown()
        server.server_close()
    return 0
