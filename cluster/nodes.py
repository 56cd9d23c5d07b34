"""The cluster's nodes: one real node (kubelet and containerd, node.py) where pods run, and
the fake nodes kwok keeps alive for scheduling tests: a CPU pool of two and a GPU pool of
one.

The fake nodes are tainted `kwok.x-k8s.io/node=fake:NoSchedule` (kwok's own convention), so
nothing lands on them by accident: a pod there looks Running and runs nothing. A namespace
made for them (`KWOK_NAMESPACE_ANNOTATIONS`) gives its pods the toleration and a node
selector for them through the API server's PodTolerationRestriction and PodNodeSelector
admission plugins, so tests of scheduling and of Knative's objects need no per-pod change;
every other pod goes to the real node.

The GPU node is labelled and tainted the way managed GPU pools are, so that a chart's
nodeSelector and tolerations are tested against what a user's cluster has: GKE taints
its GPU pools `nvidia.com/gpu=present:NoSchedule`, and NVIDIA's GPU feature discovery
labels GPU nodes `nvidia.com/gpu.present=true` and `nvidia.com/gpu.product`. The device
plugin's extended resource `nvidia.com/gpu` is in the node's capacity, so the scheduler
really counts GPUs (kwok fakes the kubelet, not the scheduler).
"""

from __future__ import annotations

import json
from typing import Any

REAL_NODE = "kindling-node"
# The real node's pods: the top half of the cluster's pod CIDR (10.244.0.0/16, the kwok
# nodes' fake pods take addresses from the bottom half), one /24 as a node's podCIDR is.
REAL_NODE_POD_CIDR = "10.244.128.0/24"
REAL_NODE_IP = "10.244.128.1"  # its bridge's address: InternalIP and the pods' gateway
REAL_NODE_LABELS = {"kindling.dev/pool": "cpu", "type": "real"}

KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages the nodes that carry it
KWOK_ANNOTATION_VALUE = "fake"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABELS = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-L4"}
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
POOL_LABEL = "kindling.dev/pool"

KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
KWOK_NAMESPACE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": KWOK_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]
    ),
}

CPU_NODES = ("kwok-cpu-0", "kwok-cpu-1")
GPU_NODES = ("kwok-gpu-0",)

# A modest machine each: what the scheduler fits pods against.
CPU_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
GPU_CAPACITY = {**CPU_CAPACITY, GPU_RESOURCE: "1"}


def manifest(name: str, gpu: bool) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: "gpu" if gpu else "cpu",
    }
    if gpu:
        labels |= GPU_LABELS
    capacity = GPU_CAPACITY if gpu else CPU_CAPACITY
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {"taints": [KWOK_TAINT, GPU_TAINT] if gpu else [KWOK_TAINT]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "kwok",
                "kubeProxyVersion": "kwok",
            },
        },
    }


def all_manifests() -> list[dict[str, Any]]:
    return [manifest(n, gpu=False) for n in CPU_NODES] + [manifest(n, gpu=True) for n in GPU_NODES]
