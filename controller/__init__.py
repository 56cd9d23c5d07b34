"""kindling.controller: pre-warms pods from the predicted request rate.

Built so far: the forecasters (forecast.py), the warm-pod policy (policy.py) and a model of
Knative's KPA decider (kpa.py) for the simulator. Not yet: the simulator, the actuation on
Revisions and Deployments, and `kindling controller run` (issue 12).
"""
