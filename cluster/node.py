"""The real node: containerd, the kubelet, kube-proxy and cluster DNS as plain processes.

Pods scheduled to `kindling-node` really run: containerd's CRI starts them with runc on the
`kindling0` bridge (hostnet.py), kube-proxy (iptables mode) makes Services answer, CoreDNS
answers cluster names, and the API server reaches the kubelet by its InternalIP for
`kubectl logs` and `exec`. There is no systemd here, so the fixture starts and stops them.

What this machine needs of each, found by trying (issue 19):
- runc cannot set a negative oom_score_adj without CAP_SYS_RESOURCE, which this machine
  withholds even from root: containerd's CRI needs `restrict_oom_score_adj = true`, or
  every sandbox fails ("can't get final child's PID from pipe");
- cgroup v1: kubelet 1.35 refuses it unless `failCgroupV1: false`; `cgroupfs` driver;
- the pause image is built here from Kubernetes' own pause.c and imported under the name
  containerd's CRI expects; nothing is pulled from outside.

containerd is built here (versions.CONTAINERD, tools.py), not Debian's 1.6: Kubernetes 1.35
is the last release that supports containerd 1.x, and 2.x is what a current node runs.

No image pull may leave the machine: containerd runs with HTTP(S)_PROXY pointing at a
closed loopback port (Go's ProxyFromEnvironment, which containerd's registry transports
use), so a name it does not have fails at once, without even a DNS look-up;
loopback registries are never proxied. Pods get no nameserver but cluster DNS (the
kubelet's `resolvConf: ""`), and CoreDNS has no upstream: other names are NXDOMAIN.

One real node per machine: it owns fixed host names (the bridge, /var/lib/kindling-node).
A lock says whose it is; a run that was killed halfway is cleaned up by the next start.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kindling.cluster import hostnet, images, nodes, tools, versions
from kindling.cluster.processes import Process, free_port, get, wait_until

if TYPE_CHECKING:
    from kindling.cluster.controlplane import ControlPlane

ROOT = Path("/var/lib/kindling-node")
LOCK = Path("/run/kindling-node.lock")
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
PAUSE_IMAGE = f"registry.k8s.io/pause:{versions.PAUSE}"
CLUSTER_DOMAIN = "cluster.local"
DNS_SERVICE_IP = "10.96.0.10"  # kubeadm's: the tenth address of the Service CIDR
# A port nothing listens on: a proxied pull is refused at once (see the docstring).
CLOSED_PROXY = "http://127.0.0.1:9"
DEBIAN_PACKAGES = "runc containernetworking-plugins iptables conntrack"


class NodeBusy(RuntimeError):
    """Another process on this machine runs the real node."""


class Node:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.root = ROOT
        self.socket = self.root / "containerd.sock"
        self._lock: Any = None
        self.kubelet_port = free_port()
        self.dns_ready_port = free_port()

    # -- lifecycle ------------------------------------------------------------------------

    def prepare_host(self) -> None:
        """Before the API server starts (it listens on the bridge): take the lock, clean up
        what a killed run left, and bring the bridge up."""
        missing = [b for b in ("runc", "iptables", "conntrack") if not shutil.which(b)]
        if missing or not (CNI_BIN / "bridge").exists():
            raise RuntimeError(
                f"the real node needs {', '.join(missing) or 'the CNI plugins'}: "
                f"apt-get install {DEBIAN_PACKAGES}  (make node-tools)"
            )
        self._lock = open(LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise NodeBusy(
                "a real node is already running on this machine (another test run or "
                "`make cluster`): stop it first"
            ) from None
        clean(self.root)
        (self.root / "cni" / "net.d").mkdir(parents=True)
        hostnet.up(self.plane.service_cidr)

    def start(self) -> None:
        """After the control plane: containerd, the pause image, the kubelet until the node
        is Ready, then kube-proxy and CoreDNS until a cluster name resolves."""
        hostnet.make_cgroups()
        hostnet.save_tunables(self.root / "tunables.json")
        self._start_containerd()
        self._import(images.pause(self.plane.tools.bin("pause"), self.root / "images"))
        kubelet = self._start_kubelet()
        self._wait_ready(kubelet)
        self._start_kube_proxy()
        self._start_coredns()

    def stop(self) -> None:
        """Everything, even after a failed start: the processes go with the control plane
        (it stops them newest first); this takes back what they left on the host. Without
        the lock nothing is touched: the node on this machine is someone else's."""
        if self._lock is None:
            return
        try:
            clean(self.root)
        finally:
            self._lock.close()
            self._lock = None

    # -- containerd -----------------------------------------------------------------------

    def _start_containerd(self) -> None:
        config = self.root / "containerd.toml"
        config.write_text(_containerd_config(self.root, self.socket))
        (self.root / "cni" / "net.d" / "10-kindling.conflist").write_text(
            json.dumps(_cni_config(self.root), indent=2)
        )
        env = {
            "HTTP_PROXY": CLOSED_PROXY,
            "HTTPS_PROXY": CLOSED_PROXY,
            "NO_PROXY": "127.0.0.1,localhost,::1",
            # containerd finds its shim on PATH: ours, never another containerd's.
            "PATH": f"{self.plane.tools.bin('containerd').parent}:{os.environ['PATH']}",
        }
        process = self.plane.launch("containerd", ["--config", str(config)], env)
        wait_until(lambda: self._ctr("version").returncode == 0, "containerd", [process])

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ctr(self.socket, *args)

    def remove_image(self, reference: str) -> None:
        remove_image(self.socket, reference)

    def _import(self, archive: Path) -> None:
        done = self._ctr("images", "import", "--no-unpack", str(archive))
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import {archive}: {done.stderr}")

    # -- the kubelet ----------------------------------------------------------------------

    def _start_kubelet(self) -> Process:
        pki = self.plane.pki
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine is cgroup v1 (kubelet 1.35 refuses it)
            "cgroupDriver": "cgroupfs",  # no systemd
            "cgroupRoot": f"/{hostnet.CGROUP_ROOT}",  # every pod's cgroup is ours to remove
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": nodes.REAL_NODE_IP,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(pki.kubelet_serving_cert),
            "tlsPrivateKeyFile": str(pki.kubelet_serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [DNS_SERVICE_IP],
            # Pods never get the host's nameservers (dnsPolicy Default included): cluster
            # DNS is the only resolver they have, and it has no upstream.
            "resolvConf": "",
            "failSwapOn": False,
            "podLogsDir": str(self.root / "logs"),
            # No image garbage collection and no disk-pressure evictions on a shared disk:
            # the images live only as long as the cluster.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "serializeImagePulls": False,
        }
        path = self.root / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        labels = ",".join(f"{k}={v}" for k, v in nodes.REAL_NODE_LABELS.items())
        return self.plane.launch(
            "kubelet",
            [
                f"--config={path}",
                f"--kubeconfig={self.plane.write_kubeconfig('kubelet')}",
                f"--hostname-override={nodes.REAL_NODE}",
                f"--node-ip={nodes.REAL_NODE_IP}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--cert-dir={self.root / 'kubelet' / 'pki'}",
                f"--node-labels={labels}",
                "--v=1",
            ],
        )

    def _wait_ready(self, kubelet: Process) -> None:
        from kubernetes import client

        def ready() -> bool:
            with self.plane.api_client() as api:
                node = client.CoreV1Api(api).read_node(nodes.REAL_NODE)
            conditions = node.status.conditions or []
            return any(c.type == "Ready" and c.status == "True" for c in conditions)

        wait_until(ready, f"node {nodes.REAL_NODE} Ready", [kubelet])

    # -- kube-proxy and DNS ---------------------------------------------------------------

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.plane.write_kubeconfig("kube-proxy"))},
            "hostnameOverride": nodes.REAL_NODE,
            "bindAddress": nodes.REAL_NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "mode": "iptables",
            "clusterCIDR": self.plane.pod_cidr,
            # NodePorts on the bridge only. localhostNodePorts would set the host's
            # net.ipv4.conf.all.route_localnet; conntrack zeros leave the host's
            # conntrack table size and timeouts as they are.
            "nodePortAddresses": [f"{nodes.REAL_NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False},
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        port = config["healthzBindAddress"].rsplit(":", 1)[1]
        process = self.plane.launch("kube-proxy", [f"--config={path}"])
        # /healthz answers 200 once the first full sync of the rules is done.
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: bool(get(url)), "kube-proxy's first sync", [process])

    def _start_coredns(self) -> None:
        self.plane.apply(_coredns_rbac())
        kubeconfig = self.plane.write_kubeconfig("coredns")
        corefile = self.root / "Corefile"
        corefile.write_text(_corefile(nodes.REAL_NODE_IP, str(kubeconfig), self.dns_ready_port))
        process = self.plane.launch("coredns", ["-conf", str(corefile)])
        url = f"http://127.0.0.1:{self.dns_ready_port}/ready"
        wait_until(lambda: bool(get(url)), "CoreDNS ready", [process])
        self.plane.apply(_dns_service())


