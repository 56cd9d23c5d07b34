"""The cluster's Prometheus (cluster/prometheus.py): pods written as Kubernetes' pod
discovery labels them, and the `kubernetes-pods` job's own relabelling, run by a real
Prometheus against a real loopback /metrics server standing in for a pod."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kindling.cluster import prometheus
from kindling.cluster.processes import wait_until

METRICS = b'# TYPE kindling_requests_total counter\nkindling_requests_total{model="m"} 7\n'


def pod(
    name: str, ip: str | None, annotations: dict[str, str], phase: str = "Running"
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace="ns",
            annotations=annotations,
            labels={"app.kubernetes.io/name": "x"},
        ),
        spec=client.V1PodSpec(containers=[], node_name="node-1"),
        status=client.V1PodStatus(pod_ip=ip, phase=phase),
    )


@pytest.fixture
def metrics_port() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = METRICS if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_pods_are_labelled_as_kubernetes_discovery_labels_them() -> None:
    groups = prometheus.pod_targets(
        [
            pod(
                "a", "10.244.128.7", {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}
            ),
            pod("pending", None, {"prometheus.io/scrape": "true"}),  # no IP yet: no target
        ]
    )
    assert len(groups) == 1
    (group,) = groups
    assert group["targets"] == ["10.244.128.7"]
    labels = group["labels"]
    assert labels["__meta_kubernetes_namespace"] == "ns"
    assert labels["__meta_kubernetes_pod_name"] == "a"
    assert labels["__meta_kubernetes_pod_phase"] == "Running"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] == "8080"
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "x"


@pytest.mark.integration
def test_the_pods_job_scrapes_annotated_running_pods_only(
    tmp_path: Path, metrics_port: int
) -> None:
    targets = tmp_path / "pods.json"
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port)}
    pods = [
        pod("runtime-1", "127.0.0.1", {**scrape, "prometheus.io/path": "/metrics"}),
        pod("unannotated", "127.0.0.2", {"prometheus.io/port": str(metrics_port)}),
        pod("done", "127.0.0.3", scrape, phase="Succeeded"),
    ]
    targets.write_text(json.dumps(prometheus.pod_targets(pods)))
    server = prometheus.start(tmp_path / "prom", [prometheus.pods_job(targets)], "1s")
    try:
        wait_until(
            lambda: bool(server.query("kindling_requests_total")),
            "the pod's series", [server.process],
        )  # fmt: skip
        (series,) = server.query("kindling_requests_total")
        assert series["metric"]["namespace"] == "ns"
        assert series["metric"]["pod"] == "runtime-1"
        assert series["metric"]["instance"] == f"127.0.0.1:{metrics_port}"
        assert series["value"][1] == "7"
        # Only the annotated, running pod is a target at all.
        up = server.query("up")
        assert [s["metric"]["pod"] for s in up] == ["runtime-1"]
    finally:
        server.stop()
