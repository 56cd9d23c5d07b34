"""The chart's checking tools, pinned here and installed outside the repository.

`make chart-tools` (which `make test` runs) calls `python -m tests.charts.tools install`:
- `@bitnami/readme-generator-for-helm` from npm, into
  $KINDLING_CACHE_DIR/npm/readme-generator-for-helm-<version>: writes the README's
  parameter table from the `## @param` lines of values.yaml (`make chart-readme`);
- `checkov` from PyPI, into its own virtualenv $KINDLING_CACHE_DIR/checkov/<version>: it
  pins dozens of packages (boto3, networkx, ...) that have no business in .venv.

Each is installed once per version, under a lock, and marked complete only at the end, so
an interrupted install is redone rather than half-used.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

from kindling.env import cache_root

README_GENERATOR = "2.7.2"
CHECKOV = "3.3.30"

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kindling"
DONE = ".installed"
HINT = "make chart-tools"


class ToolMissing(RuntimeError):
    pass


def readme_generator_dir() -> Path:
    return cache_root(os.environ) / "npm" / f"readme-generator-for-helm-{README_GENERATOR}"


def checkov_dir() -> Path:
    return cache_root(os.environ) / "checkov" / CHECKOV


def readme_generator() -> Path:
    return _require(readme_generator_dir(), "node_modules/.bin/readme-generator")


def checkov() -> Path:
    return _require(checkov_dir(), "bin/checkov")


def _require(folder: Path, binary: str) -> Path:
    if not (folder / DONE).is_file():
        raise ToolMissing(f"{folder} is not installed: run `{HINT}`")
    return folder / binary


def _install(folder: Path, create: Callable[[Path], None], steps: list[list[str]]) -> None:
    """Create `folder` and run `steps`, under a lock; marked complete only at the end. A
    venv cannot be moved once made (its scripts name their interpreter by path), so each
    tool is built in place and an interrupted install is wiped and redone."""
    if (folder / DONE).is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / DONE).is_file():  # installed by the process we waited for
            return
        shutil.rmtree(folder, ignore_errors=True)
        create(folder)
        for step in steps:
            subprocess.run(step, check=True)
        (folder / DONE).touch()


def install_readme_generator() -> Path:
    folder = readme_generator_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise ToolMissing("npm is missing: install Node.js (Debian: apt-get install npm)")
    package = f"@bitnami/readme-generator-for-helm@{README_GENERATOR}"
    quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
    _install(folder, Path.mkdir, [[npm, "install", "--prefix", str(folder), *quiet, package]])
    return readme_generator()


def install_checkov() -> Path:
    folder = checkov_dir()
    pip = str(folder / "bin" / "pip")

    def create(path: Path) -> None:
        venv.create(path, with_pip=True)

    _install(folder, create, [[pip, "install", "-q", f"checkov=={CHECKOV}"]])
    return checkov()


def generate_readme(readme: Path, values: Path = CHART / "values.yaml") -> None:
    """Rewrite the parameter table of `readme` from the `## @param` lines of `values`."""
    subprocess.run(
        [str(readme_generator()), "--values", str(values), "--readme", str(readme)],
        check=True,
        capture_output=True,
        text=True,
    )


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "install"
    if command == "install":
        print(f"readme-generator-for-helm {README_GENERATOR}: {install_readme_generator()}")
        print(f"checkov {CHECKOV}: {install_checkov()}")
        return 0
    if command == "readme":
        install_readme_generator()
        generate_readme(CHART / "README.md")
        print(f"wrote the parameter table of {CHART / 'README.md'}")
        return 0
    print(f"usage: python -m tests.charts.tools [install|readme], not {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
