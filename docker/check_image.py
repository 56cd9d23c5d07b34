"""Run the runtime from its built image's own filesystem: every model answers, and the cold
start against the same measure outside the image (the repo's .venv), side by side.

    python docker/check_image.py [--image localhost/kindling-runtime:dev]
                                 [--model-repository models] [--model mobilenet_v2] [--runs 5]

No container engine runs here, so the image runs as a pod would run it, by hand: its root
filesystem (`podman image mount`) bind-mounted read-only, /proc, /dev, an empty tmpfs on
/tmp (the pod's emptyDir), the model repository bind-mounted read-only at the image's
KINDLING_MODEL_REPOSITORY, all in a private mount namespace (`unshare --mount`); then
`chroot --userspec` starts the image's ENTRYPOINT as its USER with its ENV. Root only.

1. Function: every model of the repository loads in the image and answers one inference
   request from tritonclient (images, BYTES sentences through tokenizers and the word-vector
   store), and the process runs as the image's non-root user on a read-only root. Then a
   repository with only a config.yaml whose model_uri points to a loopback HTTP server: the
   model is downloaded into KINDLING_CACHE_DIR on /tmp and served (an image without models).
2. Cold start: `--runs` starts of one model on each side, alternating, each timed from
   spawn to the first 200 of an OIP inference request (tritonclient, binary tensors). The
   request goes out when the runtime logs its `cold_start` line, which it writes once
   ready: no polling. Both sides start as a new pod would, with an empty KINDLING_CACHE_DIR
   and KINDLING_OPTIMIZED_CACHE=false (no graph optimized by an earlier run). The runtime's
   own phases (from exec, read from /proc) are printed too; the image side's spawn also
   pays for unshare, the mounts and chroot, which its `ready` phase does not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import selectors
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
import yaml

# Run with the repository's venv (VENV_KINDLING below), where kindling is installed.
from kindling.cluster.processes import free_port

REPO = Path(__file__).resolve().parent.parent
VENV_KINDLING = Path(sys.executable).parent / "kindling"
SAFETY_NET_S = 120.0  # not a measure: how long a start may take before the check gives up


# -- the image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str]
    command: list[str]
    user: str

    @classmethod
    def inspect(cls, image: str) -> ImageConfig:
        out = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{json .Config}}", image],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        config = json.loads(out)
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        # What docker and podman add when the image does not say: HOME of a user without a
        # passwd entry is /.
        env.setdefault("HOME", "/")
        command = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
        return cls(env=env, command=command, user=config.get("User") or "0:0")


@contextlib.contextmanager
def mounted(image: str) -> Iterator[Path]:
    root = subprocess.run(
        ["podman", "image", "mount", image], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield Path(root)
    finally:
        subprocess.run(["podman", "image", "unmount", image], check=False, capture_output=True)


def image_repository(config: ImageConfig) -> str:
    return config.env.get("KINDLING_MODEL_REPOSITORY", "/models")


def image_command(root: Path, config: ImageConfig, repository: Path | None) -> list[str]:
    """unshare + mounts + chroot: the image's entrypoint as a pod would start it, with
    `repository` mounted over the image's own (None: the models baked in the image)."""
    r = shlex.quote(str(root))
    target = shlex.quote(str(root) + image_repository(config))
    models = [
        f"mount --bind {shlex.quote(str(repository))} {target}",
        f"mount -o remount,bind,ro {target}",
    ]
    user = config.user if ":" in config.user else f"{config.user}:{config.user}"
    chroot = shutil.which("chroot") or "chroot"
    script = "\n".join(
        [
            "set -e",
            # A read-only view of the image's root, as readOnlyRootFilesystem gives.
            f"mount --bind {r} {r}",
            f"mount -o remount,bind,ro {r}",
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /dev {r}/dev",
            f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
            *(models if repository is not None else []),
            f"exec {chroot} --userspec={user} --groups= {r} "
            + " ".join(shlex.quote(a) for a in config.command),
        ]
    )
    return ["unshare", "--mount", "--fork", "--kill-child=SIGTERM", "sh", "-c", script]


# -- one start -------------------------------------------------------------------------------


