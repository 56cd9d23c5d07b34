"""The runtime's lifecycle around its server (runtime/lifecycle.py), in a child process:
signals are process-wide, and the pytest process must keep its own handlers."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A stop signal that lands while the event loop is being made, after the start-up handler
# (serve.py) is replaced and before the loop's own are in: the window a loaded machine hit.
# The loop factory sends it to the process itself, so the test does not race for it.
SIGNAL_IN_LOOP_SET_UP = """
import os, signal, sys
from kindling.runtime import lifecycle
from kindling.runtime.httpserver import App, Response

make = lifecycle.loop_factory() or __import__("asyncio").new_event_loop

def make_and_signal():
    loop = make()
    os.kill(os.getpid(), signal.SIGTERM)
    return loop

lifecycle.loop_factory = lambda: make_and_signal

async def handle(request):
    return Response(b"", content_type=b"text/plain")

app = App(handle, error=lambda exc: Response(exc.message.encode(), exc.status_code))
sys.exit(lifecycle.run_app(app, "127.0.0.1", 0, 1024, 5.0, 1.0))
"""


@pytest.mark.integration
def test_a_stop_signal_while_the_loop_is_set_up_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_LOOP_SET_UP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "SIGTERM during start-up: exiting" in done.stderr
    assert "Traceback" not in done.stderr and "serving on" not in done.stderr
