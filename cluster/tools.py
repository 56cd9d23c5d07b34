"""The control plane's binaries and manifests, built from the Go module proxy and cached.

`build()` fills `$KINDLING_CACHE_DIR/cluster/<versions.key()>/`:

    bin/      etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet
              kube-proxy kwok helm coredns registry, Knative Serving's controller,
              autoscaler, activator, queue-proxy and webhook (knative-*), pause (the pod
              sandbox's process, from Kubernetes' own pause.c), and the node's containerd,
              containerd-shim-runc-v2 and ctr
    crds/     the Knative Serving CRDs (serving, networking and caching modules)
    knative/  Knative Serving's namespace and config maps, for its controller and
              autoscaler; data-plane/: the activator's and webhook's manifests
    kwok/stages.yaml   kwok's fast node and pod stages, from the kwok module
    BUILT     versions, each step's key and seconds; written last, so its presence means
              complete

The folder is built beside its final name and renamed into place, under an flock(2), so
two test runs never build at once and a killed build leaves nothing that looks complete.
A present folder costs nothing: `build()` returns before touching Go. A new folder (a
version or a step's recipe changed) hard-links every step whose key is unchanged from a
complete folder beside it and builds only the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kindling.cluster import versions
from kindling.env import cache_root

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "kwok",
    "helm",
    "knative-controller",
    "knative-autoscaler",
    "knative-activator",
    "knative-queue-proxy",
    "knative-webhook",
    "coredns",
    "registry",
    "pause",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
)
KUBERNETES_COMMANDS = BINARIES[1:7]
STAMP = "BUILT"
BUILD_HINT = "make cluster-tools  (or: .venv/bin/kindling cluster build)"

# The Knative CRDs: serving's own are plain files in config/core/300-resources; the rest
# are symlinks there into knative.dev/networking and knative.dev/caching, and the module
# zip drops symlinks, so they are taken from those modules' config/ folders.
NETWORKING_CRDS = (
    "certificate.yaml",
    "domain-claim.yaml",
    "ingress.yaml",
    "serverlessservice.yaml",
)
CACHING_CRDS = ("image.yaml",)

# kwok's default stages (what kwokctl loads): nodes initialize and heartbeat through a
# Lease; pods become Running and Ready, complete, and are deleted when asked.
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


# A build step: the scratch Go module it may use, and the folder it writes into.
Step = Callable[["_Go", Path], None]


class ToolsMissing(RuntimeError):
    """The cached tools are not built: the message says how to build them."""


@dataclass(frozen=True)
class Tools:
    root: Path

    @property
    def crds(self) -> Path:
        return self.root / "crds"

    @property
    def knative_config(self) -> Path:
        return self.root / "knative"

    @property
    def kwok_stages(self) -> Path:
        return self.root / "kwok" / "stages.yaml"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def missing(self) -> list[str]:
        if not (self.root / STAMP).is_file():
            return [f"{self.root} (not built)"]
        return [name for name in BINARIES if not os.access(self.bin(name), os.X_OK)]

    def require(self) -> Tools:
        missing = self.missing()
        if missing:
            raise ToolsMissing(
                f"cluster tools missing: {', '.join(missing)}. Build them (the first time "
                f"takes about 17 minutes on 2 cores, then they are cached): {BUILD_HINT}"
            )
        return self


def locate(env: Mapping[str, str] | None = None) -> Tools:
    return Tools(cache_root(os.environ if env is None else env) / "cluster" / versions.key())


def build(env: Mapping[str, str] | None = None, log: Callable[[str], None] = print) -> Tools:
    """The tools for the pinned versions, built first if the cache lacks them. A step whose
    key (versions.step_key) a complete folder beside it shares is taken from there, as hard
    links: only what changed is built."""
    tools = locate(env)
    if not tools.missing():
        return tools
    tools.root.parent.mkdir(parents=True, exist_ok=True)
    with open(tools.root.parent / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another process is building the cluster tools; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not tools.missing():  # built by the holder we waited for
            return tools
        shutil.rmtree(tools.root, ignore_errors=True)  # incomplete: no stamp
        work = Path(tempfile.mkdtemp(prefix=f".{tools.root.name}.", dir=tools.root.parent))
        try:
            steps = _build_into(work, log, _built_steps(tools.root.parent))
            stamp = {
                "versions": versions.ALL,
                "steps": {step: versions.step_key(step) for step in versions.STEP_PINS},
                "seconds": steps,
                "built": time.time(),
            }
            (work / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            work.rename(tools.root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tools.require()


def _built_steps(parent: Path) -> dict[str, Path]:
    """Step key -> a complete folder under `parent` that built that step."""
    found: dict[str, Path] = {}
    for stamp in sorted(parent.glob(f"*/{STAMP}")):
        try:
            built = json.loads(stamp.read_text())
        except (OSError, ValueError):
            continue
        keys = built.get("steps")
        pins = built.get("versions")
        if keys is None and isinstance(pins, dict) and set(versions.ALL) <= set(pins):
            # Built before per-step recipes: every step at recipe "4", if its name says so.
            if stamp.parent.name == versions.legacy_key(pins):
                keys = {s: versions.step_key(s, pins, "4") for s in versions.STEP_PINS}
        for key in (keys or {}).values():
            found.setdefault(key, stamp.parent)
    return found


def _build_into(
    out: Path, log: Callable[[str], None], built: Mapping[str, Path] | None = None
) -> dict[str, float]:
    """Every step into `out`: linked from `built` (step key -> folder) where it has the
    step, else built with Go. Seconds per step."""
    built = built or {}
    (out / "bin").mkdir()
    steps: dict[str, float] = {}
    src = out / "src"
    go: str | None = None
    for name, (step, outputs) in STEPS.items():
        start = time.monotonic()
        donor = built.get(versions.step_key(name))
        if donor is not None and all((donor / o).exists() for o in outputs):
            for output in outputs:
                _link(donor / output, out / output)
            log(f"cluster tools: {name} taken from {donor.name}")
        else:
            go = go or shutil.which("go")
            if go is None:
                raise ToolsMissing(
                    "the cluster tools are built with Go (1.26): `go` is not on PATH"
                )
            log(f"cluster tools: {name} ...")
            step(_Go(go, src / name, src / "gocache"), out)
            log(f"cluster tools: {name} done in {time.monotonic() - start:.0f} s")
        steps[name] = round(time.monotonic() - start, 1)
    shutil.rmtree(src, ignore_errors=True)
    return steps


def _link(source: Path, target: Path) -> None:
    """A file or folder of a complete cache folder, hard-linked: no copy, no extra disk,
    and either folder may be removed later."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=os.link)
    else:
        os.link(source, target)


