"""Build the images with podman where no registry can be reached, and check their sizes.

    python docker/build_images.py [--image runtime|controller ...] [--base IMAGE] [--models M]

1. The base: no registry is reachable here, so `python:3.11-slim-bookworm` cannot be
   pulled. debootstrap makes the same thing from Debian's archive: a minimal bookworm
   with Debian's python3 (3.11) and python3-venv, imported with `podman import` as
   localhost/kindling-base:bookworm-<recipe hash>. The tarball is cached under
   $KINDLING_CACHE_DIR/images/<recipe hash>/, so it is made once per recipe.
2. `podman build --isolation chroot` of docker/Dockerfile.<image> (no container engine
   runs here; chroot isolation needs none) with BASE set to that base.
3. Sizes (`podman image inspect`), total and above the base, the runtime's whole image
   against its budget, and build times, printed and written to build/images.json. The
   runtime is FROM scratch (docker/rootfs.py gathers what it needs from the base), so its
   total is all a node pulls; its split between /opt/venv and the rest (interpreter,
   standard library, shared libraries, /etc) is read from the image's files.

Root only (debootstrap, rootful podman). `make images` installs podman and debootstrap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kindling.env import cache_root

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"

# The base recipe; its hash names the cached tarball and the image tag, so changing any of
# it makes a new base. python3-venv gives `python3 -m venv` (ensurepip), which the
# official python image has built in; ca-certificates for https:// model URIs and rediss://.
BASE_RECIPE: dict[str, object] = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python3-venv", "ca-certificates"],
    # What a container image has no use for, removed before the tarball is written
    # (the docker official debian:*-slim images drop the same).
    "remove": [
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*",
        "var/log/*",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
    ],
    # As the official image sets them; `podman import` sets no environment of its own.
    "env": {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    },
    "recipe": 1,
}
DEFAULT_MIRROR = "http://deb.debian.org/debian"

IMAGES = {
    "runtime": "Dockerfile.runtime",
    "controller": "Dockerfile.controller",
    # Debian's redis-server and curl, for the chart's Redis and its loader's download.
    "redis": "Dockerfile.redis",
}
# The runtime's whole image, uncompressed, without models, interpreter and libraries
# included: paper 001's onnxruntime deployment package was 92 MB; AWS Lambda's limit for one
# unzipped is 250 MB.
RUNTIME_BUDGET_BYTES = 150 * 10**6
MB = 10**6


def recipe_key() -> str:
    blob = json.dumps(BASE_RECIPE, sort_keys=True).encode()
    return f"{BASE_RECIPE['suite']}-{hashlib.sha256(blob).hexdigest()[:12]}"


def base_tag() -> str:
    return f"localhost/kindling-base:{recipe_key()}"


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+ " + " ".join(args), flush=True)
    return subprocess.run(args, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def podman_output(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def image_size(tag: str) -> int:
    return int(podman_output("image", "inspect", "--format", "{{.Size}}", tag).strip())


def file_bytes(tag: str, folder: str) -> tuple[int, int]:
    """Bytes of the image's regular files (symlinks as their length) under `folder` and
    elsewhere: where an image's size goes, without the tar headers `Size` also counts."""
    root = Path(podman_output("image", "mount", tag).strip())
    inside = outside = 0
    try:
        for dirpath, _, filenames in os.walk(root):
            under = Path(dirpath).is_relative_to(root / folder.lstrip("/"))
            size = sum((Path(dirpath) / name).lstat().st_size for name in filenames)
            if under:
                inside += size
            else:
                outside += size
    finally:
        subprocess.run(["podman", "image", "unmount", tag], check=False, capture_output=True)
    return inside, outside


def make_base_tarball(target: Path) -> float:
    """debootstrap the recipe into a scratch folder beside `target`, trim it, tar it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mirror = os.environ.get("KINDLING_DEBIAN_MIRROR", DEFAULT_MIRROR)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="debootstrap-") as scratch:
        root = Path(scratch) / "rootfs"
        include = ",".join(BASE_RECIPE["include"])  # type: ignore[arg-type]
        run(
            "debootstrap",
            f"--variant={BASE_RECIPE['variant']}",
            f"--include={include}",
            str(BASE_RECIPE["suite"]),
            str(root),
            mirror,
            stdout=subprocess.DEVNULL,
        )
        for pattern in BASE_RECIPE["remove"]:  # type: ignore[attr-defined]
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        # The build host's name and resolver do not belong in an image; the engine
        # provides both at run time.
        for name in ("etc/hostname", "etc/resolv.conf"):
            (root / name).unlink(missing_ok=True)
        partial = target.with_suffix(".partial")
        run("tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), ".")
        partial.rename(target)
    return time.perf_counter() - started


def ensure_base() -> tuple[str, float]:
    """The base image's tag, and the seconds spent making it (0 when cached)."""
    tag = base_tag()
    if image_exists(tag):
        return tag, 0.0
    tarball = cache_root(os.environ) / "images" / recipe_key() / "rootfs.tar"
    seconds = 0.0 if tarball.is_file() else make_base_tarball(tarball)
    changes = [f"ENV {k}={v}" for k, v in BASE_RECIPE["env"].items()]  # type: ignore[attr-defined]
    started = time.perf_counter()
    run("podman", "import", *(a for c in changes for a in ("--change", c)), str(tarball), tag)
    return tag, seconds + time.perf_counter() - started


