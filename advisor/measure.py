"""Step 1 of `kindling advise`: measure a model on real `kindling serve` processes.

`measure_started` starts the runtimes itself: one fresh process per `RuntimeSetting`
(KINDLING_THREADS, KINDLING_MAX_BATCH_SIZE, KINDLING_MAX_QUEUE_DELAY_MS; KINDLING_MODELS
the model alone, a temporary KINDLING_CACHE_DIR). In each it

1. reads the peak RSS of loading (VmHWM), resets it (proc(5) clear_refs), sends the
   worst-case request at that setting's max_batch_size (loadtest/bench_memory's: max rows,
   text at the preprocessor's max_length) and runs the sweep; `peak_rss_mib` is the higher
   of the load peak and the peak after the worst case and the sweep, since a pod's memory
   limit must hold the load as well as the largest batch;
2. runs a closed loop at each concurrency of the plan (1, 2, 4, 8, 16), keeping every
   request's latency, and stops the sweep once p99 passes `stop_p99_ms` (no SLO anyone
   would set is that far out, and higher concurrency only queues more).

Then `cold_starts` fresh processes, each timed from spawn to its first 200 answer (as
loadtest/bench_runtime.served_cold_start and controller/profiles.py time them).

Which settings. Threads default to 1, 2, 4 (those the machine has); the batch size to 1
and the model's config.yaml max_batch_size (KINDLING_MAX_BATCH_SIZE only lowers it); the
queue delay to 0 and the config's. Not the cross product: threads x batch size at the
config's delay (batch 1 at delay 0: a batch of one never waits), plus each other delay at
the largest threads value and each batch size above 1. The delay only matters once
batches form, where it adds at most its own length to a request and fills batches under
load; that effect does not depend much on the thread count, so one threads value shows
it, the largest (what a pod gets by default: the runtime follows the CPU limit). On two
CPUs that is 5 processes instead of 8 (4 of them distinct), on four 7 instead of 12.

Where the setting's memory differs from a pod's: with no KINDLING_REDIS_URL, a text
model's word vectors come from the embedded file store beside the models, whose mapped
pages count in the RSS (on Kubernetes the store is Redis), so the figure is an upper bound.

`measure_url` measures a runtime someone else started: the sweep only, at whatever setting
it serves (read from its Triton-style `/config`), no peak RSS, and the cold start the
runtime reports in its metadata (exec to the model ready, `cold_start_model_ready_s`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kindling.advisor.measurements import (
    LoadPoint,
    Measurement,
    MeasurementError,
    RuntimeSetting,
    SettingResult,
)
from kindling.advisor.runtime_client import Target, closed_loop, infer_request

Progress = Callable[[str], None]

DEFAULT_THREADS = (1, 2, 4)
DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16)
# The cold-start keys the runtime's model metadata carries (runtime/model.py `metadata`:
# cold_start_{phase}_s, seconds since exec): the model ready, else the process ready.
COLD_START_KEYS = ("cold_start_model_ready_s", "cold_start_ready_s")
# The intra-op threads in /config, under the key Triton's onnxruntime backend reads.
THREADS_PARAMETER = "intra_op_thread_count"
# How long a started runtime may take to load (a large model on one thread); a safety net.
START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class MeasurePlan:
    """What to measure. None: the defaults of the module docstring."""

    threads: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    queue_delays_ms: tuple[float, ...] | None = None
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    # Answered requests kept per load point (at least `per_caller` per caller): 300 puts
    # the p99 between the 3rd and 4th highest sample.
    requests: int = 300
    per_caller: int = 10
    warmup: int = 2  # per caller, before each load point, not kept
    max_point_s: float = 60.0  # a load point ends here even short of `requests`
    stop_p99_ms: float = 2000.0
    cold_starts: int = 5
    timeout_s: float = 120.0  # any one call; a worst-case batch on one thread takes seconds

    def __post_init__(self) -> None:
        for name in ("threads", "batch_sizes", "concurrency"):
            values = getattr(self, name)
            if values is not None and (not values or min(values) < 1):
                raise MeasurementError(f"plan: {name} must be integers >= 1, got {values}")
        if self.queue_delays_ms is not None and (
            not self.queue_delays_ms or min(self.queue_delays_ms) < 0
        ):
            raise MeasurementError(f"plan: queue delays must be >= 0, got {self.queue_delays_ms}")
        if self.requests < 1 or self.per_caller < 1 or self.warmup < 0 or self.cold_starts < 1:
            raise MeasurementError(
                "plan: requests, per_caller and cold_starts must be >= 1, warmup >= 0"
            )
        if not (self.max_point_s > 0 and self.stop_p99_ms > 0 and self.timeout_s > 0):
            raise MeasurementError("plan: max_point_s, stop_p99_ms and timeout_s must be > 0")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_settings(
    plan: MeasurePlan, config_batch: int, config_delay_ms: float, cpus: int
) -> tuple[RuntimeSetting, ...]:
    """The settings to start a runtime with, in order (see the module docstring)."""
    threads = plan.threads or tuple(t for t in DEFAULT_THREADS if t <= cpus) or (1,)
    ceiling = max(1, config_batch)
    batches = plan.batch_sizes or ((1, ceiling) if ceiling > 1 else (1,))
    too_big = [b for b in batches if b > ceiling]
    if too_big:
        raise MeasurementError(
            f"plan: batch sizes {too_big} above the model's max_batch_size {ceiling}: "
            "KINDLING_MAX_BATCH_SIZE only lowers it"
        )
    delays = plan.queue_delays_ms or tuple(sorted({0.0, float(config_delay_ms)}))
    primary = float(config_delay_ms) if config_delay_ms in delays else max(delays)
    settings = [
        RuntimeSetting(t, b, primary if b > 1 else 0.0)
        for t in threads
        for b in sorted(set(batches))
    ]
    settings += [
        RuntimeSetting(max(threads), b, float(d))
        for b in sorted(set(batches))
        if b > 1
        for d in delays
        if d != primary
    ]
    return tuple(dict.fromkeys(settings))  # without repeats, in order


def setting_env(setting: RuntimeSetting) -> dict[str, str]:
    env = {
        "KINDLING_MAX_BATCH_SIZE": str(setting.max_batch_size),
        "KINDLING_MAX_QUEUE_DELAY_MS": f"{setting.max_queue_delay_ms:g}",
    }
    if setting.threads is not None:
        env["KINDLING_THREADS"] = str(setting.threads)
    return env


# -- the model's config ----------------------------------------------------------------------


def model_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.yaml, as loadtest/bench_memory reads it."""
    import yaml

    from kindling.loadtest.bench_memory import config_of

    try:
        config = config_of(folder)
    except (OSError, yaml.YAMLError) as exc:
        raise MeasurementError(f"{folder}: no readable config.yaml ({exc})") from exc
    if not isinstance(config, dict) or not config.get("inputs"):
        raise MeasurementError(f"{folder}/config.yaml: not a model config")
    return config


