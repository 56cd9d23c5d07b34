"""docker/slim_venv.py: which distributions and files an image's venv keeps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tests.docker.helpers import load

slim = load("slim_venv")
NONE = frozenset()


def make_dist(
    site: Path, name: str, requires: tuple[str, ...] = (), files: tuple[str, ...] = ()
) -> None:
    """A distribution as pip leaves it: its files, and a .dist-info with METADATA and a
    RECORD listing them all (a console script in bin/ included)."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    for rel in files:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x" * 100)
    record = [f"{rel},," for rel in files]
    record += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "venv" / "bin").mkdir()
    make_dist(
        site, "kindling", ("numpy>=1.26",), ("kindling/__init__.py", "kindling/runtime/serve.py")
    )
    make_dist(
        site,
        "numpy",
        (),
        (
            "numpy/__init__.py",
            "numpy/__init__.pyi",
            "numpy/_core/tests/test_umath.py",
            "numpy/_core/include/numpy/ndarraytypes.h",
            "numpy/f2py/__init__.py",
            "numpy/_core/__pycache__/numeric.cpython-311.pyc",
            "numpy/_core/numeric.py",
        ),
    )
    make_dist(
        site,
        "onnxruntime",
        (
            "numpy>=1.21",
            "protobuf",
            "packaging",
            'nvidia-cudnn; extra == "cudnn"',
        ),
        (
            "onnxruntime/__init__.py",
            "onnxruntime/capi/onnxruntime_pybind11_state.so",
            "onnxruntime/capi/libonnxruntime.so.1.32.0",
            "onnxruntime/tools/convert.py",
            "onnxruntime/transformers/optimizer.py",
        ),
    )
    make_dist(site, "protobuf", (), ("google/protobuf/__init__.py",))
    make_dist(site, "packaging", (), ("packaging/__init__.py",))
    make_dist(site, "nvidia-cudnn", (), ("nvidia/cudnn/lib/libcudnn.so.9",))
    make_dist(site, "tokenizers", ("huggingface-hub>=0.16",), ("tokenizers/__init__.py",))
    make_dist(site, "huggingface-hub", ("filelock",), ("huggingface_hub/__init__.py",))
    make_dist(site, "filelock", (), ("filelock/__init__.py",))
    make_dist(
        site, "redis", ('async-timeout>=4; python_full_version < "3.11.3"',), ("redis/__init__.py",)
    )
    make_dist(site, "async-timeout", (), ("async_timeout/__init__.py",))
    make_dist(site, "pip", (), ("pip/__init__.py", "../../../bin/pip"))
    bin_dir = tmp_path / "venv" / "bin"
    for script in ("kindling", "f2py", "activate", "python3.11"):
        (bin_dir / script).write_text("#!/bin/sh\n")
    for link in ("python", "python3"):
        (bin_dir / link).symlink_to("python3.11")
    return tmp_path / "venv"


def requirements(*lines: str) -> list[tuple[str, frozenset[str]]]:
    return slim.requirement_lines(lines)


def test_trim_keeps_the_runtime_closure_and_nothing_else(venv: Path) -> None:
    site = slim.site_packages_of(venv)
    keep = requirements("numpy>=1.26", "onnxruntime>=1.18", "tokenizers", "redis>=5")
    options = slim.Options(drop_ort_extras=True, drop_ort_c_library=True)
    freed = slim.trim(venv, keep, frozenset({"onnxruntime", "tokenizers"}), options)

    kept = set(slim.installed(site))
    assert kept == {"kindling", "numpy", "onnxruntime", "tokenizers", "redis", "async-timeout"}
    for gone in ("google", "packaging", "huggingface_hub", "filelock", "pip", "nvidia"):
        assert not (site / gone).exists(), gone
    assert not (venv / "bin" / "pip").exists()  # console scripts go with their RECORD
    assert sorted(p.name for p in (venv / "bin").iterdir()) == [
        "kindling", "python", "python3", "python3.11",
    ]  # fmt: skip
    assert not list(site.glob("pip-*.dist-info"))
    present = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    code = {p for p in present if ".dist-info/" not in p}
    assert code == {
        "kindling/__init__.py", "kindling/runtime/serve.py", "numpy/__init__.py",
        "numpy/_core/numeric.py", "onnxruntime/__init__.py",
        "onnxruntime/capi/onnxruntime_pybind11_state.so", "tokenizers/__init__.py",
        "redis/__init__.py", "async_timeout/__init__.py",
    }  # fmt: skip
    assert not (site / "numpy" / "_core" / "tests").exists()  # empty folders go too
    assert freed["distribution pip"] > 0 and freed["onnxruntime's C API library"] == 100