@dataclass
class Start:
    """A runtime process started on one side; its stderr read line by line."""

    process: subprocess.Popen[bytes]
    port: int
    spawned: float
    lines: list[str] = field(default_factory=list)

    def wait_cold_start_line(self) -> dict[str, object]:
        """Block until the runtime logs `cold_start` (it is ready); its JSON."""
        assert self.process.stderr is not None
        stream = self.process.stderr
        selector = selectors.DefaultSelector()
        selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + SAFETY_NET_S
        buffer = b""
        while True:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no cold_start line in {SAFETY_NET_S} s:\n{self.log()}")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"runtime exited ({self.process.wait()}):\n{self.log()}")
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for raw in done:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.startswith("{") and '"cold_start"' in line:
                    return json.loads(line)

    def log(self) -> str:
        return "\n".join(self.lines)

    def server_pid(self) -> int:
        """The runtime's pid: unshare's child on the image side, the process itself else."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        return int(pids[0]) if pids else self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid(), signal.SIGTERM)
            try:
                self.process.wait(timeout=SAFETY_NET_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def spawn(command: list[str], env: dict[str, str], port: int) -> Start:
    spawned = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Start(process, port, spawned)


def image_input() -> httpclient.InferInput:
    x = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
    return x


def text_input(name: str, sentences: list[bytes]) -> httpclient.InferInput:
    x = httpclient.InferInput(name, [len(sentences)], "BYTES")
    x.set_data_from_numpy(np.array(sentences, dtype=object))
    return x


SAMPLE_REQUESTS = {
    "mobilenet_v2": lambda: [image_input()],
    "squeezenet1_1": lambda: [image_input()],
    "resnet18": lambda: [image_input()],
    "minilm": lambda: [text_input("text", [b"A man is eating food.", b"A man rides a horse."])],
    "kim_cnn": lambda: [text_input("text", [b"a gripping , funny film"])],
    "sm_cnn": lambda: [
        text_input("question", [b"who wrote hamlet ?"]),
        text_input("answer", [b"hamlet is a tragedy written by william shakespeare ."]),
    ],
}


def infer(port: int, model: str) -> httpclient.InferResult:
    return infer_as(port, model, model)


def infer_as(port: int, model: str, sample: str) -> httpclient.InferResult:
    """One inference request to `model` with the inputs of the sample model `sample`."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=SAFETY_NET_S)
    try:
        return client.infer(model, SAMPLE_REQUESTS[sample]())  # raises unless 200
    finally:
        client.close()


# -- the two sides ---------------------------------------------------------------------------


def side_env(base: dict[str, str], port: int, models: str, cache: Path | None) -> dict[str, str]:
    env = {**base, "PORT": str(port), "KINDLING_MODELS": models}
    env["KINDLING_OPTIMIZED_CACHE"] = "false"
    if cache is not None:
        env["KINDLING_CACHE_DIR"] = str(cache)
    return env


def start_image(root: Path, config: ImageConfig, repository: Path | None, models: str) -> Start:
    port = free_port()
    # The image's own ENV, as an engine would give it; its /tmp is a fresh tmpfs each start.
    env = side_env(config.env, port, models, None)
    return spawn(image_command(root, config, repository), env, port)


def start_venv(repository: Path, models: str, cache: Path) -> Start:
    port = free_port()
    env = side_env(dict(os.environ), port, models, cache)
    command = [str(VENV_KINDLING), "serve", "--model-repository", str(repository)]
    return spawn(command, env, port)


@dataclass
class Timing:
    first_200_s: float
    phases: dict[str, float]


def timed(start: Start, model: str) -> Timing:
    try:
        line = start.wait_cold_start_line()
        infer(start.port, model)
        first = time.perf_counter() - start.spawned
    finally:
        start.stop()
    phases = dict(line["phases_s"])  # type: ignore[call-overload]
    for phase, t in dict(line["models"]).get(model, {}).items():  # type: ignore[call-overload]
        phases[f"model {phase}"] = t
    return Timing(first, phases)