def config_batching(config: dict[str, Any]) -> tuple[int, float]:
    """(max_batch_size, max_queue_delay_ms) as config.yaml gives them."""
    try:
        batch = int(config.get("max_batch_size", 0) or 0)
        delay = float((config.get("batching") or {}).get("max_queue_delay_ms", 0.0))
    except (TypeError, ValueError, AttributeError) as exc:
        raise MeasurementError(f"config.yaml batching: {exc!r}") from exc
    return batch, delay


def config_setting(folder: Path) -> tuple[RuntimeSetting, int]:
    """The setting a runtime serves a model folder with when no sizing variable is set,
    threads unknown, and the config's max_batch_size: for a load-test run of it."""
    batch, delay = config_batching(model_config(folder))
    return RuntimeSetting(None, max(1, batch), delay if batch > 1 else 0.0), max(1, batch)


def served_setting(config: dict[str, Any]) -> RuntimeSetting:
    """The setting in a runtime's Triton-style `GET /v2/models/{m}/config`: max_batch_size
    (0: no batching, a batch of one), dynamic_batching.max_queue_delay_microseconds."""
    try:
        batch = max(1, int(config.get("max_batch_size", 0) or 0))
        dynamic = config.get("dynamic_batching") or {}
        delay = float(dynamic.get("max_queue_delay_microseconds", 0)) / 1000
        parameters = config.get("parameters") or {}
        raw = (parameters.get(THREADS_PARAMETER) or {}).get("string_value")
        threads = int(raw) if raw else None
    except (TypeError, ValueError, AttributeError) as exc:
        raise MeasurementError(f"the runtime's model config: {exc!r}") from exc
    return RuntimeSetting(threads, batch, delay if batch > 1 else 0.0)


def url_setting(url: str, model: str, timeout_s: float = 30.0) -> RuntimeSetting:
    """What the runtime at `url` serves `model` with (its /config)."""
    return served_setting(Target.parse(url).get_json(f"/v2/models/{model}/config", timeout_s))


