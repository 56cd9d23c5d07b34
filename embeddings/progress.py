"""A one-line progress report on stderr for the loader, silent unless stderr is a TTY."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, label: str, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, fraction: float, count: int) -> None:
        now = time.monotonic()
        # Redrawing costs a write syscall; four times a second is plenty for a human.
        if not self.enabled or now - self._shown < 0.25:
            return
        self._shown = now
        rate = count / max(now - self.started, 1e-9)
        self.stream.write(
            f"\r{self.label}: {fraction:6.1%}  {count:,} vectors  {rate:,.0f}/s\x1b[K"
        )
        self.stream.flush()

    def done(self, count: int) -> None:
        if self.enabled:
            self._shown = 0.0
            self.update(1.0, count)
            self.stream.write("\n")
            self.stream.flush()
