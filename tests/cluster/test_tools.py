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

    def half_build(out: Path, *args: object) -> dict[str, float]:
        (out / "bin").mkdir()
        (out / "bin" / "etcd").write_text("half")
        raise RuntimeError("go build failed")

    monkeypatch.setattr(tools, "_build_into", half_build)
    with pytest.raises(RuntimeError, match="go build failed"):
        tools.build(env, log=lambda line: None)
    cluster_dir = tmp_path / "cluster"
    assert [p.name for p in cluster_dir.iterdir()] == [".build.lock"]
    assert tools.locate(env).missing()


def _fake_steps(monkeypatch: pytest.MonkeyPatch, ran: list[str]) -> None:
    """Steps that write their declared outputs without Go, and say that they ran."""

    def fake(name: str, outputs: tuple[str, ...]) -> tools.Step:
        def step(go: object, out: Path) -> None:
            ran.append(name)
            for output in outputs:
                path = out / output
                if output.startswith("bin/"):
                    path.write_text(f"#!/bin/sh\n# {name}\n")
                    path.chmod(0o755)
                else:
                    path.mkdir()
                    (path / "file").write_text(name)

        return step

    steps = {name: (fake(name, outputs), outputs) for name, (_, outputs) in tools.STEPS.items()}
    monkeypatch.setattr(tools, "STEPS", steps)


def test_a_changed_recipe_rebuilds_that_step_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"KINDLING_CACHE_DIR": str(tmp_path)}
    ran: list[str] = []
    _fake_steps(monkeypatch, ran)
    first = tools.build(env, log=lambda line: None)
    assert ran == list(tools.STEPS)
    ran.clear()
    monkeypatch.setitem(versions.RECIPES, "knative", "next")
    second = tools.build(env, log=lambda line: None)
    assert second.root != first.root and second.missing() == []
    assert ran == ["knative"]
    # The rest is the first folder's files, linked: no copy.
    assert second.bin("kubelet").stat().st_ino == first.bin("kubelet").stat().st_ino
    assert (second.root / "kwok" / "file").stat().st_ino == (
        first.root / "kwok" / "file"
    ).stat().st_ino
    assert second.bin("knative-controller").stat().st_ino != (
        first.bin("knative-controller").stat().st_ino
    )
    stamp = json.loads((second.root / tools.STAMP).read_text())
    assert stamp["steps"]["knative"] == versions.step_key("knative")


@pytest.mark.parametrize("named_right", [True, False])
def test_a_folder_from_before_per_step_recipes_is_taken_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named_right: bool
) -> None:
    """Folders built with the single recipe "4" have no step keys in their stamp: their
    name proves what they hold, and a folder whose name does not match proves nothing."""
    env = {"KINDLING_CACHE_DIR": str(tmp_path)}
    name = versions.legacy_key(versions.ALL) if named_right else "k8s-renamed"
    legacy = tmp_path / "cluster" / name
    _fill(legacy)
    for _, outputs in tools.STEPS.values():
        for output in outputs:
            if not output.startswith("bin/"):
                (legacy / output).mkdir(parents=True)
    ran: list[str] = []
    _fake_steps(monkeypatch, ran)
    assert tools.build(env, log=lambda line: None).missing() == []
    # Only the steps whose recipe moved on since "4" are built.
    newer = [step for step in tools.STEPS if versions.RECIPES[step] != "4"]
    assert ran == (newer if named_right else list(tools.STEPS))
