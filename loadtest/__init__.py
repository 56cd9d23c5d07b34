"""kindling.loadtest: the papers' workloads on Locust, their reports, costs and peers.

`kindling loadtest` (cli.py) takes one settings object (config.py) to Locust
(locustfile.py, driver.py): open-loop schedules decided before the run (schedule.py,
mmpp.py for paper 001's MMPP-2, shapes.py for each paper's stages) or closed-loop users,
each request of a kind that encodes itself for its protocol (requests.py, corpus.py).
Every request is a row (records.py); a run's figures (summary.py, stats.py, pods.py) become
its report, tables in the papers' shapes and plots (report.py, plots.py), its cost per
request, per pod and always-on (cost.py), and its SLO gate (slo.py). The bench_*.py
scripts measure the runtime against raw onnxruntime in-process, memory, thread spinning,
the GPU pool and the text models over Redis, each printing its figures side by side in one
run, with a lean client of their own (benchclient.py).
"""
