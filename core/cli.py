"""The `kindling` command.

Each subcommand lives in its component and is imported only when called, so that
`kindling serve` pays for nothing but the runtime's own imports (cold start).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "kindling.runtime.serve",
        "serve a model repository over the Open Inference Protocol",
    ),
    "models": ("kindling.modelzoo.cli", "build the sample model repository"),
    "embeddings": ("kindling.embeddings.cli", "load and serve word-vector tables"),
    "loadtest": ("kindling.loadtest.cli", "run the papers' workloads with Locust"),
    "cluster": ("kindling.cluster.cli", "build and run a test Kubernetes control plane"),
    "controller": ("kindling.controller.cli", "pre-warm pods from the forecast request rate"),
    "advise": ("kindling.advisor.cli", "size a model: chart values that meet an SLO at least cost"),
}


def _usage() -> str:
    lines = ["usage: kindling COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"kindling: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)
