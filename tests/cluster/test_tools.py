"""The tool cache, in-process: where it lives, what a missing build says, and that a built
cache is used without going near Go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kindling.cluster import tools, versions


def _fill(root: Path) -> None:
    """A complete-looking cache folder: every binary present and executable, the stamp."""
    (root / "bin").mkdir(parents=True)
    for name in tools.BINARIES:
        path = root / "bin" / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / tools.STAMP).write_text(json.dumps({"versions": versions.ALL}))


def test_the_cache_folder_is_keyed_by_every_pinned_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = versions.key()
    assert versions.KUBERNETES in key and versions.KNATIVE_SERVING in key
    monkeypatch.setitem(versions.ALL, "kwok", "v0.0.1")
    assert versions.key() != key


def test_tools_live_under_kindling_cache_dir(tmp_path: Path) -> None:
    found = tools.locate({"KINDLING_CACHE_DIR": str(tmp_path)})
    assert found.root == tmp_path / "cluster" / versions.key()
    assert found.bin("kube-apiserver") == found.root / "bin" / "kube-apiserver"


def test_missing_tools_fail_with_the_command_that_builds_them(tmp_path: Path) -> None:
    found = tools.locate({"KINDLING_CACHE_DIR": str(tmp_path)})
    with pytest.raises(tools.ToolsMissing, match="make cluster-tools"):
        found.require()
    _fill(found.root)
    (found.root / "bin" / "kwok").unlink()
    with pytest.raises(tools.ToolsMissing, match="kwok"):
        found.require()


def test_a_built_cache_costs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"KINDLING_CACHE_DIR": str(tmp_path)}
    _fill(tools.locate(env).root)

    def no_build(*args: object) -> None:
        raise AssertionError("rebuilt a complete cache")

    monkeypatch.setattr(tools, "_build_into", no_build)
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    assert tools.build(env).missing() == []
    assert not (tmp_path / "cluster" / ".build.lock").exists()


def test_an_interrupted_build_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"KINDLING_CACHE_DIR": str(tmp_path)}

    def half_build(out: Path, log: object) -> dict[str, float]:
        (out / "bin").mkdir()
        (out / "bin" / "etcd").write_text("half")
        raise RuntimeError("go build failed")

    monkeypatch.setattr(tools, "_build_into", half_build)
    with pytest.raises(RuntimeError, match="go build failed"):
        tools.build(env, log=lambda line: None)
    cluster_dir = tmp_path / "cluster"
    assert [p.name for p in cluster_dir.iterdir()] == [".build.lock"]
    assert tools.locate(env).missing()
