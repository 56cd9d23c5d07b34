"""Gather the runtime image's whole root filesystem: the venv, the interpreter it runs on, the
part of the standard library a server uses, and the shared libraries they link. Nothing else.

    python3 docker/rootfs.py gather ROOT --venv /opt/venv [--user 65532]

Run by docker/Dockerfile.runtime's `rootfs` stage with the base image's own python3 (stdlib
only); the final stage is `FROM scratch` and copies ROOT alone, distroless-style. Image size
is cold-start time (paper 001: the image is pulled and unpacked before the first request),
and a Debian base brings apt, dpkg, perl-base, coreutils, bash, ... (127 MB with Python), none
of which `kindling serve` runs. What ROOT gets:

- the venv (copied whole: slim_venv.py has trimmed it already);
- the interpreter the venv's `bin/python3` points to, every link of the way (Debian's
  /usr/bin/python3 -> python3.11; the official image's /usr/local/bin/python3), found from
  the venv and `sys.executable`, never from a fixed path, so it works on either base;
- the standard library (`sysconfig`'s `stdlib`) without what a server never imports (test
  suites, GUI toolkits, build and packaging tools, documentation data, databases, terminal
  libraries: `DEAD_STDLIB`, `DEAD_EXTENSIONS`), as bytecode only: each module compiled to
  a `.pyc` in its source's place (PEP 3147's legacy layout, which Python imports without
  the source) and the `.py` removed, as CPython's own embeddable distribution ships it.
  That is 8.8 MB of 19 (the budget has ~6 MB to spare after it); a traceback through the
  standard library shows its file and line number, not the line's text. The venv, and so
  Kindling's code and its dependencies', keeps its sources;
- the shared libraries that the interpreter, the kept extension modules and every ELF file
  of the venv load, as `ldd` resolves them (the dynamic loader included), each symlink on
  the way kept as a symlink (Debian's /lib -> usr/lib), and an ld.so.cache for them
  (`ldconfig -r`: the official image's libpython lives in /usr/local/lib, outside the
  loader's default folders);
- /etc: the CA bundle Python's `ssl` loads by default (https model_uri, rediss://), a
  passwd and group with root and the image's user, and an nsswitch.conf that looks in
  /etc/hosts before DNS (glibc's default without one asks DNS first, and Kubernetes'
  hostAliases live in /etc/hosts);
- empty /tmp (mode 1777; the pod's emptyDir goes there), /models, and /proc, /dev, /sys
  for the engine to mount on.

The Dockerfile then runs `slim_venv.py check` in ROOT with `chroot`, as the image's user, so
a trim that went too far fails the build, not a cold start.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import fnmatch
import importlib
import os
import py_compile
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

# Of the standard library (paths relative to it), what a server never imports: the test
# suite, Tk and IDLE, 2to3, the build and packaging tools (distutils, ensurepip, venv,
# the static libpython and Makefile of config-*), pydoc's topic data, unittest (only
# numpy.testing imports it, and nothing imports that at run time), sqlite3 and dbm
# (with their C libraries, libsqlite3 and Berkeley DB: 3.3 MB) and curses.
DEAD_STDLIB = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "lib2to3",
    "distutils",
    "ensurepip",
    "venv",
    "config-3.*",
    "pydoc_data",
    "unittest",
    "sqlite3",
    "dbm",
    "curses",
    "site-packages",
    "dist-packages",
    "EXTERNALLY-MANAGED",
    # Debian's link to /etc/python3.11/sitecustomize.py, which installs Ubuntu's apport
    # crash hook when apport is there; it never is.
    "sitecustomize.py",
)
# Extension modules (lib-dynload, by module name) nothing in the runtime loads: CPython's own
# test modules, and the C halves of the modules above or of interactive and legacy ones
# (readline, curses, NIS, crypt, OSS audio), whose libraries (libreadline, libncursesw,
# libnsl with libtirpc and Kerberos, libcrypt) would come along.
DEAD_EXTENSIONS = (
    "_test*",
    "_ctypes_test",
    "_xxtestfuzz",
    "xxlimited*",
    "_sqlite3",
    "_dbm",
    "_gdbm",
    "_curses",
    "_curses_panel",
    "readline",
    "nis",
    "_crypt",
    "ossaudiodev",
    "_tkinter",
)
ELF_MAGIC = b"\x7fELF"
# `ldd` lines: "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)", the loader as
# "/lib64/ld-linux-x86-64.so.2 (0x...)", and "libfoo.so => not found".
_LDD_FOUND = re.compile(r"^\s*\S+\s+=>\s+(/\S+)\s+\(0x[0-9a-f]+\)$")
_LDD_LOADER = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)$")
_LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found$")


class Gatherer:
    """Copies host paths into `root` at the same place, symlinks as symlinks (their targets
    copied too), parent directories created with the host's modes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.copied: set[str] = set()

    def inside(self, path: str | Path) -> Path:
        return self.root / str(path).lstrip("/")

    def add(self, path: str | Path) -> None:
        """Copy the host's `path` (a file, a symlink and what it points to, or a directory
        with all its contents) to the same place under the root."""
        path = os.path.abspath(path)
        if path in self.copied:
            return
        self.copied.add(path)
        parts = PurePosixPath(path).parts
        current = "/"
        for index, part in enumerate(parts[1:], start=1):
            current = os.path.join(current, part)
            if os.path.islink(current):
                self._link(current)
                rest = parts[index + 1 :]
                target = os.path.join(os.path.dirname(current), os.readlink(current))
                self.add(os.path.normpath(os.path.join(target, *rest)))
                return
            if index < len(parts) - 1:
                self._dir(current)
        if os.path.isdir(path):
            self.add_tree(path)
        else:
            self._dir(os.path.dirname(path))
            shutil.copy2(path, self.inside(path), follow_symlinks=False)

    def add_tree(self, folder: str, skip: Iterable[str] = (), caches: bool = True) -> None:
        """Copy a directory recursively; `skip`: paths (absolute) left out; `caches`: False
        leaves out every __pycache__ (the standard library's, compiled afresh)."""
        skipped = set(skip)
        self._dir(folder)
        for dirpath, dirnames, filenames in os.walk(folder):
            keep = []
            for name in sorted(dirnames):
                full = os.path.join(dirpath, name)
                if full in skipped or (name == "__pycache__" and not caches):
                    continue
                if os.path.islink(full):
                    self.add(full)
                else:
                    self._dir(full)
                    keep.append(name)
            dirnames[:] = keep
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if full not in skipped:
                    self.add(full)

    def _dir(self, path: str) -> None:
        target = self.inside(path)
        if not target.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copystat(path, target, follow_symlinks=False)

    def _link(self, path: str) -> None:
        target = self.inside(path)
        if not target.is_symlink():
            self._dir(os.path.dirname(path))
            target.symlink_to(os.readlink(path))


