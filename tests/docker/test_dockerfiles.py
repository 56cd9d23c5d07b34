"""What the Dockerfiles promise, checked on their text: the same files build on the official
Python image and on the debootstrap base, only the runtime's dependencies go in, the final
stage is non-root with bytecode compiled (the runtime's FROM scratch, with the root that
docker/rootfs.py gathers and checks), and no package of pyproject.toml is left out."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.docker.helpers import DOCKER, load

REPO = DOCKER.parent
PYPROJECT = REPO / "pyproject.toml"
reqs = load("requirements")
IMAGES = {
    "Dockerfile.runtime": ["serve"],
    "Dockerfile.runtime-gpu": ["serve"],
    "Dockerfile.controller": ["controller", "run"],
}


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) per stage; [0] is what
    precedes the first FROM."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", dockerfile.read_text())
    result: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        result[-1].append(line)
    return result


def image(dockerfile: Path, target: str | None = None) -> list[str]:
    """The instructions that make the image of `target` (default: the last stage), its
    parent stages' first: `FROM runtime AS openwhisk` inherits everything of `runtime`."""
    parsed = stages(dockerfile)[1:]
    names = {}
    for stage in parsed:
        words = stage[0].split()
        if len(words) == 4:
            names[words[3]] = stage
    stage = names[target] if target else parsed[-1]
    parent = stage[0].split()[1]
    return (image(dockerfile, parent) if parent in names else []) + stage


@pytest.mark.parametrize("name", IMAGES)
def test_base_is_a_build_arg_defaulting_to_the_official_image(name: str) -> None:
    parts = stages(DOCKER / name)
    assert "ARG BASE=python:3.11-slim-bookworm" in parts[0]
    aliases: set[str] = {"scratch"}  # nothing to pull: the runtime's final stage
    for stage in parts[1:]:
        match = re.fullmatch(r"FROM (\S+)( AS ([a-z-]+))?", stage[0])
        assert match and (match.group(1) == "${BASE}" or match.group(1) in aliases), stage[0]
        aliases.add(match.group(3) or "")


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_is_non_root_and_starts_kindling(name: str) -> None:
    final = image(DOCKER / name)
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users  # numeric, not 0
    entrypoint = [i for i in final if i.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint[-1].removeprefix("ENTRYPOINT ")) == [
        "/opt/venv/bin/kindling", *IMAGES[name],
    ]  # fmt: skip
    env = " ".join(i for i in final if i.startswith("ENV "))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PATH=/opt/venv/bin:" in env
    assert "HOME=/tmp" in env  # any uid may run it; Path.home() reads $HOME first
    assert "KINDLING_OPENWHISK" not in env  # the default image serves OIP
    # The venv comes from the build, and nothing is installed in the final stage.
    copied = [i.split()[2] for i in final if i.startswith("COPY --from=")]
    assert "/opt/venv" in copied and not any(i.startswith("RUN pip") for i in final)


def test_runtime_is_from_scratch_with_only_the_gathered_root_the_venv_and_models() -> None:
    """Distroless-style: no base image below the runtime, so no shell and no package
    manager; its root is what rootfs.py gathered and checked in a chroot as the image's user."""
    parsed = stages(DOCKER / "Dockerfile.runtime")
    runtime = next(s for s in parsed[1:] if s[0] == "FROM scratch AS runtime")
    assert not any(i.startswith(("RUN ", "ADD ")) for i in runtime)
    copies = [i for i in runtime if i.startswith("COPY ")]
    assert copies == [
        "COPY --from=rootfs /rootfs /",
        "COPY --from=build /opt/venv /opt/venv",
        "COPY --from=models /models /models",
    ]
    rootfs = " ".join(
        " ".join(next(s for s in parsed[1:] if s[0] == "FROM ${BASE} AS rootfs")).split()
    )
    gather = rootfs.index("rootfs.py gather /rootfs --venv /opt/venv --user 65532")
    verify = rootfs.index(
        "chroot --userspec=65532:65532 --groups= /rootfs /opt/venv/bin/python /tmp/rootfs.py verify"
    )
    cleanup = rootfs.index("rm -rf /rootfs/opt/venv && find /rootfs/tmp -mindepth 1 -delete")
    assert gather < verify < cleanup
    assert "--walk kindling.runtime kindling.embeddings" in rootfs
    users = [i for i in runtime if i.startswith("USER ")]
    assert users == ["USER 65532:65532"]  # the user the build's check ran as


