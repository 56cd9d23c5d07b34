"""Estimate the GPU runtime image's size from its wheels, without building it.

    python docker/estimate_gpu.py [--wheels DIR]

docker/Dockerfile.runtime-gpu installs onnxruntime-gpu with CUDA and cuDNN from PyPI:
about 1.5 GB of wheels, 3 GB unpacked, too big to build on every `make images`. This
resolves what its build stage installs (`pip install --dry-run --report`), keeps the
distributions docker/slim_venv.py would keep, downloads each wheel with `--no-deps`
(into a temporary folder, or --wheels DIR to keep them) and sums, per wheel: its download
size, its size unpacked, and what of that ships after slim_venv's file trimming (the same
`dead` rules as the build). Bytecode (`compileall`) and stripped debug info are not
counted: a few MB either way, against gigabytes of CUDA libraries.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import slim_venv
from requirements import requirements

REPO = Path(__file__).resolve().parent.parent
LEAVES = frozenset({"onnxruntime-gpu", "tokenizers"})  # as Dockerfile.runtime-gpu's --leaf
OPTIONS = slim_venv.Options(drop_ort_extras=True)  # and its --drop-ort-* flags
MB = 10**6


def resolve(reqs: list[str], folder: Path) -> list[dict[str, object]]:
    """What pip would install for `reqs` on this Python and platform: name, version, and
    Requires-Dist of each."""
    req_file, report = folder / "requirements.txt", folder / "report.json"
    req_file.write_text("\n".join(reqs) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "-r",
            str(req_file),
        ],
        check=True,
    )
    return [item["metadata"] for item in json.loads(report.read_text())["install"]]


def shipped_bytes(wheel: Path) -> tuple[int, int]:
    """(unpacked, unpacked less what slim_venv removes) of one wheel."""
    unpacked = shipped = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            unpacked += info.file_size
            if slim_venv.dead(PurePosixPath(info.filename), OPTIONS) is None:
                shipped += info.file_size
    return unpacked, shipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="keep the downloaded wheels here")
    args = parser.parse_args(argv)
    reqs = requirements("runtime-gpu", REPO / "pyproject.toml")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.wheels or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        resolved = resolve(reqs, Path(tmp))
        requires = {
            slim_venv.normalize(m["name"]): list(m.get("requires_dist") or [])  # type: ignore[call-overload]
            for m in resolved
        }
        versions = {slim_venv.normalize(m["name"]): m["version"] for m in resolved}  # type: ignore[call-overload]
        keep = slim_venv.requirement_lines(reqs)
        kept = sorted(slim_venv.closure(keep, requires, LEAVES))
        dropped = sorted(set(requires) - set(kept))
        pins = [f"{name}=={versions[name]}" for name in kept]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), *pins],
            check=True,
        )
        rows = []
        for name in kept:
            stem = name.replace("-", "_")
            wheel = next(
                w
                for w in folder.glob("*.whl")
                if slim_venv.normalize(w.name.split("-")[0]) == slim_venv.normalize(stem)
            )
            rows.append((name, str(versions[name]), wheel.stat().st_size, *shipped_bytes(wheel)))

    print(
        f"{'distribution':28}{'version':>14}{'wheel MB':>10}{'unpacked MB':>13}{'shipped MB':>12}"
    )
    for name, version, wheel_bytes, unpacked, shipped in sorted(rows, key=lambda r: -r[4]):
        sizes = f"{wheel_bytes / MB:10.1f}{unpacked / MB:13.1f}{shipped / MB:12.1f}"
        print(f"{name:28}{version:>14}{sizes}")
    totals = [sum(r[i] for r in rows) for i in (2, 3, 4)]  # type: ignore[misc]
    print(f"{'total':42}{totals[0] / MB:10.1f}{totals[1] / MB:13.1f}{totals[2] / MB:12.1f}")
    print(f"not shipped (dependencies of leaves, installers): {', '.join(dropped) or 'none'}")
    base = "the base"
    built = REPO / "build" / "images.json"  # what `make images` measured, if it ran
    if built.is_file():
        base = f"the base ({json.loads(built.read_text())['base']['bytes'] / MB:.0f} MB here)"
    print(
        f"estimated image: {totals[2] / MB:.0f} MB of venv above {base}; "
        f"{totals[0] / MB:.0f} MB of it downloaded as wheels (compressed)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
