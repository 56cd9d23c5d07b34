"""A real Kubernetes control plane as plain processes, for tests and `make cluster`.

etcd, kube-apiserver (TLS, RBAC, service-account token signing), kube-controller-manager,
kube-scheduler and kwok, which plays the kubelets of three fake nodes (two CPU, one GPU;
see nodes.py), with Knative Serving's CRDs applied. The same set-up as controller-runtime's
envtest for the API server, plus the controllers and scheduler that make Deployments turn
into pods on nodes, and Knative Serving (knative.py). With `real_node`, also a real node
where pods run (node.py: containerd, kubelet, kube-proxy, CoreDNS) and a loopback image
registry it pulls from (registry.py), and Knative's data plane in pods there; the API
server then listens on the node's bridge, where pods reach it through the `kubernetes`
Service. Every process and the temporary folder go on `stop()`.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kindling.cluster import knative, nodes, pki, registry
from kindling.cluster.node import Node
from kindling.cluster.processes import SAFETY_S, Process, free_port, get, wait_until
from kindling.cluster.tools import Tools

SERVICE_CIDR = "10.96.0.0/16"  # kubeadm's default; pki.SERVER_IPS holds its first address
POD_CIDR = "10.244.0.0/16"  # the cluster's pods (kube-proxy's clusterCIDR)
KWOK_POD_CIDR = "10.244.0.0/17"  # kwok's fake pods; the real node has 10.244.128.0/24
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_LEASE_S = 40  # kubelet's default node lease duration, which kwok renews


class ControlPlane:
    service_cidr = SERVICE_CIDR
    pod_cidr = POD_CIDR

    def __init__(
        self,
        tools: Tools,
        workdir: Path | None = None,
        knative: bool = True,
        real_node: bool = False,
    ) -> None:
        """`knative`: also run Knative Serving (knative.py): its controller and autoscaler,
        so that a Knative Service becomes a Revision, a PodAutoscaler and a Deployment, and
        with a real node its activator, webhook and queue-proxy. `real_node`: also the real
        node and the registry (root only; one per machine)."""
        self.tools = tools.require()
        self.knative = knative
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="kindling-cluster-"))
        self.pki = pki.create(self.workdir / "pki")
        self.etcd_port = free_port()
        self.port = free_port()
        self.node = Node(self) if real_node else None
        self.address = nodes.REAL_NODE_IP if real_node else "127.0.0.1"
        self.server = f"https://{self.address}:{self.port}"
        self.registry: str | None = None  # 127.0.0.1:PORT with a real node
        self.kubeconfig = self.write_kubeconfig("admin")
        self._processes: list[Process] = []
        self._apiserver: Process | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        try:
            if self.node is not None:
                self.node.prepare_host()  # the bridge the API server listens on
            self._start_etcd()
            self._apiserver = self.launch("kube-apiserver", self._apiserver_args())
            self._wait_apiserver()
            # CRDs before the controller manager: its garbage collector learns the kinds
            # to watch at start and then only every 30 s (discovery), so a Knative object
            # deleted before then would wait that long for its dependents to go.
            self._apply_crds()
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._register_nodes()
            if self.node is not None:
                self.registry = registry.start(self, self.workdir / "registry" / "storage")
            pushed = knative.start(self) if self.knative else {}
            if self.node is not None:
                self.node.start()
                if self.knative:
                    knative.start_data_plane(self, pushed)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Every process, newest first, then what the real node left on the host, then the
        temporary folder; safe to call twice."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self.node is not None:
            self.node.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port and etcd; the other
        components reconnect on their own, as they do after a real API server restart."""
        self.stop_apiserver()
        self.start_apiserver()

    def stop_apiserver(self) -> None:
        """Take the API server away (for fault tests); `start_apiserver` brings it back."""
        assert self._apiserver is not None
        self._apiserver.stop()

    def start_apiserver(self) -> None:
        assert self._apiserver is not None
        self._apiserver.start()
        self._wait_apiserver()

    @property
    def processes(self) -> Sequence[Process]:
        return tuple(self._processes)

    # -- clients --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for kubectl and helm: this cluster, and helm's state kept out
        of the user's home."""
        return tool_env(self.kubeconfig, self.tools.bin("kubectl").parent, self.workdir / "helm")

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, input, check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, None, check)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump_all(_as_list(manifest))
        self.kubectl("apply", "-f", "-", input=text)

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient as the cluster admin (system:masters)."""
        return self._client(
            cert_file=str(self.pki.client_cert("admin")),
            key_file=str(self.pki.client_key("admin")),
        )

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A real bound token for the service account, from the TokenRequest API."""
        from kubernetes import client

        with self.api_client() as api:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
            )
            answer = client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, request
            )
        return str(answer.status.token)

    def service_account_client(self, namespace: str, name: str) -> Any:
        """An ApiClient that authenticates as system:serviceaccount:<namespace>:<name>."""
        token = self.service_account_token(namespace, name)
        return self._client(api_key={"authorization": f"Bearer {token}"})

    def _client(self, **settings: Any) -> Any:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.pki.ca)
        for key, value in settings.items():
            setattr(configuration, key, value)
        return client.ApiClient(configuration)

    def _run(
        self, tool: str, args: Sequence[str], input: str | None, check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.tools.bin(tool)), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=SAFETY_S,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, [tool, *args], proc.stdout, proc.stderr
            )
        return proc

    # -- the components -------------------------------------------------------------------

    def create_namespace(self, name: str, kwok: bool = False) -> None:
        """`kwok`: its pods go to the fake nodes (nodes.KWOK_NAMESPACE_ANNOTATIONS), for
        tests of scheduling and of the objects around pods; otherwise to the real node."""
        annotations = nodes.KWOK_NAMESPACE_ANNOTATIONS if kwok else {}
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "annotations": annotations},
            }
        )

    def launch(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        restart: bool = False,
        binary: str | None = None,
    ) -> Process:
        """Start one of the cluster's processes (`binary`, else the built tool `name`),
        logging to the working folder; `stop()` stops it."""
        process = Process(
            name,
            [binary or str(self.tools.bin(name)), *args],
            self.workdir / f"{name}.log",
            {**os.environ, "KUBECONFIG": "", **(env or {})},
            restart,
        )
        process.start()
        self._processes.append(process)
        return process

    def _start_etcd(self) -> None:
        peer = free_port()
        etcd = self.launch(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a test cluster's data need not survive power loss
                "--log-level=warn",
            ],
        )
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        wait_until(lambda: b'"true"' in get(url), "etcd health", [etcd])

    def _apiserver_args(self) -> list[str]:
        p = self.pki
        args = [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={p.server_cert}",
            f"--tls-private-key-file={p.server_key}",
            f"--client-ca-file={p.ca}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # Namespaces made for the fake nodes carry their node selector and toleration
            # (nodes.KWOK_NAMESPACE_ANNOTATIONS); NodeRestriction as every cluster has it.
            "--enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction",
            "--profiling=false",
            "--shutdown-watch-termination-grace-period=2s",
        ]
        if self.node is None:
            # The `kubernetes` Service's endpoints would be the advertise address, and a
            # loopback address is invalid in Endpoints: the reconciler would only log errors.
            return [*args, "--endpoint-reconciler-type=none"]
        # The API server dials the kubelet (logs, exec) by its InternalIP, never by a name
        # that needs DNS, verifies its serving certificate, and shows it a client one.
        return [
            *args,
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={p.ca}",
            f"--kubelet-client-certificate={p.client_cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={p.client_key('apiserver-kubelet-client')}",
        ]

    def _wait_apiserver(self) -> None:
        assert self._apiserver is not None
        context = self._tls()
        url = f"{self.server}/readyz"
        wait_until(lambda: get(url, context) == b"ok", "kube-apiserver /readyz", [self._apiserver])

    def _component_args(self, component: str, kubeconfig_user: str) -> tuple[list[str], int]:
        kubeconfig = self.write_kubeconfig(kubeconfig_user)
        port = free_port()
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",  # one of each, and no lease to wait out on restart
        ], port

    def _start_controller_manager(self) -> None:
        args, port = self._component_args("kube-controller-manager", "controller-manager")
        process = self.launch(
            "kube-controller-manager",
            [
                *args,
                # Each controller acts as its own service account, as kubeadm runs it, so
                # that RBAC applies to the controllers too.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca}",
            ],
        )
        self._wait_healthz(process, port)

    def _start_scheduler(self) -> None:
        args, port = self._component_args("kube-scheduler", "scheduler")
        self._wait_healthz(self.launch("kube-scheduler", args), port)

    def _wait_healthz(self, process: Process, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # its self-signed serving certificate
        url = f"https://127.0.0.1:{port}/healthz"
        wait_until(lambda: get(url, context) == b"ok", f"{process.name} /healthz", [process])

    def _start_kwok(self) -> None:
        kubeconfig = self.write_kubeconfig("kwok")
        port = free_port()
        process = self.launch(
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                f"--config={self.tools.kwok_stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector="
                f"{nodes.KWOK_ANNOTATION}={nodes.KWOK_ANNOTATION_VALUE}",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--node-lease-duration-seconds={NODE_LEASE_S}",
                f"--server-address=127.0.0.1:{port}",
            ],
        )
        wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz") == b"ok", "kwok", [process])

    def _register_nodes(self) -> None:
        """Create the nodes and wait until the scheduler may use them: kwok has marked each
        Ready, and the node lifecycle controller has lifted the not-ready taint it puts on
        every new node (node.kubernetes.io/not-ready:NoSchedule)."""
        from kubernetes import client

        self.apply(nodes.all_manifests())
        expected = {*nodes.CPU_NODES, *nodes.GPU_NODES}

        def schedulable() -> bool:
            with self.api_client() as api:
                listed = client.CoreV1Api(api).list_node().items
            return {n.metadata.name for n in listed if _schedulable(n)} == expected

        watched = [p for p in self._processes if p.name in ("kwok", "kube-controller-manager")]
        wait_until(schedulable, "Ready, untainted kwok nodes", watched)

    def _apply_crds(self) -> None:
        crds = str(self.tools.crds)
        self.kubectl("apply", "--server-side", "-f", crds)
        timeout = f"--timeout={SAFETY_S:.0f}s"
        self.kubectl("wait", "--for=condition=Established", timeout, "-f", crds)

    # -- files ----------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(self.pki.client_cert("admin"), self.pki.client_key("admin"))
        return context

    def write_kubeconfig(self, user: str) -> Path:
        path = self.workdir / f"{user}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kindling",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki.client_cert(user)),
                        "client-key": str(self.pki.client_key(user)),
                    },
                }
            ],
            "contexts": [{"name": "kindling", "context": {"cluster": "kindling", "user": user}}],
            "current-context": "kindling",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path


def _schedulable(node: Any) -> bool:
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    lifecycle = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    return ready and not any(t.key in lifecycle for t in node.spec.taints or [])


def _as_list(manifest: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return manifest if isinstance(manifest, list) else [manifest]


def tool_env(kubeconfig: Path, bin_dir: Path, helm_home: Path) -> dict[str, str]:
    """The environment for kubectl, helm and what calls them (the load test's pod count):
    the cluster in `kubeconfig`, the cached tools first on PATH, and helm's state kept out
    of the user's home."""
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kubeconfig),
        **{f"HELM_{k}_HOME": str(helm_home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")},
    }