def worst_case_request(config: dict[str, Any], rows: int) -> tuple[bytes, dict[str, str]]:
    """bench_memory's worst-case request with `rows` rows: the model's config with its
    max_batch_size capped as KINDLING_MAX_BATCH_SIZE caps it. A word-vector model's words
    come from the load-test corpus (bench_memory takes them from the demo table, loaded
    into Redis; unknown words cost the same rows and length)."""
    from kindling.loadtest import bench_memory, corpus

    capped = {**config, "max_batch_size": rows}
    try:
        ((batch_rows, length),) = bench_memory.batch_shapes(capped, 1)
        vocab: list[str] = []
        if (config.get("preprocess") or {}).get("kind") == "word_vectors":
            words = [w for s in corpus.sentences() for w in corpus.words(s)]
            need = len(config["inputs"]) * batch_rows * length
            vocab = (words * (need // len(words) + 1))[:need]
        return bench_memory.batch_request(capped, batch_rows, length, 0, vocab)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise MeasurementError(
            f"{config.get('name')}: cannot build its worst-case request ({exc!r})"
        ) from exc


# -- one started runtime -------------------------------------------------------------------


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    target: Target = field(init=False)

    def __post_init__(self) -> None:
        self.target = Target.parse(f"http://127.0.0.1:{self.port}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def _spawn(repository: Path, env: dict[str, str], workdir: Path) -> Started:
    """`kindling serve` with `env` added to this process's, its output in a log."""
    from kindling.loadtest.benchclient import free_port, start_runtime

    port = free_port()
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as out:
        process = start_runtime(repository, port, env, stdout=out, stderr=subprocess.STDOUT)
    return Started(process, port, log)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def started_runtime(repository: Path, env: dict[str, str], workdir: Path) -> Iterator[Started]:
    """`kindling serve` with `env` added to this process's, ready; stopped on exit."""
    runtime = _spawn(repository, env, workdir)
    try:
        _wait_ready(runtime)
        yield runtime
    finally:
        _stop(runtime.process)


def cold_start(
    repository: Path,
    model: str,
    request: tuple[bytes, dict[str, str]],
    env: dict[str, str],
    workdir: Path,
) -> float:
    """Seconds from spawning `kindling serve` to its first 200 answer to `request`, timed
    as loadtest/bench_runtime.served_cold_start times it (benchclient.first_answer_s)."""
    from kindling.loadtest.benchclient import first_answer_s

    body, headers = request
    started = time.perf_counter()
    runtime = _spawn(repository, env, workdir)
    try:
        path = f"/v2/models/{model}/infer"
        return first_answer_s(
            runtime.process,
            runtime.port,
            path,
            body,
            headers,
            started,
            START_TIMEOUT_S,
            runtime.log_tail,
        )
    except (RuntimeError, TimeoutError) as exc:
        raise MeasurementError(f"{model}: cold start: {exc}") from exc
    finally:
        _stop(runtime.process)


def _wait_ready(runtime: Started) -> None:
    from kindling.loadtest.benchclient import wait_ready

    try:
        wait_ready(runtime.port, START_TIMEOUT_S, process=runtime.process, log=runtime.log_tail)
    except (RuntimeError, TimeoutError) as exc:
        raise MeasurementError(f"kindling serve: {exc}") from exc


def _send_once(
    target: Target, path: str, request: tuple[bytes, dict[str, str]], timeout_s: float
) -> None:
    """One request on its own connection, which must answer 200."""
    body, headers = request
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    try:
        conn.request("POST", target.prefix + path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read()
    except OSError as exc:
        raise MeasurementError(f"POST {path}: {exc}") from exc
    finally:
        conn.close()
    if response.status != 200:
        detail = text[:300].decode("utf-8", "replace")
        raise MeasurementError(f"POST {path}: HTTP {response.status} {detail}")


def sweep(
    target: Target,
    model: str,
    request: tuple[bytes, dict[str, str]],
    label: str,
    plan: MeasurePlan,
    progress: Progress,
) -> tuple[LoadPoint, ...]:
    """The closed loop at each concurrency of the plan, until p99 passes stop_p99_ms."""
    raw = target.post_bytes(f"/v2/models/{model}/infer", *request)
    points = []
    for concurrency in plan.concurrency:
        count = max(plan.requests, plan.per_caller * concurrency)
        latencies, rate = closed_loop(
            target, raw, concurrency, count, plan.warmup, plan.max_point_s, plan.timeout_s
        )
        if not latencies:
            raise MeasurementError(f"{label}: C={concurrency}: no request answered")
        point = LoadPoint(concurrency, tuple(round(v, 4) for v in latencies), round(rate, 3))
        points.append(point)
        p99 = float(np.percentile(latencies, 99))
        progress(f"{label}: C={concurrency} p99 {p99:.1f} ms, {rate:.0f} req/s")
        if p99 > plan.stop_p99_ms:
            progress(f"{label}: p99 past {plan.stop_p99_ms:g} ms: sweep stopped at C={concurrency}")
            break
    return tuple(points)


def measure_setting(
    repository: Path,
    model: str,
    config: dict[str, Any],
    setting: RuntimeSetting,
    env: dict[str, str],
    workdir: Path,
    plan: MeasurePlan,
    progress: Progress,
) -> tuple[SettingResult, dict[str, Any]]:
    """One fresh runtime at `setting`: peak RSS, then the sweep. Also returns the model's
    metadata (for the request body and the cold starts)."""
    from kindling.loadtest.bench_memory import proc_memory, reset_peak

    label = setting.label()
    worst = worst_case_request(config, setting.max_batch_size)
    with started_runtime(repository, {**env, **setting_env(setting)}, workdir) as runtime:
        pid = runtime.process.pid
        load_peak = proc_memory(pid)["VmHWM"]
        reset_peak(pid)
        path = f"/v2/models/{model}/infer"
        _send_once(runtime.target, path, worst, plan.timeout_s)
        worst_peak = proc_memory(pid)["VmHWM"]
        progress(
            f"{label}: peak RSS {max(load_peak, worst_peak):.0f} MiB (loading {load_peak:.0f}, "
            f"worst case of {setting.max_batch_size} row(s) {worst_peak:.0f})"
        )
        metadata = runtime.target.get_json(f"/v2/models/{model}", plan.timeout_s)
        request = infer_request(metadata)
        points = sweep(runtime.target, model, request, label, plan, progress)
        peak = max(load_peak, proc_memory(pid)["VmHWM"])
    return SettingResult(setting, points, round(peak, 2)), metadata


def _machine(plan: MeasurePlan, **extra: Any) -> dict[str, Any]:
    return {
        "cpus": available_cpus(),
        "platform": f"{platform.machine()}, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(sys.argv),
        # JSON's lists, as Measurement.from_json gives them back.
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(plan).items()},
        **extra,
    }


def measure_started(
    repository: Path, model: str, plan: MeasurePlan, progress: Progress
) -> Measurement:
    """Measure `model` of `repository` on runtimes started here (the module docstring)."""
    repository = repository.resolve()
    config = model_config(repository / model)
    config_batch, config_delay = config_batching(config)
    settings = plan_settings(plan, config_batch, config_delay, available_cpus())
    progress(
        f"{model}: {len(settings)} runtime settings ({', '.join(s.label() for s in settings)}), "
        f"C={','.join(map(str, plan.concurrency))}, {plan.cold_starts} cold starts"
    )
    results = []
    metadata: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kindling-advise-") as tmp:
        workdir = Path(tmp)
        env = {"KINDLING_MODELS": model, "KINDLING_CACHE_DIR": str(workdir / "cache")}
        for setting in settings:
            result, metadata = measure_setting(
                repository, model, config, setting, env, workdir, plan, progress
            )
            results.append(result)
        # Cold starts at the config's batching and the most threads measured: a pod's
        # start does not depend on the batching, and hardly on the threads.
        threads = max(s.threads or 1 for s in settings)
        cold_env = {**env, "KINDLING_THREADS": str(threads)}
        body, headers = infer_request(metadata)
        cold = []
        for i in range(plan.cold_starts):
            seconds = cold_start(repository, model, (body, headers), cold_env, workdir)
            cold.append(round(seconds, 4))
            progress(f"{model}: cold start {i + 1}/{plan.cold_starts}: {seconds:.3f} s")
    return Measurement(
        model=model,
        source="started by kindling advise",
        config_max_batch_size=max(1, config_batch),
        cold_start_s=tuple(cold),
        settings=tuple(results),
        machine=_machine(plan, repository=str(repository)),
    )


def reported_cold_start(metadata: dict[str, Any]) -> float | None:
    """The cold start a runtime reports in its model metadata (seconds since exec)."""
    parameters = metadata.get("parameters") or {}
    for key in COLD_START_KEYS:
        value = parameters.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def measure_url(url: str, model: str, plan: MeasurePlan, progress: Progress) -> Measurement:
    """Measure `model` on the runtime at `url`: the sweep at the setting it serves."""
    target = Target.parse(url)
    config = target.get_json(f"/v2/models/{model}/config", plan.timeout_s)
    metadata = target.get_json(f"/v2/models/{model}", plan.timeout_s)
    setting = served_setting(config)
    cold = reported_cold_start(metadata)
    if cold is None:
        raise MeasurementError(
            f"{url}: {model}'s metadata reports no cold start ({' or '.join(COLD_START_KEYS)}"
            " in its parameters): let kindling advise start the runtime itself "
            "(--model-repository), or read an earlier measurement with --from DIR"
        )
    progress(f"{model} at {target.base}: serving {setting.label()}, cold start {cold:.3f} s")
    points = sweep(target, model, infer_request(metadata), setting.label(), plan, progress)
    return Measurement(
        model=model,
        source=target.base,
        # The runtime shows the size it serves, after any KINDLING_MAX_BATCH_SIZE cap; the
        # config's own is not visible from outside.
        config_max_batch_size=setting.max_batch_size,
        cold_start_s=(round(cold, 4),),
        settings=(SettingResult(setting, points, None),),
        machine=_machine(plan, client_only=True),
    )
