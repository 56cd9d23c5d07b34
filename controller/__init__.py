"""kindling.controller: pre-warms pods from the predicted request rate.

`kindling controller run` (cli.py, app.py) reads each model's traffic (prometheus.py or
scrape.py, through inputs.py's interface), forecasts it (forecast.py), decides the warm pods
(policy.py) and sets them (knative.py on live Revisions, raw.py on Deployments), leading on
a Lease (leader.py), one tick at a time (loop.py). `kindling controller simulate`
(simcli.py) runs the same policy against Knative's KPA (kpa.py) and the baselines
(baselines.py) on the papers' workloads (workloads.py) with measured pods (profiles.py).
README.md in this folder says how it decides and what it measured.
"""
