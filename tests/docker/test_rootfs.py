"""docker/rootfs.py: what the runtime image's root gets, and that an interpreter gathered by
it runs in a chroot with nothing else there.

The unit tests use folders made here. The last test gathers a venv of the interpreter running
the tests (pyenv's here, whose libpython sits beside it: not Debian's /usr/bin/python3.11,
so the paths come from the interpreter, as on the official image's /usr/local) and runs it
in that root with `chroot`: root only, as `make test` runs here.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.helpers import DOCKER, load

rootfs = load("rootfs")

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd4b5e7000)
\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f5a1c2f0000)
\tlibopenblas.so => /opt/venv/lib/python3.11/site-packages/numpy.libs/libopenblas.so (0x00007f)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5a1c0f0000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5a1c320000)
\tlibgone.so.2 => not found
"""


def test_parse_ldd_finds_libraries_the_loader_and_what_is_missing() -> None:
    found, missing = rootfs.parse_ldd(LDD)
    assert found == [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/opt/venv/lib/python3.11/site-packages/numpy.libs/libopenblas.so",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    assert missing == ["libgone.so.2"]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A merged-/usr tree as Debian's: /lib -> usr/lib, a versioned library behind its
    soname link, and python3 -> python3.11."""
    host = tmp_path.resolve() / "host"
    (host / "usr" / "lib").mkdir(parents=True)
    (host / "usr" / "bin").mkdir()
    (host / "lib").symlink_to("usr/lib")
    (host / "usr" / "lib" / "libz.so.1.2.13").write_bytes(b"\x7fELF library")
    (host / "usr" / "lib" / "libz.so.1").symlink_to("libz.so.1.2.13")
    (host / "usr" / "bin" / "python3.11").write_bytes(b"\x7fELF interpreter")
    (host / "usr" / "bin" / "python3").symlink_to("python3.11")
    return host


def test_gatherer_keeps_every_symlink_on_the_way_and_its_target(host: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    g = rootfs.Gatherer(root)
    g.add(host / "lib" / "libz.so.1")  # as ldd names it: through the /lib link
    g.add(host / "usr" / "bin" / "python3")
    mirror = root / str(host).lstrip("/")
    assert os.readlink(mirror / "lib") == "usr/lib"
    assert os.readlink(mirror / "usr" / "lib" / "libz.so.1") == "libz.so.1.2.13"
    assert (mirror / "usr" / "lib" / "libz.so.1.2.13").read_bytes() == b"\x7fELF library"
    assert os.readlink(mirror / "usr" / "bin" / "python3") == "python3.11"
    assert (mirror / "lib" / "libz.so.1").read_bytes() == b"\x7fELF library"
    assert rootfs.is_elf(mirror / "usr" / "bin" / "python3.11")
    assert not rootfs.is_elf(mirror / "usr" / "bin" / "python3")  # links are followed by ldd


def test_dead_parts_of_the_standard_library_are_skipped(tmp_path: Path) -> None:
    stdlib = tmp_path / "python3.11"
    dynload = stdlib / "lib-dynload"
    dynload.mkdir(parents=True)
    for name in ("test", "tkinter", "lib2to3", "unittest", "sqlite3", "config-3.11-x86_64"):
        (stdlib / name).mkdir()
    for name in ("os.py", "turtle.py", "asyncio", "sitecustomize.py"):
        (stdlib / name).touch()
    suffix = ".cpython-311-x86_64-linux-gnu.so"
    for module in ("_ssl", "_testcapi", "_sqlite3", "readline", "_json", "xxlimited_35"):
        (dynload / f"{module}{suffix}").touch()
    skips = {Path(p).relative_to(stdlib).as_posix() for p in rootfs.stdlib_skips(
        str(stdlib), str(dynload)
    ) if Path(p).is_relative_to(stdlib)}  # fmt: skip
    assert skips == {
        "test", "tkinter", "lib2to3", "unittest", "sqlite3", "config-3.11-x86_64",
        "turtle.py", "sitecustomize.py", f"lib-dynload/_testcapi{suffix}",
        f"lib-dynload/_sqlite3{suffix}", f"lib-dynload/readline{suffix}",
        f"lib-dynload/xxlimited_35{suffix}",
    }  # fmt: skip


def test_stdlib_imports_include_those_inside_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "kindling_rootfs_scan"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("import os\nfrom . import sub\n")
    (package / "fetch.py").write_text(
        "import numpy\n\ndef get():\n    import urllib.request\n"
        "    from email.message import Message\n"
    )
    (package / "sub" / "__init__.py").write_text("def f():\n    import zipfile\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert rootfs.stdlib_imports("kindling_rootfs_scan") == {
        "os", "urllib.request", "email.message", "zipfile",
    }  # fmt: skip
    assert rootfs.stdlib_imports("kindling_rootfs_scan", recursive=False) == {
        "os", "urllib.request", "email.message",
    }  # fmt: skip


def test_standard_library_is_left_as_bytecode_that_imports_and_names_its_source(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    stdlib = "/usr/lib/python3.11"
    package = root / stdlib.lstrip("/") / "kindling_rootfs_probe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .mod import where\n")
    (package / "mod.py").write_text("def where():\n    return where.__code__.co_filename\n")
    freed = rootfs.compile_stdlib(root, stdlib)
    left = sorted(p.name for p in package.iterdir())
    assert left == ["__init__.pyc", "mod.pyc"] and freed > 0
    probe = subprocess.run(
        [sys.executable, "-B", "-c",
         "import kindling_rootfs_probe as p; print(p.where())"],
        env={**os.environ, "PYTHONPATH": str(package.parent)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == f"{stdlib}/kindling_rootfs_probe/mod.py"


@pytest.mark.integration
def test_gathered_root_runs_the_interpreter_in_a_chroot(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("chroot and ldconfig -r need root: run as root, as `make test` does here")
    interpreter = os.path.realpath(sys.executable)
    venv = tmp_path / "venv"
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(venv)], check=True)
    root = tmp_path / "root"
    gather = subprocess.run(
        [interpreter, str(DOCKER / "rootfs.py"), "gather", str(root), "--venv", str(venv)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert gather.returncode == 0, gather.stdout + gather.stderr
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert "nonroot:x:65532:65532:" in (root / "etc" / "passwd").read_text()
    assert (root / "etc" / "ld.so.cache").is_file() and (root / "models").is_dir()
    for name in ("rootfs.py", "slim_venv.py"):
        shutil.copy(DOCKER / name, root / "tmp" / name)
    # The copy as the chrooted interpreter sees it: a path inside `root`, not the host's.
    script = "/" + str((root / "tmp" / "rootfs.py").relative_to(root))
    # As the Dockerfile runs it, but as root: pyenv's interpreter lives under /root (0700).
    # `verify` walks `email` (a package of the standard library, bytecode only now) and
    # checks TLS against the copied CA bundle and the passwd entry.
    run = subprocess.run(
        [shutil.which("chroot") or "chroot", str(root), f"{venv}/bin/python", script,
         "verify", "json", "ssl", "ctypes", "decimal", "lzma", "bz2", "uuid", "urllib.request",
         "asyncio", "--walk", "email"],
        env={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CA certificates; running as root (0)" in run.stdout
    assert "Could not find platform" not in run.stderr  # the prefix found, sources or not
