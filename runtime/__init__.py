"""kindling.runtime: the action runtime, `kindling serve`.

Start-up (serve.py) is ordered for the shortest cold start: the loader thread
(model_loader.py) builds every model of the repository (repository.py, settings.py) while
the main thread imports the HTTP stack, each model fetched (fetch.py), its onnxruntime
session tuned and its optimized graph cached (session.py, cpu.py), warmed up (model.py),
every step timed from exec (coldstart.py). Requests come in over three transports, all
onto one data plane (dataplane.py: find the model, validate, batch with batcher.py, time,
count): the Open Inference Protocol's REST endpoints (rest.py, codec.py) on the runtime's
own HTTP/1.1 server (httpserver.py, lifecycle.py for Knative's readiness and drain), OIP
gRPC (grpc_service.py, grpc_codec.py), and OpenWhisk's /init and /run (openwhisk.py,
action_init.py, action.py, builtin_action.py). Text models tokenize and look words up
(preprocess.py, text.py); errors become answers in one place (responses.py); metrics are
in telemetry.py. README.md's "The runtime" section says what each does and measures.
"""
