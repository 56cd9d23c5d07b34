"""The workloads on Locust: an open-loop dispatcher, closed-loop users, one shape.

Imported only inside the Locust process (it imports locust, which monkey-patches the
standard library with gevent): `kindling loadtest run` starts that process, and so does
plain `locust -f <this package>/locustfile.py`.

- Open loop (`ArrivalUser`): one Locust user walks the arrival schedule and sends each
  request from its own greenlet at its scheduled time, so a slow answer delays nothing
  after it. Past `max_in_flight` outstanding requests an arrival is dropped and recorded
  as an error, never delayed (what k6 calls dropped iterations): the offered load stays
  the schedule's, and the report shows what the server achieved against it.
- Closed loop (`ClosedLoopUser`): the shape sets the user count to each level's C; every
  user sends its next request when the previous one is answered (paper 000).
- `KindlingShape.tick()` follows the workload and returns None when its scale-down tail
  (and any straggler) is over, which ends a headless run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Group
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust import __version__ as locust_version
from locust.env import Environment

from kindling.loadtest import pods as pods_mod
from kindling.loadtest.config import RunConfig, add_arguments, from_namespace
from kindling.loadtest.records import NO_RESPONSE, RequestRecord, write_csv
from kindling.loadtest.requests import (
    KNOWN_MODELS,
    ModelSpec,
    PreparedRequest,
    RequestMix,
    detect_kind,
    fetch_model_spec,
)
from kindling.loadtest.shapes import ClosedLoopShape, OpenLoopPlan, OpenLoopShape
from kindling.loadtest.slo import EXIT_FAILED, exit_code
from kindling.loadtest.stats import latency_stats, measured

COLD_HEADER = "kindling-cold-start"
# Distinct bodies per run: enough sentences for the word cache to see the corpus's Zipf
# tail; images are 600 KB each, so fewer.
POOL_SIZE = {"image": 16, "sentence": 256, "pair": 256}
SPAWN_RATE = 100  # users/s: every level's users start within a fraction of a second


class Run:
    """Everything one run shares between its users, its shape and its listeners."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.shape = config.shape()
        self.plan: OpenLoopPlan | None = None
        if isinstance(self.shape, OpenLoopShape):
            self.plan = self.shape.plan(config.seed)
        self.spec = self.model_spec()
        self.kind = detect_kind(self.spec) if config.kind == "auto" else config.kind
        mix = RequestMix(
            self.spec, self.kind, config.protocol, config.encoding, config.path, config.headers
        )
        self.pool: list[PreparedRequest] = mix.pool(POOL_SIZE[self.kind], config.seed)
        self.records: list[RequestRecord] = []
        self.pending: dict[int, RequestRecord] = {}
        self.group = Group()
        self.origin: float | None = None
        self.origin_wall = 0.0
        self.sent = 0
        self.dropped = 0
        self.samples: list[pods_mod.PodSample] = []
        self.source = pods_mod.pod_source(config.pods, config.target, config.model, config.headers)
        self.finished = False
        first = self.source.sample(0.0)  # before any request: the baseline of the counts
        if first is not None:
            self.samples.append(first)

    def model_spec(self) -> ModelSpec:
        c = self.config
        if c.metadata_url == "none" or (c.protocol == "openwhisk" and not c.metadata_url):
            if c.model not in KNOWN_MODELS:
                raise ValueError(f"no metadata for {c.model!r}: pass --metadata-url")
            return KNOWN_MODELS[c.model]
        url = c.metadata_url or f"{c.target}/v2/models/{c.model}"
        return fetch_model_spec(url, c.headers)

    # -- the clock ------------------------------------------------------------------------

    def start_clock(self) -> None:
        if self.origin is None:
            self.origin = time.perf_counter()
            self.origin_wall = time.time()

    def now(self) -> float:
        return time.perf_counter() - self.origin if self.origin is not None else 0.0

    # -- requests -----------------------------------------------------------------------

    def fire(
        self,
        client: Any,
        index: int,
        stage: str,
        measured_: bool = True,
        scheduled_s: float = math.nan,
    ) -> None:
        prepared = self.pool[index % len(self.pool)]
        record = RequestRecord(index, stage, measured_, scheduled_s, self.now(), math.nan, 0, None)
        self.pending[index] = record
        self.sent += 1
        start = time.perf_counter()
        try:
            with client.request(
                prepared.method,
                prepared.path,
                data=prepared.body,
                headers=prepared.headers,
                name=stage,
                catch_response=True,
            ) as response:
                record.latency_ms = (time.perf_counter() - start) * 1e3
                record.status = response.status_code or NO_RESPONSE
                record.bytes = len(response.content or b"")
                cold = response.headers.get(COLD_HEADER) if response.headers else None
                record.cold = None if cold is None else cold.strip().lower() == "true"
                if record.ok:
                    response.success()
                else:
                    record.error = error_text(response)
                    response.failure(record.error)
        except gevent.GreenletExit:
            # Locust stops closed-loop users at the end of the last level: the request
            # was cut by the client, not failed by the server.
            record.measured = False
            record.error = "cancelled by the load generator at the end of the run"
            raise
        finally:
            self.pending.pop(index, None)
            self.records.append(record)

    def drop(self, index: int, stage: str, scheduled_s: float) -> None:
        self.dropped += 1
        error = f"dropped: {self.config.max_in_flight} requests already in flight"
        record = RequestRecord(
            index, stage, True, scheduled_s, self.now(), math.nan, 0, None, error
        )
        self.records.append(record)

    def dispatch(self, client: Any) -> None:
        """Send the open-loop schedule: each arrival at its time, in its own greenlet."""
        assert self.plan is not None
        self.start_clock()
        assert self.origin is not None
        limit = self.config.max_in_flight
        for index, arrival in enumerate(self.plan.arrivals):
            delay = self.origin + arrival.offset_s - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            # The group, not `pending`: a greenlet spawned for an overdue arrival has not
            # started yet (no yield between overdue arrivals), so it is not pending yet.
            if len(self.group) >= limit:
                self.drop(index, arrival.stage, arrival.offset_s)
                continue
            self.group.spawn(
                self.fire, client, index, arrival.stage, arrival.measured, arrival.offset_s
            )

    # -- background work ----------------------------------------------------------------

    def sample_pods(self) -> None:
        while not self.finished:
            gevent.sleep(self.config.pods_interval_s)
            sample = self.source.sample(self.now())
            if sample is not None and not self.finished:
                self.samples.append(sample)

    def report_progress(self) -> None:
        interval = self.config.progress_s
        last_sent, last_ok = 0, 0
        while not self.finished:
            gevent.sleep(interval)
            done = [r for r in self.records if r.ok]
            ok = len(done)
            errors = sum(1 for r in self.records if r.measured and not r.ok)
            cold = sum(1 for r in self.records if r.cold)
            recent = sorted(r.latency_ms for r in done[-500:])
            p50 = f"{recent[len(recent) // 2]:.1f} ms" if recent else "-"
            total = f"/{len(self.plan.arrivals)}" if self.plan else ""
            print(
                f"[{self.now():7.1f} s] sent {self.sent}{total}  "
                f"offered {(self.sent + self.dropped - last_sent) / interval:.1f}/s  "
                f"achieved {(ok - last_ok) / interval:.1f}/s  in flight {len(self.pending)}  "
                f"ok {ok}  errors {errors}  cold {cold}  p50 {p50}",
                flush=True,
            )
            last_sent, last_ok = self.sent + self.dropped, ok

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> int:
        """Record what never came back, write the raw outputs; returns the SLO exit code."""
        self.finished = True
        end = self.now()
        last = self.source.sample(end)  # the pods (and the server's count) at the end
        if last is not None:
            self.samples.append(last)
        for record in self.pending.values():
            record.error = "no response before the run ended"
            self.records.append(record)
        self.pending.clear()
        self.group.kill(block=False)
        self.records.sort(key=lambda r: (r.sent_s, r.request))
        out = Path(self.config.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "requests.csv", self.records)
        pods_mod.write_csv(out / "pods.csv", self.samples)
        (out / "run.json").write_text(json.dumps(self.metadata(end), indent=2))
        return exit_code(self.config.slo, latency_stats(measured(self.records)))

    def metadata(self, end_s: float) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "config": json.loads(self.config.to_json()),
            "shape": {
                "name": self.shape.name,
                "description": self.shape.describe(),
                "closed_loop": self.shape.closed_loop,
                "parameters": self.shape.parameters(),
            },
            "started_at": self.origin_wall,
            "end_s": end_s,
            "model": {
                "name": self.spec.name,
                "inputs": [vars(i) for i in self.spec.inputs],
                "kind": self.kind,
            },
            "client": {
                "locust": locust_version,
                "pool_size": len(self.pool),
                "dropped": self.dropped,
                "pod_source": self.source.name,
            },
        }
        if self.plan is not None:
            doc["stage_windows"] = self.plan.stage_windows
            doc["offered_requests"] = len(self.plan.arrivals)
            doc["schedule_end_s"] = self.plan.end_s
        elif isinstance(self.shape, ClosedLoopShape):
            levels = self.shape.stages()
            doc["stage_windows"] = {lv.label: [(lv.start_s, lv.end_s)] for lv in levels if lv.users}
            doc["levels"] = [vars(lv) for lv in levels]
            doc["schedule_end_s"] = levels[-1].end_s
        return doc


