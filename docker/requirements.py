"""Print, one per line, the pip requirements an image installs, read from pyproject.toml.

    python3 docker/requirements.py runtime|runtime-gpu|controller[+EXTRA...] [PYPROJECT]

Run inside the image's build stage (stdlib only, Python 3.11+ for tomllib), so each image
installs exactly what pyproject.toml declares and nothing is listed twice:
- runtime: the project's `dependencies`, the runtime's and nothing else;
- runtime-gpu: the same with `onnxruntime` swapped for `onnxruntime-gpu[cuda,cudnn]`, whose
  extras bring CUDA and cuDNN as nvidia-* wheels (onnxruntime's "Install ONNX Runtime",
  CUDA section: no CUDA base image needed);
- controller: the `controller` extra (the `kubernetes` client and `prometheus_client`);
- `+EXTRA` adds one of the project's extras to any of them: `runtime+grpc` is the runtime
  image built with `--build-arg GRPC=1`.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# A requirement's distribution name (PEP 508): what comes before extras, specifiers, markers.
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# The GPU build of onnxruntime and the extras that pull CUDA 12 and cuDNN 9 from PyPI.
GPU_PACKAGE = "onnxruntime-gpu[cuda,cudnn]"


def requirement_name(requirement: str) -> str:
    """The normalized (PEP 503) distribution name of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(image: str, pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    image, *extras = image.split("+")
    added: list[str] = []
    for extra in extras:
        if extra not in project["optional-dependencies"]:
            raise ValueError(f"unknown extra {extra!r}")
        added += project["optional-dependencies"][extra]
    return _image_requirements(image, project) + added


def _image_requirements(image: str, project: dict) -> list[str]:
    runtime: list[str] = list(project["dependencies"])
    if image == "runtime":
        return runtime
    if image == "runtime-gpu":
        swapped = []
        for req in runtime:
            name = requirement_name(req)
            swapped.append(GPU_PACKAGE + req[len(name) :] if name == "onnxruntime" else req)
        if swapped == runtime:
            raise ValueError("pyproject.toml's dependencies no longer list onnxruntime")
        return swapped
    if image == "controller":
        chosen = list(project["optional-dependencies"]["controller"])
        if "kubernetes" not in {requirement_name(req) for req in chosen}:
            raise ValueError("pyproject.toml's controller extra no longer lists kubernetes")
        return chosen
    raise ValueError(f"unknown image {image!r}: runtime, runtime-gpu or controller")


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    pyproject = Path(argv[1]) if len(argv) == 2 else Path("pyproject.toml")
    try:
        print("\n".join(requirements(argv[0], pyproject)))
    except (ValueError, KeyError) as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
