"""The fake nodes kwok keeps alive: a CPU pool of two and a GPU pool of one.

The GPU node is labelled and tainted the way managed GPU pools are, so that a chart's
nodeSelector and tolerations are tested against what a user's cluster has: GKE taints
its GPU pools `nvidia.com/gpu=present:NoSchedule`, and NVIDIA's GPU feature discovery
labels GPU nodes `nvidia.com/gpu.present=true` and `nvidia.com/gpu.product`. The device
plugin's extended resource `nvidia.com/gpu` is in the node's capacity, so the scheduler
really counts GPUs (kwok fakes the kubelet, not the scheduler).
"""

from __future__ import annotations

from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages the nodes that carry it
KWOK_ANNOTATION_VALUE = "fake"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABELS = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-L4"}
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
POOL_LABEL = "kindling.dev/pool"

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
        "spec": {"taints": [GPU_TAINT]} if gpu else {},
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
