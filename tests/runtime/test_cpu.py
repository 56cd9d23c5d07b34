"""Whether onnxruntime's threads spin by default: only under a CFS quota that covers every
intra-op thread (kindling.runtime.cpu.spinning_by_default), against fake cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kindling.runtime.cpu import spinning_by_default


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("cpu_max", "threads", "spin"),
    [
        ("max 100000\n", 2, False),  # no quota: the node's cores, shared with neighbours
        ("150000 100000\n", 2, False),  # spinning would spend the quota and be throttled
        ("150000 100000\n", 1, True),
        ("200000 100000\n", 2, True),  # a whole CPU of quota per thread
        ("400000 100000\n", 2, True),
        ("100000 100000", 2, False),
    ],
)
def test_cgroup_v2(tmp_path, cpu_max, threads, spin):
    write(tmp_path / "cpu.max", cpu_max)
    assert spinning_by_default(threads, tmp_path) is spin


@pytest.mark.parametrize(
    ("quota", "threads", "spin"),
    [
        ("-1\n", 2, False),
        ("150000\n", 2, False),
        ("200000\n", 2, True),
        ("100000", 1, True),
        ("0", 1, False),
    ],
)
def test_cgroup_v1(tmp_path, quota, threads, spin):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", quota)
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert spinning_by_default(threads, tmp_path) is spin


def test_v2_unlimited_wins_over_a_v1_quota(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "400000")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert spinning_by_default(2, tmp_path) is False


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert spinning_by_default(1, tmp_path) is False
