"""Every version the test control plane is built from, pinned here and nowhere else.

The cache folder is named after these (`KEY`), so changing any one rebuilds the tools and
leaves the old folder for `rm -rf` (they are not garbage-collected).
"""

from __future__ import annotations

import hashlib

# Knative Serving 1.23 (knative.dev/serving v0.50.0; Knative 1.x is serving v0.(x+27)).
# 1.21 or later: knative/serving#16186 made a Revision's min-scale mutable in place, which
# the pre-warm controller relies on. 1.24 (v0.51.0) would be newer, but the module proxy
# serves neither its knative.dev/networking nor its knative.dev/caching pseudo-version,
# and those hold four of the CRDs. The networking and caching versions are read from
# serving's own go.mod, so they are not pinned twice.
KNATIVE_SERVING = "v0.50.0"

# Kubernetes 1.35: serving v0.50.0 is built against client-go v0.35 and knative.dev/pkg's
# minimum is v1.33.0. The staging modules (k8s.io/api, ...) are released as v0.35.4.
KUBERNETES = "v1.35.4"

# etcd 3.6 pairs with Kubernetes 1.35 (kubeadm's DefaultEtcdVersion there is 3.6.6); the
# newest 3.6 patch the proxy serves.
ETCD = "v3.6.16"

# kwok plays the kubelets; its fast node and pod stages come from the same module.
KWOK = "v0.8.0"

# helm v4, built with `go install` like the rest: one toolchain, one cache, one pin list.
HELM = "v4.3.2"

# The pod sandbox's image, under the name kubelet 1.35 and its containerd expect
# (kubeadm's constants.PauseVersion for 1.35); built from Kubernetes' own pause.c.
PAUSE = "3.10.1"

# Cluster DNS: CoreDNS as kubeadm deploys it, answering cluster names only.
COREDNS = "v1.14.2"

# The loopback image registry the real node pulls from (CNCF distribution).
REGISTRY = "v3.1.2"

# The node's container runtime, built here rather than Debian's 1.6.20 (bookworm):
# Kubernetes 1.35 is the last release that supports containerd 1.x (its release notes;
# EKS's "Kubernetes 1.35"), and 1.7+ is what the kubelet's evented PLEG needs (KEP-3386),
# which README's cold-start section measured. 2.x keeps cgroup v1, which this machine
# has (deprecated in 2.2, kept to May 2029: containerd's RELEASES.md).
CONTAINERD = "v2.4.2"

ALL: dict[str, str] = {
    "kubernetes": KUBERNETES,
    "etcd": ETCD,
    "kwok": KWOK,
    "helm": HELM,
    "knative-serving": KNATIVE_SERVING,
    "pause": PAUSE,
    "coredns": COREDNS,
    "registry": REGISTRY,
    "containerd": CONTAINERD,
}

# What each of tools.py's build steps is built from (names in ALL).
STEP_PINS: dict[str, tuple[str, ...]] = {
    "kubernetes": ("kubernetes", "pause"),
    "etcd": ("etcd",),
    "kwok": ("kwok",),
    "helm": ("helm",),
    "knative": ("knative-serving",),
    "coredns": ("coredns",),
    "registry": ("registry",),
    "containerd": ("containerd",),
}

# Bumped when the way a step builds changes, not only what it builds from. A new folder
# takes every step whose key is unchanged from a folder built before (tools.py), so a
# change to one step rebuilds that step alone: Knative's takes 2-3 minutes, Kubernetes'
# 7-25. Recipe "4" is also what folders built before per-step recipes were made with.
RECIPES: dict[str, str] = {
    **dict.fromkeys(STEP_PINS, "4"),
    # 5: the activator, queue-proxy and webhook; the autoscaler's stats server address.
    "knative": "5",
}


def step_key(step: str, pins: dict[str, str] = ALL, recipe: str | None = None) -> str:
    """One step's versions and recipe, hashed: equal keys build the same files."""
    text = ",".join(f"{name}={pins[name]}" for name in STEP_PINS[step])
    text += f";recipe={recipe if recipe is not None else RECIPES[step]}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def key() -> str:
    """The cache folder's name: readable versions plus a hash of every step's key."""
    steps = ";".join(f"{step}={step_key(step)}" for step in sorted(STEP_PINS))
    digest = hashlib.sha256(steps.encode()).hexdigest()[:8]
    return f"k8s-{KUBERNETES}-knative-{KNATIVE_SERVING}-{digest}"


def legacy_key(pins: dict[str, str]) -> str:
    """The name of a folder built with `pins` before per-step recipes (all at "4")."""
    text = ",".join(f"{name}={version}" for name, version in sorted(pins.items()))
    digest = hashlib.sha256(f"{text};recipe=4".encode()).hexdigest()[:8]
    return f"k8s-{pins['kubernetes']}-knative-{pins['knative-serving']}-{digest}"
