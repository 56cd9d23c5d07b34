"""Kindling: self-hosted serverless inference on Kubernetes."""

import os

__version__ = "0.1.0"

# onnxruntime's official Linux builds send telemetry to Microsoft by default since 1.29
# (microsoft/onnxruntime#27379: session creation with model file and graph names and
# hashes, to mobile.events.data.microsoft.com) unless ORT_DISABLE_TELEMETRY is set. A
# self-hosted platform sends nothing anywhere on its own: off for every process that
# imports kindling (the runtime, the benchmarks, the model builder) and the processes they
# start, unless a user sets the variable themselves. It must be set before onnxruntime is
# loaded, which every kindling entry point does after importing this package.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