def error_text(response: Any) -> str:
    error = getattr(response, "error", None)
    if response.status_code in (0, None) and error is not None:
        return f"{type(error).__name__}: {error}"[:300]
    try:
        doc = json.loads(response.content or b"")
        if isinstance(doc, dict) and "error" in doc:
            return f"HTTP {response.status_code}: {doc['error']}"[:300]
    except ValueError:
        pass
    text = (response.content or b"")[:200].decode("utf-8", "replace").strip()
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


RUN: Run | None = None
FAILURE: str | None = None


class ArrivalUser(FastHttpUser):
    """The open-loop dispatcher: one instance runs the whole arrival schedule."""

    wait_time = constant(3600)

    @task
    def dispatch(self) -> None:
        if RUN is not None:
            RUN.dispatch(self.client)
        while True:  # the schedule is sent once; in-flight greenlets finish on their own
            gevent.sleep(3600)


class ClosedLoopUser(FastHttpUser):
    """One of C callers that send back to back (paper 000's fixed concurrency)."""

    wait_time = constant(0)

    @task
    def call(self) -> None:
        if RUN is None or not isinstance(RUN.shape, ClosedLoopShape):
            gevent.sleep(1)
            return
        level = RUN.shape.level_at(RUN.now())
        if level is None or level.users == 0:
            gevent.sleep(0.05)
            return
        index = RUN.sent
        RUN.fire(self.client, index, level.label)


