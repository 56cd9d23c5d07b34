"""A Prometheus server (Debian's package, `make prometheus`) as a child process: a config
and storage in a folder of its own, ready when its /-/ready answers.

`pods_job` is the scrape job most clusters run for annotated pods (the `kubernetes-pods`
job of Prometheus' own example, documentation/examples/prometheus-kubernetes.yml): pods
kept when annotated `prometheus.io/scrape: "true"`, scraped at their IP on the
`prometheus.io/port` annotation's port, and labelled `namespace` and `pod`. Those two
labels are what the controller's default selector reads (controller/prometheus.py), so
the controller sees the series a user's Prometheus has. Debian's Prometheus is built
without Kubernetes discovery, so `PodDiscovery` does that one step: it follows the pods
through the API server and writes them, with the `__meta_kubernetes_*` labels Kubernetes
discovery gives them, where the job's file discovery reads them; the relabelling, the
scrapes and the queries are Prometheus' own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kindling.cluster.processes import Process, free_port, get, wait_until
from kindling.cluster.watches import Follow


def binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise FileNotFoundError("prometheus is not installed: run `make prometheus`")
    return found


def pods_job(targets_file: Path) -> dict[str, Any]:
    """The `kubernetes-pods` job: its relabelling as most clusters run it; its targets
    from `targets_file`, which `PodDiscovery` keeps as Kubernetes' pod discovery would
    (Debian's build has no Kubernetes discovery: `field kubernetes_sd_configs not found`)."""
    meta = "__meta_kubernetes_pod_"
    return {
        "job_name": "kubernetes-pods",
        # Read again on every change (fsnotify); the interval is only a fallback.
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
        "relabel_configs": [
            {
                "source_labels": [f"{meta}annotation_prometheus_io_scrape"],
                "action": "keep",
                "regex": "true",
            },
            # Running pods only: a terminated pod's IP may already be another's.
            {"source_labels": [f"{meta}phase"], "action": "keep", "regex": "Running"},
            {
                "source_labels": ["__address__", f"{meta}annotation_prometheus_io_port"],
                "action": "replace",
                "regex": "([^:]+)(?::\\d+)?;(\\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {
                "source_labels": [f"{meta}annotation_prometheus_io_path"],
                "action": "replace",
                "regex": "(.+)",
                "target_label": "__metrics_path__",
            },
            {
                "source_labels": ["__meta_kubernetes_namespace"],
                "action": "replace",
                "target_label": "namespace",
            },
            {"source_labels": [f"{meta}name"], "action": "replace", "target_label": "pod"},
        ],
    }


def _label(key: str) -> str:
    # Prometheus' own sanitising of annotation and label keys into label names
    # (discovery/kubernetes: strutil.SanitizeLabelName).
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_targets(pods: Iterable[Any]) -> list[dict[str, Any]]:
    """One target group per pod with an IP, labelled as Kubernetes' pod discovery labels
    it (role pod: `__meta_kubernetes_namespace`, `..._pod_name`, `..._pod_ip`,
    `..._pod_phase`, `..._pod_node_name`, `..._pod_annotation_<key>`,
    `..._pod_label_<key>`), at its IP without a port (the job's relabelling adds it)."""
    groups = []
    for pod in pods:
        ip = pod.status.pod_ip
        if not ip:
            continue
        meta = "__meta_kubernetes_pod_"
        labels = {
            "__meta_kubernetes_namespace": pod.metadata.namespace,
            f"{meta}name": pod.metadata.name,
            f"{meta}ip": ip,
            f"{meta}phase": pod.status.phase or "",
            f"{meta}node_name": pod.spec.node_name or "",
        }
        found_by_kind = {"annotation": pod.metadata.annotations, "label": pod.metadata.labels}
        for kind, found in found_by_kind.items():
            labels |= {f"{meta}{kind}_{_label(k)}": v for k, v in (found or {}).items()}
        groups.append({"targets": [ip], "labels": labels})
    return groups


class PodDiscovery(Follow):
    """The pods of `namespace` as file discovery targets (`pods_job`), kept current from
    a watch (cluster/watches.py) and written whole on each change (a rename, so
    Prometheus never reads half a file)."""

    def __init__(self, api: Any, namespace: str, path: Path) -> None:
        from kubernetes import client

        self.path = path
        self.path.write_text("[]")
        super().__init__(client.CoreV1Api(api).list_namespaced_pod, (namespace,), self._write)

    def _write(self, pods: dict[str, Any]) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(pod_targets(pods.values())))
        os.replace(partial, self.path)


@dataclass
class Prometheus:
    process: Process
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        params = urllib.parse.urlencode({"query": promql})
        answer = json.loads(get(f"{self.url}/api/v1/query?{params}"))
        if answer.get("status") != "success":
            raise RuntimeError(f"prometheus: {answer}")
        return list(answer["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single value of `promql`, or None while it has none (or several)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        self.process.stop()


def start(
    workdir: Path,
    jobs: list[dict[str, Any]],
    interval: str,
    address: str = "127.0.0.1",
    port: int | None = None,
) -> Prometheus:
    """Prometheus on `address` (a free port unless given), scraping `jobs` every
    `interval`, ready on return; stopped if it never gets ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": jobs,
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = port or free_port()
    argv = [
        binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}:{port}",
        "--log.level=warn",
    ]
    process = Process("prometheus", argv, workdir / "prometheus.log", env={})
    process.start()
    server = Prometheus(process, address, port)
    try:
        wait_until(lambda: bool(get(f"{server.url}/-/ready")), "prometheus ready", [process])
    except BaseException:
        process.stop()
        raise
    return server