# -- what to gather ------------------------------------------------------------------------------


def interpreter_chain(venv: Path) -> str:
    """The first hop of the venv's interpreter link (e.g. /usr/bin/python3), which
    `Gatherer.add` follows link by link to the binary. The venv was made by this very
    interpreter (`python3 -m venv`), so it is `sys.executable`'s binary at the end."""
    link = venv / "bin" / "python3"
    target = os.path.join(link.parent, os.readlink(link)) if link.is_symlink() else str(link)
    if os.path.realpath(target) != os.path.realpath(sys.executable):
        raise SystemExit(f"rootfs: {link} is not this interpreter ({sys.executable})")
    return os.path.normpath(target)


def stdlib_skips(stdlib: str, dynload: str) -> list[str]:
    """The absolute paths of the standard library left out."""
    skips = []
    for name in sorted(os.listdir(stdlib)):
        if any(fnmatch.fnmatch(name, pattern) for pattern in DEAD_STDLIB):
            skips.append(os.path.join(stdlib, name))
    for name in sorted(os.listdir(dynload)):
        module = name.split(".", 1)[0]
        if any(fnmatch.fnmatch(module, pattern) for pattern in DEAD_EXTENSIONS):
            skips.append(os.path.join(dynload, name))
    # The interpreter's own site-packages (the official image's pip and setuptools) when
    # it is inside the standard library's folder: the venv does not see it.
    for key in ("purelib", "platlib"):
        skips.append(sysconfig.get_paths()[key])
    return skips


