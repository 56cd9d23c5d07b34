"""Publish what a cluster pulls: the images `make images` built, and the Helm chart, to any
OCI registry.

    python docker/publish.py images --registry REGISTRY[/PATH] [--tag 0.1.0] [--tls-verify false]
    python docker/publish.py chart --registry REGISTRY[/PATH] [--plain-http]

`images` pushes localhost/kindling-{runtime,controller,redis}:TAG (build_images.py's names)
to REGISTRY/kindling-NAME:TAG with `podman push` (the tool that built them); the chart then
pulls them with `--set global.imageRegistry=REGISTRY`. `chart` packages charts/kindling
(`helm package`) and pushes it (`helm push`, Helm's OCI support), so that
`helm install kindling oci://REGISTRY/kindling --version VERSION` installs it. Log in first
the way each tool does (`podman login`, `helm registry login`); `--tls-verify false` and
`--plain-http` are for a registry without TLS, such as the test cluster's loopback one.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kindling"
# The images the chart runs (values.yaml: runtime.image, controller.image, redis.image with
# the Debian Redis recipe), as build_images.py tags them.
IMAGES = ("runtime", "controller", "redis")


def chart_meta() -> dict[str, str]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def push_images(registry: str, tag: str, tls_verify: bool = True) -> list[str]:
    """podman push of each built image; returns the references pushed."""
    pushed = []
    for name in IMAGES:
        target = f"{registry.rstrip('/')}/kindling-{name}:{tag}"
        subprocess.run(
            ["podman", "push", "--quiet", f"--tls-verify={str(tls_verify).lower()}",
             f"localhost/kindling-{name}:{tag}", f"docker://{target}"],
            check=True,
        )  # fmt: skip
        pushed.append(target)
    return pushed


def push_chart(registry: str, helm: str = "helm", plain_http: bool = False) -> str:
    """helm package + helm push; returns the chart's oci:// reference with its version."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([helm, "package", str(CHART), "--destination", out], check=True)
        (package,) = Path(out).glob("kindling-*.tgz")
        repository = f"oci://{registry.rstrip('/')}"
        flags = ["--plain-http"] if plain_http else []
        subprocess.run([helm, "push", str(package), repository, *flags], check=True)
    return f"{repository}/kindling:{chart_meta()['version']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker/publish.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    images = commands.add_parser("images", help="push the built images")
    images.add_argument("--registry", required=True, help="host[:port][/path]")
    images.add_argument("--tag", default=str(chart_meta()["appVersion"]))
    images.add_argument("--tls-verify", choices=("true", "false"), default="true")
    chart = commands.add_parser("chart", help="package and push the Helm chart")
    chart.add_argument("--registry", required=True, help="host[:port][/path]")
    chart.add_argument("--helm", default=shutil.which("helm") or "helm")
    chart.add_argument("--plain-http", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "images":
            for reference in push_images(args.registry, args.tag, args.tls_verify == "true"):
                print(reference)
        else:
            print(push_chart(args.registry, args.helm, args.plain_http))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        print(f"docker/publish.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
