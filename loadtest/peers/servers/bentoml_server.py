"""Starts `bentoml serve` on bentoml_service.OnnxService (adaptive batching on)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common import parse_args


def main() -> None:
    args = parse_args(__doc__ or "")
    os.environ.update(
        PEER_MODEL=str(Path(args.model).resolve()),
        PEER_THREADS=str(args.threads),
        PEER_MAX_BATCH=str(args.max_batch),
        PEER_DELAY_MS=str(args.delay_ms),
        BENTOML_DO_NOT_TRACK="True",
        BENTOML_HOME=str(Path(args.workdir) / "bentoml"),
    )
    here = Path(__file__).resolve().parent
    bentoml = Path(sys.executable).parent / "bentoml"
    argv = ["serve", "bentoml_service:OnnxService", "--host", "127.0.0.1", "--port", str(args.port)]
    os.chdir(here)
    os.execv(bentoml, [str(bentoml), *argv])


if __name__ == "__main__":
    main()
