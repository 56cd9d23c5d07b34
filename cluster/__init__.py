"""kindling.cluster: a real Kubernetes control plane as plain processes, for the cluster
tier of the tests and for `make cluster` (etcd, kube-apiserver, controller-manager,
scheduler, kwok's fake nodes and Knative Serving's CRDs; built from the Go module proxy)."""