def test_extras_asked_for_are_kept_even_below_a_leaf(venv: Path) -> None:
    site = slim.site_packages_of(venv)
    dists = slim.installed(site)
    requires = {name: list(d.requires or ()) for name, d in dists.items()}
    keep = requirements("onnxruntime[cudnn]>=1.18")
    assert slim.closure(keep, requires, frozenset({"onnxruntime"})) == {
        "onnxruntime", "nvidia-cudnn",
    }  # fmt: skip
    assert slim.closure(keep, requires, NONE) == {
        "onnxruntime", "nvidia-cudnn", "numpy", "protobuf", "packaging",
    }  # fmt: skip


def test_installers_are_never_kept() -> None:
    requires = {"app": ["pip", "setuptools>=60"], "pip": [], "setuptools": []}
    assert slim.closure(requirements("app"), requires, NONE) == {"app"}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("numpy/__init__.py", None),
        ("numpy-2.4.6.dist-info/RECORD", None),
        ("typing_extensions.py", None),
        ("__pycache__/typing_extensions.cpython-311.pyc", "caches"),
        ("redis/__pycache__/client.cpython-311.pyc", "caches"),
        ("numpy/_core/tests/test_umath.py", "test suites"),
        ("numpy/tests/test_x.py", "test suites"),
        ("tests/__init__.py", None),  # a top-level package called tests is someone's code
        ("numpy/__init__.pyi", "stubs, headers, static libraries, sources"),
        ("numpy/random/lib/libnpyrandom.a", "stubs, headers, static libraries, sources"),
        ("uvloop/loop.pyx", "stubs, headers, static libraries, sources"),
        ("numpy/f2py/__init__.py", "numpy's build tooling"),
        ("numpy/_core/lib/pkgconfig/numpy.pc", "numpy's build tooling"),
        ("numpy/_core/include/numpy/npy_common.h", "stubs, headers, static libraries, sources"),
        ("nvidia/cu13/lib/libnvblas.so.13", "CUDA's CPU-library drop-ins"),
        ("nvidia/cu13/lib/libcublas.so.13", None),
        ("onnxruntime/tools/symbolic_shape_infer.py", "onnxruntime's offline tools"),
        ("onnxruntime/capi/libonnxruntime.so.1.32.0", "onnxruntime's C API library"),
        ("onnxruntime/capi/libonnxruntime_providers_shared.so", None),
        ("onnxruntime/capi/libonnxruntime_providers_cuda.so", None),
        ("onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so", None),
    ],
)
def test_dead(path: str, reason: str | None) -> None:
    options = slim.Options(drop_ort_extras=True, drop_ort_c_library=True)
    assert slim.dead(PurePosixPath(path), options) == reason


def test_onnxruntime_is_whole_without_the_options() -> None:
    for path in ("onnxruntime/tools/x.py", "onnxruntime/capi/libonnxruntime.so.1.32.0"):
        assert slim.dead(PurePosixPath(path), slim.Options()) is None


def test_strip_only_debug_info_and_never_a_patched_file(tmp_path: Path) -> None:
    """`strip` corrupts some files that patchelf rewrote (auditwheel's RPATHs); those stay."""
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc (Debian build-essential) is on every machine of this kind"
    source = tmp_path / "f.c"
    source.write_text("int f(void) { return 42; }\n")
    site = tmp_path / "site"
    site.mkdir()
    plain, patched = site / "plain.so", site / "patched.so"
    subprocess.run([gcc, "-g", "-shared", "-fPIC", "-o", str(plain), str(source)], check=True)
    subprocess.run(
        [gcc, "-g", "-shared", "-fPIC", "-Wl,-rpath,$ORIGIN", "-o", str(patched), str(source)],
        check=True,
    )
    before = {p: p.stat().st_size for p in (plain, patched)}
    freed = slim.strip_debug(site)
    assert plain.stat().st_size < before[plain]
    assert freed == before[plain] - plain.stat().st_size
    assert patched.stat().st_size == before[patched]
    readelf = shutil.which("readelf")
    assert readelf is not None
    assert not slim.elf_needs_strip(plain, readelf)  # nothing left to strip


def test_check_imports_every_module_of_a_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkg_for_slim_check"
    (package / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (package / rel).write_text("")
    (package / "broken.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        slim.check(["json"], ["pkg_for_slim_check"], frozenset({"pkg_for_slim_check.broken"})) == 5
    )
    with pytest.raises(ModuleNotFoundError):
        slim.check([], ["pkg_for_slim_check"], frozenset())