# Where the build sees the host's CA bundle, when pip on the host is told to use one.
BUILD_CA = "/run/kindling-build-ca.crt"


def host_ca_bundle() -> Path | None:
    """The CA bundle pip uses on this host (PIP_CERT, else what requests would use), if any:
    behind a TLS-inspecting proxy PyPI's certificate verifies only against it."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value).resolve()
    return None


def build(
    image: str, base: str, tag: str, build_args: dict[str, str], target: str | None = None
) -> float:
    build_args = {"BASE": base, **build_args}
    mounts = []
    ca = host_ca_bundle()
    if ca is not None:
        # Mounted for the RUN steps only (no layer keeps it); the Dockerfiles' ARG PIP_CERT.
        mounts.append(f"--volume={ca}:{BUILD_CA}:ro")
        build_args["PIP_CERT"] = BUILD_CA
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    started = time.perf_counter()
    run(
        "podman",
        "build",
        "--isolation=chroot",
        "--layers",
        "--pull=never",
        "-f",
        str(DOCKER / IMAGES[image]),
        *args,
        *mounts,
        *([f"--target={target}"] if target else []),
        "-t",
        tag,
        str(REPO),
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="append", choices=list(IMAGES), help="default: all")
    parser.add_argument("--base", help="an existing base image (default: the debootstrap one)")
    parser.add_argument("--models", default="", help="MODELS build arg of the runtime image")
    parser.add_argument(
        "--build-arg", action="append", default=[], metavar="KEY=VALUE", help="to every build"
    )
    parser.add_argument("--target", help="build this stage (the runtime's: openwhisk)")
    parser.add_argument("--tag", default="dev", help="tag of the built images")
    parser.add_argument("--report", type=Path, default=REPO / "build" / "images.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("build_images.py: needs root (debootstrap, rootful podman)", file=sys.stderr)
        return 1

    base, base_seconds = (args.base, 0.0) if args.base else ensure_base()
    base_bytes = image_size(base)
    report: dict[str, object] = {
        "base": {"tag": base, "bytes": base_bytes, "seconds": round(base_seconds, 1)},
        "budget_bytes": RUNTIME_BUDGET_BYTES,
        "images": {},
    }
    images: dict[str, dict[str, object]] = report["images"]  # type: ignore[assignment]
    for image in args.image or list(IMAGES):
        tag = f"localhost/kindling-{image}:{args.tag}"
        build_args = dict(a.split("=", 1) for a in args.build_arg)
        if image == "runtime" and args.models:
            build_args["MODELS"] = args.models
        seconds = build(image, base, tag, build_args, args.target)
        size = image_size(tag)
        venv_bytes, other_bytes = file_bytes(tag, "/opt/venv")
        images[image] = {
            "tag": tag,
            "bytes": size,
            "above_base_bytes": size - base_bytes,
            "venv_file_bytes": venv_bytes,
            "other_file_bytes": other_bytes,
            "build_seconds": round(seconds, 1),
            "models": args.models if image == "runtime" else None,
        }

    print(
        f"\n{'image':48}{'total MB':>10}{'above base MB':>15}{'venv MB':>9}{'rest MB':>9}"
        f"{'build s':>9}"
    )
    print(f"{base:48}{base_bytes / MB:10.1f}{'':33}{base_seconds:9.1f}")
    for info in images.values():
        print(
            f"{info['tag']!s:48}{info['bytes'] / MB:10.1f}"  # type: ignore[operator]
            f"{info['above_base_bytes'] / MB:15.1f}"  # type: ignore[operator]
            f"{info['venv_file_bytes'] / MB:9.1f}{info['other_file_bytes'] / MB:9.1f}"  # type: ignore[operator]
            f"{info['build_seconds']:9.1f}"
        )
    print("(venv, rest: the bytes of the image's files in /opt/venv and elsewhere)")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.report}")

    runtime = images.get("runtime")
    if runtime and not args.models:
        total = runtime["bytes"]
        verdict = "within" if total <= RUNTIME_BUDGET_BYTES else "OVER"  # type: ignore[operator]
        print(
            f"runtime, the whole image: {total / MB:.1f} MB, {verdict} the "  # type: ignore[operator]
            f"{RUNTIME_BUDGET_BYTES / MB:.0f} MB budget"
        )
        if verdict == "OVER":
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