def lib_dynload() -> str:
    found = [p for p in sys.path if os.path.basename(p) == "lib-dynload" and os.path.isdir(p)]
    if not found:
        raise SystemExit("rootfs: no lib-dynload on sys.path")
    return found[0]


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == ELF_MAGIC


def parse_ldd(output: str) -> tuple[list[str], list[str]]:
    """(libraries found, names not found) of one `ldd` output."""
    found, missing = [], []
    for line in output.splitlines():
        if match := _LDD_FOUND.match(line) or _LDD_LOADER.match(line):
            found.append(match.group(1))
        elif match := _LDD_MISSING.match(line):
            missing.append(match.group(1))
    return found, missing


def shared_libraries(files: Iterable[Path]) -> list[str]:
    """What `files` (ELF) load, transitively (ldd resolves the whole closure, RPATHs of
    the venv's wheels included); raises if anything is not found."""
    libraries: set[str] = set()
    missing: dict[str, list[str]] = {}
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
        if out.returncode != 0 and "not a dynamic executable" in out.stdout + out.stderr:
            continue  # a static file (none today), nothing to load
        found, absent = parse_ldd(out.stdout)
        libraries.update(found)
        if absent:
            missing[str(path)] = absent
    if missing:
        raise SystemExit(f"rootfs: shared libraries not found: {missing}")
    return sorted(libraries)


def ca_bundle() -> str:
    """The CA file Python's ssl loads by default (ssl.create_default_context)."""
    cafile = ssl.get_default_verify_paths().openssl_cafile
    if not os.path.isfile(cafile):
        raise SystemExit(f"rootfs: no CA bundle at {cafile} (install ca-certificates)")
    return cafile


def write_etc(root: Path, uid: int) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{uid}:{uid}:nonroot:/tmp:/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{uid}:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")


def make_dirs(root: Path) -> None:
    for name, mode in (("tmp", 0o1777), ("models", 0o755), ("proc", 0o555), ("dev", 0o755)):
        path = root / name
        path.mkdir(exist_ok=True)
        path.chmod(mode)
    (root / "sys").mkdir(exist_ok=True)


