"""Images the real node needs that are not the project's Dockerfiles: single-layer images
made of static binaries, written without a container engine.

- `pause`: the pod sandbox's process (Kubernetes' build/pause: a static binary as the
  image's only file, USER 65535), as a docker-archive that `ctr images import` loads
  under the name containerd's CRI asks for;
- `probe`: the node tests' workload (cluster/probe/main.go), pushed to the loopback
  registry and pulled by the node as any user image is.

An image is its layer (a tar, deterministic: fixed owners and times) and its config
(the OCI image config: entrypoint, user, the layer's diff ID).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kindling.env import cache_root

PROBE_SOURCE = Path(__file__).resolve().parent / "probe" / "main.go"
NONROOT = "65532:65532"  # distroless' nonroot, as the project's own images run

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Image:
    layer: bytes  # an uncompressed tar
    config: bytes  # the OCI image config, JSON

    @classmethod
    def of_binary(cls, binary: Path, path: str, user: str, args: list[str]) -> Image:
        """One static binary at `path`, run as `user` with `args` as the command."""
        layer = _layer({path: binary.read_bytes()})
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [path], "Cmd": args, "User": user, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
        return cls(layer, json.dumps(config, sort_keys=True).encode())

    def docker_archive(self, name: str, target: Path) -> Path:
        """`docker save`'s layout, which `ctr images import` reads with its tag."""
        config_name = _digest(self.config).split(":")[1] + ".json"
        layer_name = _digest(self.layer).split(":")[1] + "/layer.tar"
        manifest = [{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}]
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(target, "w") as archive:
            for member, data in (
                (config_name, self.config),
                (layer_name, self.layer),
                ("manifest.json", json.dumps(manifest).encode()),
            ):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return target

    def push(self, registry: str, repository: str, tag: str) -> str:
        """Push with the registry API (distribution spec: a monolithic blob upload each,
        then the manifest); returns the manifest's digest."""
        # Level 6, zlib's and Go's compress/gzip's default: level 9 takes three times as
        # long (15 s for the three Knative images here) for 6 % fewer bytes.
        layer = gzip.compress(self.layer, compresslevel=6, mtime=0)
        for blob in (layer, self.config):
            _upload_blob(registry, repository, blob)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(self.config),
                       "size": len(self.config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _digest(layer),
                        "size": len(layer)}],
        }  # fmt: skip
        body = json.dumps(manifest).encode()
        request = urllib.request.Request(
            f"http://{registry}/v2/{repository}/manifests/{tag}",
            data=body,
            method="PUT",
            headers={"Content-Type": OCI_MANIFEST},
        )
        with _opener().open(request, timeout=60) as response:
            if response.status != 201:
                raise RuntimeError(f"manifest push to {registry}: {response.status}")
        return _digest(body)


def pause(binary: Path, folder: Path) -> Path:
    """The pause image as containerd's CRI names it (containerd.toml's sandbox_image)."""
    from kindling.cluster import versions

    image = Image.of_binary(binary, "/pause", "65535:65535", [])
    return image.docker_archive(f"registry.k8s.io/pause:{versions.PAUSE}", folder / "pause.tar")


def probe(env: dict[str, str] | None = None) -> Image:
    return Image.of_binary(build_probe(env), "/kindling-probe", NONROOT, ["serve"])


def build_probe(env: dict[str, str] | None = None) -> Path:
    """The probe's static binary, built once per source and Go version (a few seconds)."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the node's test image is built with Go (1.26): `go` is not on PATH")
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout
    source = PROBE_SOURCE.read_bytes()
    key = hashlib.sha256(source + version.encode()).hexdigest()[:12]
    binary = cache_root(os.environ if env is None else env) / "probe" / key / "kindling-probe"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    # One file, the standard library only: built outside any module.
    build_env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOWORK": "off"}
    subprocess.run(
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), str(PROBE_SOURCE)],
        check=True,
        capture_output=True,
        env=build_env,
    )
    partial.rename(binary)
    return binary


def _layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def _upload_blob(registry: str, repository: str, blob: bytes) -> None:
    digest = _digest(blob)
    head = urllib.request.Request(
        f"http://{registry}/v2/{repository}/blobs/{digest}", method="HEAD"
    )
    try:
        with _opener().open(head, timeout=60):
            return  # already there
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    start = urllib.request.Request(
        f"http://{registry}/v2/{repository}/blobs/uploads/", data=b"", method="POST"
    )
    with _opener().open(start, timeout=60) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    separator = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{separator}digest={digest}",
        data=blob,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with _opener().open(put, timeout=120) as response:
        if response.status != 201:
            raise RuntimeError(f"blob push to {registry}: {response.status}")