class _Go:
    """`go` in one scratch module folder, with a reproducible environment."""

    def __init__(self, go: str, workdir: Path, gocache: Path) -> None:
        self.go = go
        self.workdir = workdir
        workdir.mkdir(parents=True)
        # Static binaries (no cgo, as Kubernetes' own release builds); the machine's Go,
        # never a downloaded toolchain; no go.work from a parent folder.
        self.env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOWORK": "off"}
        # A build cache of its own, removed with the scratch folder: it grows to ~6 GB
        # and is useless once the binaries exist (a version change rebuilds them all).
        # Modules still come through the machine's module cache (~3 GB, shared).
        self.env["GOCACHE"] = str(gocache)
        self.env.pop("GOFLAGS", None)

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(
            [self.go, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
        return proc.stdout

    def module(self, path: str, version: str) -> tuple[Path, str]:
        """A module's extracted folder and its go.mod text."""
        info = json.loads(self("mod", "download", "-json", f"{path}@{version}"))
        return Path(info["Dir"]), Path(info["GoMod"]).read_text()

    def write(self, name: str, text: str) -> None:
        (self.workdir / name).write_text(text)


def _kubernetes(go: _Go, out: Path) -> None:
    """kube-apiserver, kube-controller-manager, kube-scheduler and kubectl.

    k8s.io/kubernetes replaces its ~30 staging modules with ./staging paths, which only
    work inside its own repository; a wrapper module replaces each with its release
    (v1.35.4 -> v0.35.4) instead."""
    major, minor, patch = versions.KUBERNETES.lstrip("v").split(".")
    _, gomod = go.module("k8s.io/kubernetes", versions.KUBERNETES)
    staging = re.findall(r"^\s*(k8s\.io/\S+)\s+=>\s+\./staging/", gomod, re.MULTILINE)
    if not staging:
        raise RuntimeError("k8s.io/kubernetes' go.mod names no staging modules")
    lines = [f"require k8s.io/kubernetes {versions.KUBERNETES}", ""]
    lines += [f"replace {module} => {module} v0.{minor}.{patch}" for module in staging]
    go.write("go.mod", "module kindling.local/kubernetes\n\ngo 1.25\n\n" + "\n".join(lines) + "\n")
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{cmd}"' for cmd in KUBERNETES_COMMANDS)
    go.write("tools.go", f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    go("mod", "tidy")
    # Unstamped binaries report v0.0.0-master, which fails Knative's minimum-version check.
    stamp = {"gitVersion": versions.KUBERNETES, "gitMajor": major, "gitMinor": minor}
    stamp |= {"gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}
    ldflags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [f"-X {package}.{name}={value}" for name, value in stamp.items()]
    commands = [f"k8s.io/kubernetes/cmd/{cmd}" for cmd in KUBERNETES_COMMANDS]
    go("build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(out / "bin"), *commands)
    _pause(go, out)


def _pause(go: _Go, out: Path) -> None:
    """The pod sandbox's process, compiled from the Kubernetes module's own source as its
    release image is (build/pause/Makefile: a static C binary); nothing is pulled."""
    module, _ = go.module("k8s.io/kubernetes", versions.KUBERNETES)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ToolsMissing("the pause binary is compiled with a C compiler: no gcc on PATH")
    source = module / "build" / "pause" / "linux" / "pause.c"
    subprocess.run(
        [
            cc,
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION=v{versions.PAUSE}-kindling",
            "-o",
            str(out / "bin" / "pause"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )


def _etcd(go: _Go, out: Path) -> None:
    """etcd's main package lives in the repository's root module, whose go.mod replaces
    the other etcd modules with relative paths; a wrapper calls etcdmain the same way."""
    go.write("go.mod", "module kindling.local/etcd\n\ngo 1.25\n")
    go.write(
        "main.go",
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n",
    )
    go("get", f"go.etcd.io/etcd/server/v3@{versions.ETCD}")
    go("mod", "tidy")
    go("build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "bin" / "etcd"), ".")


def _go_install(go: _Go, out: Path, ldflags: str, *packages: str) -> None:
    go.env["GOBIN"] = str(out / "bin")
    go("install", "-trimpath", "-ldflags", ldflags, *packages)


def _kwok(go: _Go, out: Path) -> None:
    _go_install(go, out, "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{versions.KWOK}")
    module, _ = go.module("sigs.k8s.io/kwok", versions.KWOK)
    (out / "kwok").mkdir()
    docs = [(module / stage).read_text().strip() for stage in KWOK_STAGES]
    (out / "kwok" / "stages.yaml").write_text("\n---\n".join(docs) + "\n")


def _coredns(go: _Go, out: Path) -> None:
    _go_install(go, out, "-s -w", f"github.com/coredns/coredns@{versions.COREDNS}")


def _registry(go: _Go, out: Path) -> None:
    """The CNCF distribution registry, which the cluster's node pulls the images from."""
    package = f"github.com/distribution/distribution/v3/cmd/registry@{versions.REGISTRY}"
    _go_install(go, out, "-s -w", package)


def _containerd(go: _Go, out: Path) -> None:
    """containerd, its runc shim (which it finds on PATH) and `ctr`, in one `go install`.
    Without cgo the btrfs snapshotter is left out, which the node disables anyway."""
    module = "github.com/containerd/containerd/v2"
    stamp = f"-s -w -X {module}/version.Version={versions.CONTAINERD.lstrip('v')}"
    commands = ("containerd", "containerd-shim-runc-v2", "ctr")
    _go_install(go, out, stamp, *(f"{module}/cmd/{c}@{versions.CONTAINERD}" for c in commands))


def _helm(go: _Go, out: Path) -> None:
    stamp = f"-s -w -X helm.sh/helm/v4/internal/version.version={versions.HELM}"
    _go_install(go, out, stamp, f"helm.sh/helm/v4/cmd/helm@{versions.HELM}")


# Knative Serving's binaries. The controller and autoscaler run as plain processes beside
# each other, where in a cluster each has a pod (and a network namespace) of its own, so
# two listeners fixed in code would collide, there and with anything else on the machine:
# the controller's health probes (:8080, knative.dev/pkg sharedmain) and the autoscaler's
# stats server (:8080, a constant in its main.go). Each main package is copied into the
# wrapper module (`go build -overlay` may not replace files in the module cache) with
# lines changed: the controller's probes off (the API server is its health check here),
# and the stats server on the address in KINDLING_STATS_SERVER_ADDR: the real node's
# address, where the activator's pod dials it through the `autoscaler` Service, or a free
# loopback port without a real node (no activator). The activator, queue-proxy and webhook
# run in pods on the real node as Knative runs them (cluster/knative.py), unchanged. A line
# that is no longer there fails the build, not the tests.
KNATIVE_COMMANDS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "knative-controller": (
        "cmd/controller/main.go",
        (
            (
                "ctx := signals.NewContext()",
                "ctx := sharedmain.WithHealthProbesDisabled(signals.NewContext())",
            ),
        ),
    ),
    "knative-autoscaler": (
        "cmd/autoscaler/main.go",
        (
            ("import (", 'import (\n\t"os"\n'),
            (
                "statserver.New(statsServerAddr,",
                'statserver.New(os.Getenv("KINDLING_STATS_SERVER_ADDR"),',
            ),
        ),
    ),
    "knative-activator": ("cmd/activator/main.go", ()),
    "knative-queue-proxy": ("cmd/queue/main.go", ()),
    "knative-webhook": ("cmd/webhook/main.go", ()),
}
# What the data plane's pods need from Knative's release config (config/core): their
# service accounts and roles, their Deployments and Services, the webhook's configurations.
KNATIVE_MANIFESTS = (
    "200-serviceaccount.yaml",
    "200-roles/activator.yaml",
    "200-roles/addressable-resolvers-clusterrole.yaml",
    "200-roles/clusterrole-namespaced.yaml",
    "200-roles/clusterrole.yaml",
    "200-roles/podspecable-bindings-clusterrole.yaml",
    "deployments/activator.yaml",
    "deployments/webhook.yaml",
    "webhooks/configmap-validation.yaml",
    "webhooks/defaulting.yaml",
    "webhooks/resource-validation.yaml",
    "webhooks/secret.yaml",
)


def _knative(go: _Go, out: Path) -> None:
    """Knative Serving's CRDs, config maps, manifests and binaries, at one release."""
    serving, gomod = go.module("knative.dev/serving", versions.KNATIVE_SERVING)
    core = serving / "config" / "core"
    crds = out / "crds"
    crds.mkdir()
    for path in sorted((core / "300-resources").glob("*.yaml")):
        shutil.copyfile(path, crds / f"serving-{path.name}")
    config = out / "knative"
    config.mkdir()
    shutil.copyfile(core / "100-namespace.yaml", config / "100-namespace.yaml")
    for path in sorted((core / "configmaps").glob("*.yaml")):
        shutil.copyfile(path, config / f"config-{path.name}")
    (config / "data-plane").mkdir()
    for name in KNATIVE_MANIFESTS:
        shutil.copyfile(core / name, config / "data-plane" / name.replace("/", "-"))
    for dependency, names in (("networking", NETWORKING_CRDS), ("caching", CACHING_CRDS)):
        match = re.search(rf"^\s*knative\.dev/{dependency}\s+(\S+)", gomod, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"knative.dev/serving's go.mod does not require {dependency}")
        folder, _ = go.module(f"knative.dev/{dependency}", match.group(1))
        for name in names:
            shutil.copyfile(folder / "config" / name, crds / f"{dependency}-{name}")
        if dependency == "networking":
            shutil.copyfile(
                folder / "config" / "config-network.yaml", config / "config-network.yaml"
            )

    go.write("go.mod", "module kindling.local/knative\n\ngo 1.25\n")
    imports = "\n".join(
        f'\t_ "knative.dev/serving/{Path(f).parent}"' for f, _ in KNATIVE_COMMANDS.values()
    )
    go.write("tools.go", f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    go("get", f"knative.dev/serving@{versions.KNATIVE_SERVING}")
    go("mod", "tidy")
    for binary, (file, patches) in KNATIVE_COMMANDS.items():
        package = go.workdir / "cmd" / binary
        package.mkdir(parents=True)
        for source in (serving / file).parent.glob("*.go"):
            if not source.name.endswith("_test.go"):
                shutil.copyfile(source, package / source.name)
        main = package / Path(file).name
        text = main.read_text()
        for old, new in patches:
            if old not in text:
                raise RuntimeError(
                    f"knative.dev/serving {file} no longer has {old!r}: see tools.py"
                )
            text = text.replace(old, new, 1)
        main.write_text(text)
    # One build for every binary: one link step each, in parallel, one cache.
    go("build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "bin") + "/", "./cmd/...")


# Each step of a build, in the order they run, and what it writes under the folder: what
# a later folder may take from this one (`_build_into`).
STEPS: dict[str, tuple[Step, tuple[str, ...]]] = {
    "kubernetes": (
        _kubernetes,
        tuple(f"bin/{name}" for name in (*KUBERNETES_COMMANDS, "pause")),
    ),
    "etcd": (_etcd, ("bin/etcd",)),
    "kwok": (_kwok, ("bin/kwok", "kwok")),
    "helm": (_helm, ("bin/helm",)),
    "knative": (_knative, (*(f"bin/{name}" for name in KNATIVE_COMMANDS), "crds", "knative")),
    "coredns": (_coredns, ("bin/coredns",)),
    "registry": (_registry, ("bin/registry",)),
    "containerd": (
        _containerd,
        ("bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"),
    ),
}
