"""kindling.controller: pre-warms pods from the predicted request rate (not built yet)."""