# -- cleaning up ----------------------------------------------------------------------------


def clean(root: Path = ROOT) -> None:
    """Take back from the host everything a real node left, whether it stopped or was
    killed: pod processes, containerd's shims, mounts, network namespaces, the bridge, the
    cluster's iptables chains, cgroups and kernel settings, then its folder. Idempotent;
    the caller holds the node lock (nothing of a live node is touched)."""
    hostnet.kill_pods()
    hostnet.kill_matching(str(root / "containerd.sock"))
    hostnet.unmount_under(root)
    hostnet.remove_netns()
    hostnet.down()
    hostnet.remove_cgroups()
    hostnet.restore_tunables(root / "tunables.json")
    for _ in range(3):  # a shim may still be exiting and writing its state folder
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.1)
    raise RuntimeError(f"could not remove {root}: {sorted(map(str, root.rglob('*')))[:10]}")


# -- configuration --------------------------------------------------------------------------


def _containerd_config(root: Path, socket: Path) -> str:
    """containerd 2.4's configuration, version 4 (`containerd config default`): the CRI's
    image and runtime halves are plugins of their own. No imports: the host's
    /etc/containerd/conf.d is not the node's. NRI is off: it would open a socket under
    /var/run/nri, outside the node's folder, for plugins nobody runs here."""
    images, runtime = '"io.containerd.cri.v1.images"', '"io.containerd.cri.v1.runtime"'
    return f"""version = 4
root = "{root}/containerd/root"
state = "{root}/containerd/state"
imports = []
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[plugins."io.containerd.server.v1.grpc"]
  address = "{socket}"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "{socket}.ttrpc"

[plugins."io.containerd.server.v1.metrics"]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins.{images}]
  snapshotter = "overlayfs"
  [plugins.{images}.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.{runtime}]
  # runc cannot lower oom_score_adj here: the machine withholds CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [plugins.{runtime}.containerd]
    default_runtime_name = "runc"
    [plugins.{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.{runtime}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins.{runtime}.cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{root}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def _cni_config(root: Path) -> dict[str, Any]:
    """The bridge plugin on our own bridge. `isGateway` stays off: it would turn on the
    host's global ip_forward (the plugin's EnableIP4Forward); the bridge already has the
    gateway address and hostnet.up() enables forwarding on it alone. No IP masquerade:
    nothing from a pod leaves the machine."""
    return {
        "cniVersion": "1.0.0",
        "name": "kindling",
        "plugins": [
            {
                "type": "bridge",
                "bridge": hostnet.BRIDGE,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,  # a pod reaches itself through its own Service
                "ipam": {
                    "type": "host-local",
                    "ranges": [
                        [{"subnet": nodes.REAL_NODE_POD_CIDR, "gateway": nodes.REAL_NODE_IP}]
                    ],
                    "routes": [{"dst": "0.0.0.0/0", "gw": nodes.REAL_NODE_IP}],
                    "dataDir": str(root / "cni" / "ipam"),
                },
            }
        ],
    }


def _corefile(address: str, kubeconfig: str, ready_port: int) -> str:
    """Cluster names from the API server; every other name NXDOMAIN at once: no `forward`,
    so no query ever leaves the machine."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {address}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} kindling
        pods insecure
    }}
    cache 5
}}
.:53 {{
    bind {address}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def _coredns_rbac() -> list[dict[str, Any]]:
    """What CoreDNS's kubernetes plugin reads, as kubeadm's system:coredns ClusterRole."""
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ]  # fmt: skip
    name = "system:coredns"
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}]},
    ]  # fmt: skip