def test_openwhisk_target_is_the_runtime_with_the_action_protocol() -> None:
    runtime, openwhisk = (
        image(DOCKER / "Dockerfile.runtime"),
        image(DOCKER / "Dockerfile.runtime", "openwhisk"),
    )
    assert openwhisk[: len(runtime) - 1] == runtime[:-1]  # all but the default's bare FROM
    assert openwhisk[-1] == "ENV KINDLING_OPENWHISK=true"


@pytest.mark.parametrize("name", IMAGES)
def test_build_stage_trims_then_compiles_then_checks(name: str) -> None:
    build = " ".join(stages(DOCKER / name)[1])
    trim = build.index("slim_venv.py trim")
    compile_ = build.index("-m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib")
    check = build.index("slim_venv.py check")
    assert trim < compile_ < check
    image = name.removeprefix("Dockerfile.")
    # The runtime's list may take an extra from a build arg (GRPC=1: "runtime+grpc").
    assert re.search(rf'docker/requirements.py "?{image}(\$\{{\w+:\+\+\w+\}})?"? >', build)
    assert "PIP_NO_CACHE_DIR=1" in build and "ARG PIP_CERT" in build


def test_runtime_requirements_are_pyprojects_dependencies_and_no_more() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    runtime = reqs.requirements("runtime", PYPROJECT)
    assert runtime == project["dependencies"]
    names = {reqs.requirement_name(r) for r in runtime}
    for absent in ("torch", "onnx", "fastapi", "uvicorn", "pydantic", "onnxruntime-gpu"):
        assert absent not in names
    assert "onnxruntime" in names


def test_an_extra_adds_its_requirements_to_an_image() -> None:
    """`--build-arg GRPC=1` builds from `runtime+grpc`: the runtime's list plus the extra's."""
    runtime = reqs.requirements("runtime", PYPROJECT)
    with_grpc = reqs.requirements("runtime+grpc", PYPROJECT)
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["grpc"]
    assert with_grpc == runtime + extra
    assert {reqs.requirement_name(r) for r in extra} >= {"grpcio", "protobuf"}
    with pytest.raises(ValueError, match="unknown extra"):
        reqs.requirements("runtime+nope", PYPROJECT)


def test_gpu_requirements_swap_onnxruntime_for_its_cuda_build() -> None:
    cpu = reqs.requirements("runtime", PYPROJECT)
    gpu = reqs.requirements("runtime-gpu", PYPROJECT)
    changed = [(a, b) for a, b in zip(cpu, gpu, strict=True) if a != b]
    assert len(changed) == 1
    before, after = changed[0]
    assert after == "onnxruntime-gpu[cuda,cudnn]" + before.removeprefix("onnxruntime")


def test_controller_requirements_are_its_api_client_and_metrics_only() -> None:
    controller = reqs.requirements("controller", PYPROJECT)
    assert [reqs.requirement_name(r) for r in controller] == ["kubernetes", "prometheus-client"]


def test_unknown_image_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown image"):
        reqs.requirements("runtime-tpu", PYPROJECT)


def test_every_package_folder_is_in_the_context_and_copied() -> None:
    """setuptools needs every folder of [tool.setuptools.package-dir] to build the wheel: a
    new one must be re-included by .dockerignore (an allowlist) and copied by each build."""
    folders = set(
        tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert folders <= allowed
    assert {
        "pyproject.toml",
        "README.md",
        "docker/requirements.py",
        "docker/slim_venv.py",
        "docker/rootfs.py",
    } <= allowed
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] != "#"]
    assert rules[0] == "*"  # everything out, then the allowlist
    for name in IMAGES:
        build = stages(DOCKER / name)[1]
        copied = {i.split()[1] for i in build if i.startswith("COPY ") and "--from" not in i}
        assert folders <= copied, name