class KindlingShape(LoadTestShape):
    """Follows the configured workload; None ends the run after its scale-down tail."""

    def tick(self) -> tuple[int, float, list[type[FastHttpUser]]] | None:
        run = RUN
        if run is None or FAILURE is not None:
            return None
        if isinstance(run.shape, ClosedLoopShape):
            run.start_clock()
            level = run.shape.level_at(run.now())
            if level is None:
                return None
            return level.users, SPAWN_RATE, [ClosedLoopUser]
        assert run.plan is not None
        t = run.now()
        if run.origin is None or t < run.plan.end_s:
            return 1, SPAWN_RATE, [ArrivalUser]
        if run.pending and t < run.plan.end_s + run.config.timeout_s:
            return 1, SPAWN_RATE, [ArrivalUser]  # stragglers still on their way back
        return None


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--kindling-plan", default="", help="RunConfig JSON written by `kindling loadtest run`"
    )
    add_arguments(parser, with_target=False)


@events.init.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    global RUN, FAILURE
    options = environment.parsed_options
    if options is None:
        return
    try:
        if options.kindling_plan:
            config = RunConfig.from_json(Path(options.kindling_plan).read_text())
        else:
            config = from_namespace(options, environment.host or "")
            config.report_in_process = True
        RUN = Run(config)
    except Exception as exc:  # reported once, then the shape ends the run at its first tick
        FAILURE = f"{type(exc).__name__}: {exc}"
        print(f"kindling loadtest: cannot start the run: {FAILURE}", file=sys.stderr, flush=True)
        return
    ArrivalUser.concurrency = config.max_in_flight
    for user in (ArrivalUser, ClosedLoopUser):
        user.network_timeout = config.timeout_s
        user.connection_timeout = config.timeout_s


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    if RUN is None:
        return
    gevent.spawn(RUN.sample_pods)
    gevent.spawn(RUN.report_progress)


@events.quitting.add_listener
def _quit(environment: Environment, **_: Any) -> None:
    if RUN is None:
        environment.process_exit_code = EXIT_FAILED
        return
    environment.process_exit_code = RUN.finish()
    if RUN.config.report_in_process:
        from kindling.loadtest.report import write_report

        print(write_report(Path(RUN.config.out)).headline(), flush=True)