def compile_stdlib(root: Path, stdlib: str) -> int:
    """The kept standard library as bytecode only (see the module docstring): `x.pyc` beside
    each `x.py` (`legacy`), naming the file where it was (/usr/lib/python3.11/x.py, for
    tracebacks), then the sources removed; bytes freed."""
    folder = root / stdlib.lstrip("/")
    ok = compileall.compile_dir(
        str(folder),
        quiet=1,
        workers=0,
        legacy=True,
        stripdir=str(root),
        prependdir="/",
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        raise SystemExit("rootfs: compileall failed")
    freed = 0
    for source in sorted(folder.rglob("*.py")):
        if source.with_suffix(".pyc").is_file():
            freed += source.lstat().st_size
            source.unlink()
    return freed


def gather(root: Path, venv: Path, uid: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    g = Gatherer(root)
    g.add(venv)
    g.add(interpreter_chain(venv))
    stdlib = sysconfig.get_paths()["stdlib"]
    dynload = lib_dynload()
    g.add_tree(stdlib, skip=stdlib_skips(stdlib, dynload), caches=False)
    if not os.path.realpath(dynload).startswith(os.path.realpath(stdlib) + os.sep):
        g.add_tree(dynload, skip=stdlib_skips(stdlib, dynload), caches=False)
    elves = [p for p in root.rglob("*") if is_elf(p)]
    for library in shared_libraries(elves):
        if not library.startswith(str(root) + os.sep):
            g.add(library)
    g.add(ca_bundle())
    for conf in ("/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        if os.path.exists(conf):
            g.add(conf)
    # -X: the cache only; the links the libraries need were copied as they were.
    subprocess.run(["ldconfig", "-X", "-r", str(root)], check=True)
    write_etc(root, uid)
    make_dirs(root)
    freed = compile_stdlib(root, stdlib)
    print(f"rootfs: standard library as bytecode only, {freed / 10**6:.1f} MB of sources removed")


# -- the check, run in ROOT (chroot) by the image's user ---------------------------------------


def stdlib_imports(package: str, recursive: bool = True) -> set[str]:
    """The standard-library modules that any source file of `package` (with `recursive`,
    of its subpackages too) names in an import, those inside functions included: the
    runtime imports urllib.request (model_uri downloads) only when it fetches, which
    importing its modules does not reach."""
    names: set[str] = set()
    for folder in importlib.import_module(package).__path__:
        sources = Path(folder).rglob("*.py") if recursive else Path(folder).glob("*.py")
        for source in sorted(sources):
            for node in ast.walk(ast.parse(source.read_bytes(), str(source))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module)
    return {n for n in names if n.split(".")[0] in sys.stdlib_module_names}


def verify(modules: list[str], walk: list[str], exclude: frozenset[str]) -> str:
    """What the runtime needs works in this root: slim_venv.py's import check (it sits
    beside this file), every standard-library module the walked packages name, TLS with
    the default CA bundle, and a passwd entry for the user."""
    import pwd

    import slim_venv  # type: ignore[import-not-found]  # copied beside this script

    count = slim_venv.check(modules, walk, exclude)
    # The walked packages, and the top-level modules of their parents (kindling's cli.py,
    # env.py, ...: the console script goes through them), not the parents' other packages.
    parents = {p.split(".")[0] for p in walk} - set(walk)
    names = [stdlib_imports(p) for p in walk] + [stdlib_imports(p, False) for p in parents]
    stdlib = sorted(set().union(*names))
    for name in stdlib:
        importlib.import_module(name)
    cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
    if not cas:
        raise SystemExit("rootfs: the default SSL context has no CA certificate")
    user = pwd.getpwuid(os.getuid()).pw_name
    return (
        f"rootfs: {count} modules and {len(stdlib)} standard-library modules they name import; "
        f"{cas} CA certificates; running as {user} ({os.getuid()})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gather", help="make ROOT: the venv and what it needs to run")
    g.add_argument("root", type=Path)
    g.add_argument("--venv", type=Path, required=True)
    g.add_argument("--user", type=int, default=65532, help="uid (and gid) of the image's user")
    v = sub.add_parser("verify", help="in ROOT: import the runtime, TLS, the user")
    v.add_argument("modules", nargs="*", help="modules to import")
    v.add_argument("--walk", nargs="+", default=[], help="packages whose every module to import")
    v.add_argument("--exclude", action="append", default=[], help="a module not to import")
    args = parser.parse_args(argv)
    if args.command == "verify":
        print(verify(args.modules, args.walk, frozenset(args.exclude)))
        return 0
    gather(args.root.resolve(), args.venv, args.user)

    def size(folder: Path) -> int:
        return sum(p.lstat().st_size for p in folder.rglob("*") if not p.is_dir())

    venv = size(args.root / str(args.venv.absolute()).lstrip("/"))
    total = size(args.root)
    print(f"rootfs: {total / 10**6:.1f} MB of files in {args.root}, {venv / 10**6:.1f} MB the venv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
