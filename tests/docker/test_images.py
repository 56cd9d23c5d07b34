"""The images build and serve: docker/build_images.py builds the runtime and controller
images with podman on the debootstrap base (the runtime's whole image, FROM scratch with
what docker/rootfs.py gathers from that base, within its size budget), and
docker/check_image.py starts the runtime from its image's own filesystem, read-only and
as its non-root user, where every sample model answers tritonclient, and so does a model
the runtime downloads from a model_uri into its writable /tmp.

`make images` runs the same two scripts and prints the figures (sizes, build times, cold
start against .venv's); this test asserts what must hold, and no timing: the cold-start
figures are printed in its output only. Root only (debootstrap, rootful podman, chroot):
`make test` runs as root here and installs podman and debootstrap (`make image-tools`).
First run about 2.5 minutes (the base, then both builds), then about 20 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_MODELS
from tests.docker.helpers import DOCKER

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TAG = "test"


@pytest.mark.timeout(1800)  # a cold first build on a loaded machine; ~2.5 min here
def test_images_build_within_budget_and_serve_every_model(
    model_repository: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.fail("building and running the images needs root: run `make images` as root")
    report = tmp_path / "images.json"
    build = subprocess.run(
        [sys.executable, str(DOCKER / "build_images.py"), "--tag", TAG, "--report", str(report)],
        capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-6000:]
    built = json.loads(report.read_text())
    runtime, controller = built["images"]["runtime"], built["images"]["controller"]
    # The whole image, interpreter and libraries included, is held to the budget; the venv
    # alone is most of it, and the controller still sits on the base.
    assert runtime["bytes"] <= built["budget_bytes"] == 150 * 10**6
    assert runtime["venv_file_bytes"] + runtime["other_file_bytes"] <= runtime["bytes"]
    assert runtime["venv_file_bytes"] > runtime["other_file_bytes"]
    assert controller["bytes"] > built["base"]["bytes"]

    # The image's user (65532) reads the repository through a read-only bind mount, so its
    # folder must let others in: pytest makes its temporary folders 0700 (`make test` passes
    # ./models, which is 0755 already).
    mode = model_repository.stat().st_mode
    if mode & 0o005 != 0o005:
        model_repository.chmod(mode | 0o005)
    check = subprocess.run(
        [sys.executable, str(DOCKER / "check_image.py"), "--image", runtime["tag"],
         "--model-repository", str(model_repository), "--runs", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(check.stdout)
    assert check.returncode == 0, check.stdout[-6000:] + check.stderr[-6000:]
    assert "runs as uid 65532, root filesystem mounted ro" in check.stdout
    for model in SAMPLE_MODELS:
        assert f"  {model:14} 200  " in check.stdout, model
    assert "  fetched        200  logits [1, 1000]  (model_uri http://" in check.stdout
    assert "spawn to first 200 (client)" in check.stdout
