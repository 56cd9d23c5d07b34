"""The cluster's image registry: CNCF distribution on a loopback port, plain HTTP.

The real node pulls from it as a cluster pulls from any registry, so an image's size turns
into pull time that is measured (containerd's CRI speaks plain HTTP to a loopback host:
`defaultScheme`, pkg/cri/server/image_pull.go). Only this machine can reach it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kindling.cluster.processes import free_port, get, wait_until

if TYPE_CHECKING:
    from kindling.cluster.controlplane import ControlPlane


def start(plane: ControlPlane, storage: Path) -> str:
    """Start it beside the control plane; returns its address, `127.0.0.1:PORT`."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    storage.mkdir(parents=True, exist_ok=True)
    # distribution's configuration (docs/content/about/configuration.md): filesystem
    # storage, deletes allowed (tests clean up), no access log, no debug listener.
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": address},
    }
    path = storage.parent / "registry.json"
    path.write_text(json.dumps(config))  # YAML is a superset of JSON
    process = plane.launch("registry", ["serve", str(path)])
    wait_until(lambda: bool(get(f"http://{address}/v2/")), "the image registry", [process])
    return address