def function_check(root: Path, config: ImageConfig, repository: Path | None) -> list[str]:
    """Every model of the repository (None: the image's own) answers in the image, as a
    non-root user on a read-only root; the lines to print."""
    folder = repository or root / image_repository(config).lstrip("/")
    names = sorted(p.name for p in folder.iterdir() if (p / "config.yaml").is_file())
    if not names:
        raise RuntimeError(f"no models in {folder}")
    start = start_image(root, config, repository, ",".join(names))
    out = []
    try:
        start.wait_cold_start_line()
        pid = start.server_pid()
        uid = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
        root_opts = next(
            line.split()[5]
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        )
        if uid == "0" or "ro" not in root_opts.split(","):
            raise RuntimeError(f"the runtime runs as uid {uid} on a root mounted {root_opts}")
        out.append(f"runs as uid {uid}, root filesystem mounted {root_opts.split(',')[0]}")
        for name in names:
            if name not in SAMPLE_REQUESTS:
                out.append(f"{name:14} (no sample request; loaded)")
                continue
            result = infer(start.port, name)
            outputs = result.get_response()["outputs"]
            shapes = ", ".join(f"{o['name']} {o['shape']}" for o in outputs)
            out.append(f"{name:14} 200  {shapes}")
    except BaseException:
        print(start.log(), file=sys.stderr)
        raise
    finally:
        start.stop()
    return out


@contextlib.contextmanager
def model_origin(folder: Path) -> Iterator[str]:
    """An HTTP server on loopback serving `folder`: where a model_uri points. The image's
    process shares this network namespace, so it reaches it as a pod reaches a bucket."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch_check(root: Path, config: ImageConfig, source: Path, tmp: Path) -> str:
    """An image without models: a repository holding only a config.yaml whose model_uri is
    an http:// URL (as a pod gets its repository from a ConfigMap); the runtime downloads the
    model into KINDLING_CACHE_DIR, the one writable place (/tmp), and serves it."""
    name = "fetched"
    repository = tmp / "uri-repository"
    (repository / name).mkdir(parents=True)
    model_config = yaml.safe_load((source / "config.yaml").read_text())
    with model_origin(source) as origin:
        model_config.update(name=name, model_uri=f"{origin}/model.onnx")
        (repository / name / "config.yaml").write_text(yaml.safe_dump(model_config))
        start = start_image(root, config, repository, name)
        try:
            start.wait_cold_start_line()
            outputs = infer_as(start.port, name, source.name).get_response()["outputs"]
        except BaseException:
            print(start.log(), file=sys.stderr)
            raise
        finally:
            start.stop()
    shapes = ", ".join(f"{o['name']} {o['shape']}" for o in outputs)
    return f"{name:14} 200  {shapes}  (model_uri {origin}/model.onnx, into /tmp)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/kindling-runtime:dev")
    parser.add_argument("--model-repository", type=Path, default=REPO / "models")
    parser.add_argument(
        "--baked", action="store_true", help="serve the image's own models (built with MODELS)"
    )
    parser.add_argument("--model", default="mobilenet_v2", help="the model cold-started")
    parser.add_argument("--runs", type=int, default=5, help="cold starts per side")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("check_image.py: needs root (podman image mount, unshare, chroot)", file=sys.stderr)
        return 1
    repository = args.model_repository.resolve()
    in_image = None if args.baked else repository
    config = ImageConfig.inspect(args.image)

    with mounted(args.image) as root, tempfile.TemporaryDirectory() as tmp:
        print(f"{args.image}: {' '.join(config.command)} as {config.user}")
        for line in function_check(root, config, in_image):
            print(f"  {line}")
        print(f"  {fetch_check(root, config, repository / args.model, Path(tmp))}")
        sides: dict[str, list[Timing]] = {".venv": [], "image": []}
        for run in range(args.runs):
            cache = Path(tmp) / f"cache-{run}"
            sides[".venv"].append(timed(start_venv(repository, args.model, cache), args.model))
            sides["image"].append(
                timed(start_image(root, config, in_image, args.model), args.model)
            )

    venv, image = sides[".venv"], sides["image"]
    print(
        f"\ncold start of {args.model}, median of {args.runs} alternating starts each "
        f"(empty cache, no optimized graph), seconds"
    )
    print(f"{'':32}{'.venv':>10}{'image':>10}{'ratio':>9}")

    def row(label: str, a: list[float], b: list[float]) -> None:
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{label:32}{ma:10.3f}{mb:10.3f}{mb / ma:8.2f}x")

    row(
        "spawn to first 200 (client)", [t.first_200_s for t in venv], [t.first_200_s for t in image]
    )
    for phase in venv[0].phases:
        if phase == "start" or not all(phase in t.phases for t in image):
            continue
        row(
            f"  runtime: {phase}", [t.phases[phase] for t in venv], [t.phases[phase] for t in image]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
