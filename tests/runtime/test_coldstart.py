"""The cold-start timeline (kindling.runtime.coldstart)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from kindling.runtime import coldstart
from kindling.runtime.coldstart import ColdStartTimeline, process_start_time

# /proc/self/stat's starttime and /proc/uptime are in clock ticks (10 ms at USER_HZ=100):
# the start time read back may be off by about two ticks.
TICK_SLACK_S = 0.05


def test_process_start_time_is_in_the_past():
    started = process_start_time()
    assert started <= time.time()
    assert started > time.time() - 7 * 24 * 3600


def test_process_start_time_of_a_fresh_process():
    """A new interpreter's start is after we spawned it and before it asked."""
    code = (
        "import json, time\n"
        "from kindling.runtime.coldstart import process_start_time\n"
        "print(json.dumps([process_start_time(), time.time()]))\n"
    )
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    after = time.time()
    started, asked = json.loads(out)
    assert before - TICK_SLACK_S <= started <= asked + TICK_SLACK_S
    assert asked <= after


class FakeProc:
    """Stands in for open() on /proc/self/stat and /proc/uptime."""

    def __init__(self, stat: bytes, uptime: bytes = b"1000.00 3000.00\n") -> None:
        self.files = {"/proc/self/stat": stat, "/proc/uptime": uptime}

    def __call__(self, path, mode="r", *args, **kwargs):
        if path not in self.files:
            raise FileNotFoundError(path)
        return io.BytesIO(self.files[path])


def stat_line(comm: bytes, starttime: int) -> bytes:
    # Fields 3.. after "(comm)": state, ppid, ... field 22 is starttime.
    after = [b"S"] + [b"0"] * 18 + [str(starttime).encode()] + [b"0"] * 30
    return b"4242 (" + comm + b") " + b" ".join(after) + b"\n"


@pytest.mark.parametrize("comm", [b"python", b"my prog", b"a) b) c", b"(x)"])
def test_process_start_time_parses_stat(monkeypatch, comm):
    ticks = os.sysconf("SC_CLK_TCK")
    monkeypatch.setattr(coldstart, "open", FakeProc(stat_line(comm, 250 * ticks)), raising=False)
    monkeypatch.setattr(coldstart.time, "time", lambda: 5000.0)
    # boot at 5000 - 1000 = 4000; started 250 s after boot
    assert process_start_time() == pytest.approx(4250.0)


@pytest.mark.parametrize(
    "proc",
    [
        FakeProc(b"garbage without a paren"),
        FakeProc(stat_line(b"p", 100), uptime=b"not-a-number"),
        FakeProc(b"1 (p) S 1 2\n"),  # too few fields
    ],
    ids=["no-paren", "bad-uptime", "short"],
)
def test_process_start_time_falls_back_to_now(monkeypatch, proc):
    monkeypatch.setattr(coldstart, "open", proc, raising=False)
    monkeypatch.setattr(coldstart.time, "time", lambda: 123.0)
    assert process_start_time() == 123.0


def test_process_start_time_without_proc(monkeypatch):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc")

    monkeypatch.setattr(coldstart, "open", no_proc, raising=False)
    monkeypatch.setattr(coldstart.time, "time", lambda: 77.0)
    assert process_start_time() == 77.0


def test_timeline_defaults_to_the_process_start():
    timeline = ColdStartTimeline()
    assert timeline.started_at <= time.time()
    assert timeline.process == {"start": 0.0}
    assert timeline.models == {}


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(coldstart.time, "time", lambda: now[0])
    return now


def test_mark_process_and_model_phases(clock):
    timeline = ColdStartTimeline(started_at=100.0)
    clock[0] = 100.25
    assert timeline.mark("imports") == pytest.approx(0.25)
    clock[0] = 101.0
    assert timeline.mark("fetched", "m") == pytest.approx(1.0)
    clock[0] = 101.5
    timeline.mark("session", "m")
    timeline.mark("fetched", "other")
    clock[0] = 102.0
    timeline.mark("ready")

    assert timeline.process == pytest.approx({"start": 0.0, "imports": 0.25, "ready": 2.0})
    assert timeline.models.keys() == {"m", "other"}
    assert timeline.models["m"] == pytest.approx({"fetched": 1.0, "session": 1.5})
    assert timeline.models["other"] == pytest.approx({"fetched": 1.5})


def test_mark_is_never_negative(clock):
    timeline = ColdStartTimeline(started_at=200.0)  # in the "future": clock stepped back
    assert timeline.mark("imports") == 0.0


def test_phases_merge_process_and_one_model(clock):
    timeline = ColdStartTimeline(started_at=100.0)
    clock[0] = 100.5
    timeline.mark("imports")
    clock[0] = 101.0
    timeline.mark("session", "a")
    timeline.mark("warmup", "b")

    assert timeline.phases("a") == pytest.approx(
        {"start": 0.0, "imports": 0.5, "model_session": 1.0}
    )
    assert timeline.phases("b") == pytest.approx(
        {"start": 0.0, "imports": 0.5, "model_warmup": 1.0}
    )
    assert timeline.phases() == pytest.approx({"start": 0.0, "imports": 0.5})
    assert timeline.phases("unknown") == timeline.phases()
    # phases() returns a copy
    timeline.phases("a")["start"] = 9.0
    assert timeline.process["start"] == 0.0


def test_log_writes_one_json_line(clock):
    timeline = ColdStartTimeline(started_at=100.0)
    clock[0] = 100.123456
    timeline.mark("imports")
    timeline.mark("fetched", "m")
    stream = io.StringIO()

    timeline.log(stream)

    text = stream.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    line = json.loads(text)
    assert line == {
        "event": "cold_start",
        "started_at": 100.0,
        "phases_s": {"start": 0.0, "imports": 0.1235},
        "models": {"m": {"fetched": 0.1235}},
    }


def test_log_defaults_to_stderr(capsys):
    ColdStartTimeline(started_at=time.time()).log()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["event"] == "cold_start"


def test_phase_names():
    assert coldstart.PROCESS_PHASES[0] == "start"
    assert coldstart.MODEL_PHASES[-1] == "ready"