def _dns_service() -> list[dict[str, Any]]:
    """kube-system/kube-dns at kubeadm's address, its endpoint CoreDNS on the node's
    bridge (a process here, where a cluster would run it as a pod)."""
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    ports = [("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP")]
    return host_service("kube-dns", "kube-system", labels, ports, DNS_SERVICE_IP)


def host_service(
    name: str,
    namespace: str,
    labels: dict[str, str],
    ports: list[tuple[str, int, int, str]],
    cluster_ip: str | None = None,
) -> list[dict[str, Any]]:
    """A Service without a selector for a process on the node's address (CoreDNS, Knative's
    autoscaler: processes here, pods in a cluster), and its EndpointSlice, which kube-proxy
    routes by. `ports`: (name, Service port, the process's port, protocol)."""
    meta = {"name": name, "namespace": namespace, "labels": labels}
    spec: dict[str, Any] = {
        "ports": [
            {"name": n, "port": p, "targetPort": t, "protocol": proto} for n, p, t, proto in ports
        ]
    }
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec},
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-host",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "kindling.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [nodes.REAL_NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": n, "port": t, "protocol": proto} for n, _, t, proto in ports],
        },
    ]


def ctr(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """containerd's own client, built with it, on the node's socket in the CRI's
    namespace."""
    binary = tools.locate().bin("ctr")
    return subprocess.run(
        [str(binary), "--address", str(socket), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def remove_image(socket: Path, reference: str) -> None:
    """Take an image off the node, content and unpacked layers too, so that the next pull
    is cold; absent is fine. The CRI keeps three names for one pulled image (the tag, the
    repository digest, the image ID), all with one manifest digest: every name with that
    digest goes, then containerd's garbage collection (--sync)."""
    listing = ctr(socket, "images", "ls").stdout.splitlines()[1:]
    rows = [line.split() for line in listing if line.strip()]
    digests = {row[2] for row in rows if row[0] == reference}
    names = [row[0] for row in rows if row[2] in digests]
    if names:
        ctr(socket, "images", "rm", "--sync", *names)
