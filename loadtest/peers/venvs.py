"""One virtualenv per peer, under ~/.cache/kindling/peers/, made on first use.

Peers pin conflicting versions of fastapi, pydantic, uvicorn and more, so none of them is
installed beside Kindling: each gets its own venv, keyed by what it installs (the peer's
pinned package, onnxruntime's version, the Python version), and runs as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kindling.loadtest.peers.catalog import Peer

INSTALL_TIMEOUT_S = 1800


class PeerUnavailable(Exception):
    """The peer cannot run here; the message says why, for the report."""


def cache_root() -> Path:
    base = os.environ.get("KINDLING_CACHE_DIR") or "~/.cache/kindling"
    return Path(base).expanduser() / "peers"


def venv_dir(peer: Peer, packages: list[str], root: Path | None = None) -> Path:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256("\n".join([py, *packages]).encode()).hexdigest()[:10]
    version = peer.packages[0].partition("==")[2] or "any"
    return (root or cache_root()) / f"{peer.name}-{version}-py{py}-{key}"


def base_python() -> str:
    """The interpreter this venv was made from: peers get a clean one, not Kindling's."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(peer: Peer, packages: list[str], root: Path | None = None) -> Path:
    """The peer venv's python, installing it first if needed; PeerUnavailable if pip fails."""
    if not peer.packages:
        return Path(sys.executable)
    target = venv_dir(peer, packages, root)
    python = target / "bin" / "python"
    marker = target / ".installed"
    if marker.is_file():
        return python
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"  installing {' '.join(packages)} into {target} (first use)", flush=True)
    subprocess.run([base_python(), "-m", "venv", str(target)], check=True)
    log = target / "pip.log"
    with log.open("w") as out:
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *packages],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=INSTALL_TIMEOUT_S,
        )
    if result.returncode != 0:
        errors = [ln for ln in log.read_text().splitlines() if ln.startswith("ERROR")]
        reason = errors[-1] if errors else f"pip exited {result.returncode}"
        raise PeerUnavailable(f"pip install failed: {reason} (log: {log})")
    marker.write_text("\n".join(packages) + "\n")
    return python
