"""Trim an image's virtualenv to what its command imports, then check that it still imports.

    python docker/slim_venv.py trim VENV --keep REQUIREMENTS [--leaf NAME ...]
                                         [--drop-ort-extras] [--drop-ort-c-library]
    python docker/slim_venv.py check [MODULE ...] [--walk PACKAGE ...] [--exclude MODULE ...]
    python docker/slim_venv.py ldconf VENV

Run by the build stage of docker/Dockerfile.* with the venv's own interpreter (stdlib only),
before `compileall`. Image size is cold-start time (paper 001: pull and unpack before the
first request), so what the runtime never imports does not ship:

- distributions outside the closure of `--keep`'s requirements: pip, setuptools, and the
  dependencies of `--leaf` packages, whose own requirements serve features the runtime
  never calls (tokenizers' huggingface_hub is for `Tokenizer.from_pretrained`, onnxruntime's
  protobuf, flatbuffers and packaging for its `tools/`, `transformers/` and `quantization/`
  scripts). A leaf's requirements that `--keep` names (numpy) stay, and so do those of
  the extras `--keep` asks for (onnxruntime-gpu[cuda,cudnn]'s nvidia-* wheels);
- test suites, type stubs, C headers, static libraries and Cython sources, numpy's build
  tooling (f2py, distutils), and every `__pycache__` (the Dockerfile compiles the tree
  afresh after this);
- with `--drop-ort-extras`, onnxruntime's offline tools (`tools/`, `transformers/`,
  `quantization/`, `backend/`, `datasets/`); with `--drop-ort-c-library`, its C API library
  (`capi/libonnxruntime.so.*`, the same engine again for C programs: the Python module,
  `onnxruntime_pybind11_state`, links none of it);
- the nvidia-* wheels' drop-ins for CPU libraries (NVBLAS, cuFFTW), which nothing loads;
- every script in the venv's bin/ but `kindling` (activate, f2py, ...);
- debug information of extension modules that carry it (uvloop's is 13 MB, 2 MB without),
  with binutils' `strip --strip-debug`, never on a file with an RPATH: those were rewritten
  by auditwheel's patchelf, and strip can corrupt such files.

`check` imports the given modules and every module of the `--walk` packages, so a trim
that went too far fails the image build instead of the first cold start. `ldconf` prints
the library folders of the nvidia-* wheels, for the GPU image's /etc/ld.so.conf.d.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import pkgutil
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Directory names that hold only a package's own test suite.
TEST_DIRS = frozenset({"tests", "test"})
# File suffixes nothing imports at run time: stubs, headers, static libraries, Cython.
DEAD_SUFFIXES = (".pyi", ".pxd", ".pyx", ".h", ".hpp", ".c", ".cpp", ".a")
# Parts of numpy that only its build and packaging tooling uses: f2py, the removed
# distutils, PyInstaller hooks, C headers and pkg-config files.
NUMPY_DEAD = ("f2py", "distutils", "_pyinstaller", "_core/include", "_core/lib")
# onnxruntime's offline tooling: model conversion, quantization, transformer optimizers,
# the ONNX-backend test adapter and sample data. `import onnxruntime` touches none of them.
ORT_DEAD = ("tools", "transformers", "quantization", "datasets", "backend")
ORT_C_LIBRARY = "libonnxruntime.so*"
# In the nvidia-* wheels (CUDA from PyPI): drop-in replacements of CPU libraries (NVBLAS for
# BLAS, cuFFTW for FFTW) that nothing in onnxruntime links or loads.
NVIDIA_DEAD = ("libnvblas.so*", "libcufftw.so*")
# Always removed from a shipped venv: installers have no business in a read-only image.
INSTALLERS = frozenset({"pip", "setuptools", "wheel"})

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


@dataclass(frozen=True)
class Options:
    drop_ort_extras: bool = False
    drop_ort_c_library: bool = False


# -- which distributions stay ----------------------------------------------------------------


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> tuple[str, frozenset[str]] | None:
    """(name, extras) of a PEP 508 requirement; None for a blank or comment line."""
    match = _REQUIREMENT.match(line.split("#", 1)[0])
    if match is None:
        return None
    extras = frozenset(normalize(e) for e in (match.group(2) or "").split(",") if e.strip())
    return normalize(match.group(1)), extras


def requirement_lines(lines: Iterable[str]) -> list[tuple[str, frozenset[str]]]:
    """The requirements of a requirements file, as (name, extras)."""
    return [r for r in map(parse_requirement, lines) if r is not None]


def dependencies(
    requires: Iterable[str], extras: frozenset[str], base: bool = True
) -> list[tuple[str, frozenset[str]]]:
    """Of a distribution's `requires` (Requires-Dist lines): its unconditional requirements
    (unless `base` is False) and those of the `extras` asked for. Other markers (a Python
    version) were evaluated by pip, and a requirement it skipped is not installed, so
    following names is enough."""
    found = []
    for req in requires:
        _, _, marker = req.partition(";")
        gate = _EXTRA.search(marker)
        wanted = normalize(gate.group(1)) in extras if gate else base
        parsed = parse_requirement(req)
        if wanted and parsed is not None:
            found.append(parsed)
    return found


def closure(
    roots: Iterable[tuple[str, frozenset[str]]],
    requires: dict[str, list[str]],
    leaves: frozenset[str],
) -> set[str]:
    """The distributions (of those in `requires`: name -> Requires-Dist) that `roots` need.
    For `leaves`, only the requirements of the extras asked for are followed, not their
    own (which the runtime never uses). Installers are never needed."""
    needed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in requires:
            continue
        seen.add((name, extras))
        needed.add(name)
        todo.extend(dependencies(requires[name], extras, base=name not in leaves))
    return needed - INSTALLERS


# -- which files stay ------------------------------------------------------------------------


def dead(rel: PurePosixPath, options: Options) -> str | None:
    """Why the file at `rel` (relative to site-packages) does not ship, or None if it does."""
    parts = rel.parts
    if not parts or parts[0].endswith(".dist-info"):
        return None
    if "__pycache__" in parts:
        return "caches"
    if len(parts) > 2 and TEST_DIRS.intersection(parts[1:-1]):
        return "test suites"
    if len(parts) > 1 and rel.name.endswith(DEAD_SUFFIXES):
        return "stubs, headers, static libraries, sources"
    if parts[0] == "nvidia" and any(rel.match(pattern) for pattern in NVIDIA_DEAD):
        return "CUDA's CPU-library drop-ins"
    if parts[0] == "numpy" and any(_below(rel, f"numpy/{d}") for d in NUMPY_DEAD):
        return "numpy's build tooling"
    if parts[0] == "onnxruntime":
        if options.drop_ort_extras and any(_below(rel, f"onnxruntime/{d}") for d in ORT_DEAD):
            return "onnxruntime's offline tools"
        if options.drop_ort_c_library and rel.parent == PurePosixPath("onnxruntime/capi"):
            if rel.match(ORT_C_LIBRARY):
                return "onnxruntime's C API library"
    return None


def _below(rel: PurePosixPath, folder: str) -> bool:
    return rel.is_relative_to(folder)


# -- trimming a venv -------------------------------------------------------------------------


def installed(site_packages: Path) -> dict[str, metadata.Distribution]:
    dists = metadata.distributions(path=[str(site_packages)])
    return {normalize(d.metadata["Name"]): d for d in dists}


def size_of(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def remove(path: Path) -> int:
    if not path.exists() and not path.is_symlink():
        return 0
    freed = size_of(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return freed


def uninstall(dist: metadata.Distribution) -> int:
    """Delete a distribution's files (its RECORD) and its .dist-info folder; bytes freed.
    pip is not needed for this, which lets pip itself go like any other."""
    freed = 0
    infos = set()
    for entry in dist.files or ():
        if entry.parts and entry.parts[0].endswith(".dist-info"):
            infos.add(Path(str(dist.locate_file(entry.parts[0]))))
        freed += remove(Path(str(dist.locate_file(entry))))
    return freed + sum(remove(info) for info in infos)


def prune_empty_dirs(root: Path) -> None:
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(path.iterdir()):
            path.rmdir()


def elf_needs_strip(path: Path, readelf: str) -> bool:
    """Debug sections present, and no RPATH/RUNPATH (see the module docstring)."""
    sections = subprocess.run([readelf, "-S", "-W", str(path)], capture_output=True, text=True)
    if sections.returncode != 0 or ".debug_info" not in sections.stdout:
        return False
    dynamic = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True)
    return "RPATH" not in dynamic.stdout and "RUNPATH" not in dynamic.stdout


def strip_debug(site_packages: Path) -> int:
    strip, readelf = shutil.which("strip"), shutil.which("readelf")
    if strip is None or readelf is None:
        print("slim_venv: no binutils, extension modules left as they are")
        return 0
    freed = 0
    for path in sorted(site_packages.rglob("*.so*")):
        if path.is_file() and not path.is_symlink() and elf_needs_strip(path, readelf):
            before = path.stat().st_size
            subprocess.run([strip, "--strip-debug", str(path)], check=True)
            freed += before - path.stat().st_size
    return freed


def site_packages_of(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"slim_venv: expected one site-packages under {venv}, found {found}")
    return found[0]


def trim(
    venv: Path,
    keep: list[tuple[str, frozenset[str]]],
    leaves: frozenset[str],
    options: Options,
    scripts: frozenset[str] = frozenset({"kindling"}),
) -> dict[str, int]:
    """Trim `venv` in place; bytes freed by what. Of its bin/, only the interpreter links
    and `scripts` stay: activate scripts serve a shell, and the other console scripts
    (f2py, onnxruntime_test) start tools that are gone or never run in the image."""
    site = site_packages_of(venv)
    dists = installed(site)
    requires = {name: list(dist.requires or ()) for name, dist in dists.items()}
    needed = closure([*keep, ("kindling", frozenset())], requires, leaves)
    freed: dict[str, int] = {}
    for name in sorted(set(dists) - needed):
        freed[f"distribution {name}"] = uninstall(dists[name])
    for path in sorted(site.rglob("*")):
        if path.is_file() or path.is_symlink():
            reason = dead(PurePosixPath(path.relative_to(site).as_posix()), options)
            if reason is not None:
                freed[reason] = freed.get(reason, 0) + remove(path)
    freed["debug information"] = strip_debug(site)
    for path in sorted((venv / "bin").iterdir()):
        if (
            not path.is_symlink()
            and not path.name.startswith("python")
            and path.name not in scripts
        ):
            freed["bin/ scripts"] = freed.get("bin/ scripts", 0) + remove(path)
    prune_empty_dirs(site)
    return freed


def check(modules: list[str], walk: list[str], exclude: frozenset[str]) -> int:
    """Import `modules`, and every module of the packages in `walk` but those in `exclude`
    (a name ending in `*` excludes every module it prefixes); how many."""
    prefixes = tuple(e[:-1] for e in exclude if e.endswith("*"))
    count = 0
    for name in modules:
        importlib.import_module(name)
        count += 1
    for package in walk:
        module = importlib.import_module(package)
        count += 1
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if info.name not in exclude and not info.name.startswith(prefixes or ("\0",)):
                importlib.import_module(info.name)
                count += 1
    return count


def nvidia_library_dirs(venv: Path) -> list[Path]:
    """The folders of the nvidia-* wheels' shared libraries (nvidia/cu13/lib,
    nvidia/cudnn/lib, ...): onnxruntime's CUDA provider finds libcublas and cuDNN through the
    dynamic loader, which looks in none of them unless told (ld.so.conf)."""
    return sorted(p for p in site_packages_of(venv).glob("nvidia/*/lib") if p.is_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trim", help="remove what the image's command never imports")
    t.add_argument("venv", type=Path)
    t.add_argument("--keep", type=Path, required=True, help="requirements file to keep")
    t.add_argument("--leaf", action="append", default=[], help="keep, but not its requirements")
    t.add_argument("--drop-ort-extras", action="store_true", help="onnxruntime's offline tools")
    t.add_argument("--drop-ort-c-library", action="store_true", help="onnxruntime's C API")
    n = sub.add_parser("ldconf", help="print the nvidia-* wheels' library folders")
    n.add_argument("venv", type=Path)
    c = sub.add_parser("check", help="import these modules and packages' modules")
    c.add_argument("modules", nargs="*", help="modules to import")
    c.add_argument("--walk", nargs="+", default=[], help="packages whose every module to import")
    c.add_argument("--exclude", action="append", default=[], help="a module not to import")
    args = parser.parse_args(argv)
    if args.command == "check":
        count = check(args.modules, args.walk, frozenset(args.exclude))
        print(f"slim_venv: {count} modules import")
        return 0
    if args.command == "ldconf":
        print("\n".join(str(p) for p in nvidia_library_dirs(args.venv)))
        return 0
    keep = requirement_lines(args.keep.read_text(encoding="utf-8").splitlines())
    options = Options(args.drop_ort_extras, args.drop_ort_c_library)
    freed = trim(args.venv, keep, frozenset(normalize(n) for n in args.leaf), options)
    for what, size in freed.items():
        if size:
            print(f"slim_venv: {size / 2**20:8.2f} MiB  {what}")
    left = size_of(site_packages_of(args.venv))
    print(f"slim_venv: {sum(freed.values()) / 2**20:8.2f} MiB freed, {left / 2**20:.1f} MiB left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
