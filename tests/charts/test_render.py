"""The chart rendered with each values file of tests/charts/values: every object valid for
Kubernetes 1.35 or Knative 1.23's CRDs, and what each option promises, read off the
rendered objects. No cluster: `helm lint` and `helm template` only."""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kindling.controller.settings import ControllerSettings
from kindling.controller.targets import PREWARM_MARGIN_K, margin_k_of
from kindling.embeddings.cli import _parser as embeddings_parser
from kindling.embeddings.settings import EmbeddingSettings, parse_store_url
from kindling.runtime.coldstart import ColdStartTimeline
from kindling.runtime.settings import ModelConfig, ServerSettings
from kindling.runtime.telemetry import RuntimeMetrics
from tests.charts.render import (
    CHART,
    NAMESPACE,
    RELEASE,
    VALUES,
    Helm,
    by_kind,
    containers,
    env,
    is_knative,
    named,
    pod_template,
    selects,
    validate,
)

# helm runs as a real process.
pytestmark = pytest.mark.integration

VALUES_FILES = sorted(p.name for p in VALUES.glob("*.yaml"))
SAMPLES = ["kim_cnn", "sm_cnn", "mobilenet_v2", "squeezenet1_1", "resnet18", "minilm"]
MIN_SCALE = "autoscaling.knative.dev/min-scale"
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def render(helm: Helm) -> Any:
    """render(*values files, sets=..., extra=...) -> objects, each rendering done once."""
    return functools.cache(
        lambda *values, sets=(), extra=(): helm.template(*values, sets=sets, extra=extra)
    )


def runtimes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """model name -> the object that runs it (a Knative Service or a Deployment)."""
    return {
        o["metadata"]["labels"]["kindling.dev/model"]: o
        for o in objects
        if pod_template(o)
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "runtime"
    }


def runtime_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint(helm: Helm, values: str) -> None:
    out = helm.run("lint", "--strict", str(CHART), "--values", str(VALUES / values)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_object_is_valid_for_kubernetes_or_knative(
    render: Any, crds: Path, values: str
) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        validate(obj, crds)
        metadata = obj["metadata"]
        # Namespaced explicitly, labelled as the release's: what `helm uninstall` and the
        # cluster test's leftover check look for.
        assert metadata["namespace"] == NAMESPACE, metadata["name"]
        assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE, metadata["name"]


def test_the_validators_refuse_unknown_fields_and_wrong_types(render: Any, crds: Path) -> None:
    """Not vacuous: a field the API server would drop or refuse fails validation here."""
    objects = render("raw.yaml")
    deployment = copy.deepcopy(by_kind(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, crds)
    service = copy.deepcopy(runtimes(render("defaults.yaml"))["kim_cnn"])
    service["spec"]["template"]["spec"]["containerConcurency"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate(service, crds)
    service = copy.deepcopy(runtimes(render("defaults.yaml"))["kim_cnn"])
    service["spec"]["template"]["spec"]["containerConcurrency"] = "4"
    with pytest.raises(jsonschema.ValidationError):
        validate(service, crds)


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_container_runs_with_the_security_defaults(render: Any, values: str) -> None:
    for obj in render(values):
        template = pod_template(obj)
        if not template:
            continue
        spec = template["spec"]
        # Only the controller talks to the API server.
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        assert spec["automountServiceAccountToken"] is (component == "controller"), obj["metadata"][
            "name"
        ]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(obj):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] > 0
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["limits"]["memory"]
            assert container["resources"]["requests"]["cpu"]
            # With a read-only root, /tmp is a volume (an emptyDir); a runtime whose
            # model is in its image writes nothing, and has no volume at all.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if "/tmp" in mounts:
                assert "emptyDir" in volumes[mounts["/tmp"]]
            elif container["name"] == "runtime":
                assert not mounts and not volumes, obj["metadata"]["name"]
            elif container["name"] != "fetch":  # curl writes only to its output volume
                pytest.fail(f"{obj['metadata']['name']}/{container['name']} has no /tmp")


def test_the_defaults_serve_the_sample_models_on_knative(render: Any) -> None:
    objects = render("defaults.yaml")
    models = runtimes(objects)
    assert list(models) == SAMPLES
    for name, service in models.items():
        assert is_knative(service) and service["kind"] == "Service"
        assert service["metadata"]["name"] == f"{RELEASE}-{name.replace('_', '-')}"
        template = service["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
        assert annotations[MIN_SCALE] == "0"  # scale-to-zero
        assert annotations["autoscaling.knative.dev/max-scale"] == "10"
        assert annotations["autoscaling.knative.dev/initial-scale"] == "1"
        assert annotations["autoscaling.knative.dev/target"] == "32"
        assert template["spec"]["containerConcurrency"] == 0
        container = runtime_container(service)
        assert container["image"] == "kind.local/kindling-runtime:0.1.0"
        assert container["command"] == ["kindling", "serve"]
        assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
        variables = env(container)
        assert variables["KINDLING_MODELS"] == name
        assert variables["KINDLING_MODEL_REPOSITORY"] == "/models"
        # Threads follow the CPU limit (the runtime reads its cgroup quota) unless set.
        assert "KINDLING_THREADS" not in variables
        assert container["resources"]["limits"]["cpu"] == "2"
        # No Redis configured: the text models read the image's own tables.
        assert "KINDLING_REDIS_URL" not in variables
        # Knative's queue-proxy probes many times a second while a pod starts only if the probe
        # has no period of its own; Knative fills in the port.
        assert container["readinessProbe"] == {"httpGet": {"path": "/v2/health/ready"}}
    assert runtime_container(models["resnet18"])["resources"]["requests"]["memory"] == "640Mi"
    kinds = {o["kind"] for o in objects}
    assert "StatefulSet" not in kinds and "Job" not in kinds and "Secret" not in kinds


def test_a_models_own_keys_win_over_model_defaults_even_zero_and_null(render: Any) -> None:
    """Maps merge key by key; 0 and false win over a default (Sprig's merge would drop
    them); null removes a key."""
    models = json.dumps(
        [
            {
                "name": "kim_cnn",
                "autoscaling": {"minScale": 0},
                "resources": {"limits": {"cpu": None}},
            },
            {"name": "minilm", "resources": {"requests": {"memory": "1Gi"}}},
        ]
    )
    # A GPU model needs a model of its own: an image here (validateValues).
    sets = (
        "modelDefaults.autoscaling.minScale=1",
        "modelDefaults.gpu=true",
        "modelDefaults.image.repository=registry.example.com/text-models",
    )
    objects = render("defaults.yaml", sets=sets, extra=("--set-json", f"models={models}"))
    kim, minilm = runtimes(objects)["kim_cnn"], runtimes(objects)["minilm"]
    assert kim["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] == "0"
    assert minilm["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] == "1"
    assert "cpu" not in runtime_container(kim)["resources"]["limits"]
    assert runtime_container(minilm)["resources"] == {
        # A GPU model writes (its engine caches): its scratch volumes are requested too.
        "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2112Mi"},
        "limits": {"cpu": "2", "memory": "512Mi", GPU: 1},
    }


def test_min_scale_is_set_on_the_service_template_only(render: Any) -> None:
    """The controller owns min-scale on live Revisions: the chart renders no Revision,
    Configuration or PodAutoscaler, and min-scale nowhere but the Services' templates."""
    for values in VALUES_FILES:
        objects = render(values)
        assert not {"Revision", "Configuration", "PodAutoscaler", "Route"} & {
            o["kind"] for o in objects
        }
        for obj in objects:
            text = json.dumps(obj)
            if MIN_SCALE in text:
                assert is_knative(obj) and obj["kind"] == "Service"
                assert MIN_SCALE not in json.dumps(obj["metadata"])
                assert MIN_SCALE in obj["spec"]["template"]["metadata"]["annotations"]


def test_a_gpu_model_lands_on_the_gpu_pool_and_cpu_models_never_do(render: Any) -> None:
    models = runtimes(render("gpu.yaml"))
    gpu = models["resnet18"]["spec"]["template"]["spec"]
    container = runtime_container(models["resnet18"])
    assert container["image"] == "kind.local/kindling-runtime-gpu:0.1.0"
    assert container["resources"]["limits"][GPU] == 1
    assert env(container)["KINDLING_THREADS"] == "4"
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [
        {"key": GPU, "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    assert gpu["runtimeClassName"] == "nvidia"
    assert "affinity" not in gpu

    cpu = models["squeezenet1_1"]["spec"]["template"]["spec"]
    assert (
        runtime_container(models["squeezenet1_1"])["image"] == "kind.local/kindling-runtime:0.1.0"
    )
    assert GPU not in runtime_container(models["squeezenet1_1"])["resources"]["limits"]
    assert "tolerations" not in cpu and "nodeSelector" not in cpu and "runtimeClassName" not in cpu
    terms = cpu["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}
            ]
        }
    ]


def test_raw_mode_renders_a_deployment_service_and_hpa_per_model(render: Any) -> None:
    objects = render("raw.yaml")
    assert not any(is_knative(o) for o in objects)
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    hpas = {h["metadata"]["name"]: h for h in by_kind(objects, "HorizontalPodAutoscaler")}
    names = {f"{RELEASE}-{m.replace('_', '-')}" for m in SAMPLES}
    assert set(deployments) == names == set(hpas)
    assert names <= set(services)
    for name in names:
        deployment = deployments[name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"], labels)
        assert selects({"matchLabels": services[name]["spec"]["selector"]}, labels)
        assert services[name]["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
        ]
        # The HPA owns replicas: the chart leaves the field alone (server-side apply).
        assert "replicas" not in deployment["spec"]
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
        container = runtime_container(deployment)
        assert container["readinessProbe"]["httpGet"] == {
            "path": "/v2/health/ready",
            "port": "http",
        }
        assert deployment["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
            "type": "RuntimeDefault"
        }


def test_raw_mode_sets_replicas_when_nothing_else_does(render: Any) -> None:
    deployments = {
        d["metadata"]["labels"]["kindling.dev/model"]: d
        for d in by_kind(render("raw-gpu.yaml"), "Deployment")
    }
    assert deployments["squeezenet1_1"]["spec"]["replicas"] == 2
    assert deployments["resnet18"]["spec"]["replicas"] == 1
    # With the controller, the replicas are its to set.
    with_controller = render("raw-gpu.yaml", sets=("controller.enabled=true",))
    for deployment in runtimes(with_controller).values():
        assert "replicas" not in deployment["spec"]


def test_the_controller_role_is_least_privilege(render: Any) -> None:
    role = named(render("defaults.yaml"), "Role", f"{RELEASE}-controller")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.knative.dev"],
            "resources": ["services"],
            "verbs": ["get", "list"],
        },
        {
            "apiGroups": ["serving.knative.dev"],
            "resources": ["revisions"],
            "verbs": ["get", "list", "patch"],
        },
        # No Prometheus URL: it scrapes the runtime pods itself, so it lists their addresses.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [f"{RELEASE}-controller"],
            "verbs": ["get", "update"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    legacy = named(
        render("defaults.yaml", sets=("controller.podAutoscalerAccess=true",)),
        "Role",
        f"{RELEASE}-controller",
    )
    assert {
        "apiGroups": ["autoscaling.internal.knative.dev"],
        "resources": ["podautoscalers"],
        "verbs": ["get", "patch"],
    } in legacy["rules"]
    # Raw mode: the scale of this release's Deployments, by name, and no Knative rule.
    raw = render("raw-gpu.yaml", sets=("controller.enabled=true",))
    rules = named(raw, "Role", f"{RELEASE}-controller")["rules"]
    assert rules[0] == {
        "apiGroups": ["apps"],
        "resources": ["deployments/scale"],
        "resourceNames": [
            d["metadata"]["name"]
            for d in by_kind(raw, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "runtime"
        ],
        "verbs": ["get", "patch"],
    }
    # ... and the Deployments themselves, read only, by the same names (their annotations
    # carry the model's own pre-warm margin, which the scale subresource does not).
    assert rules[1] == {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "resourceNames": rules[0]["resourceNames"],
        "verbs": ["get"],
    }
    assert not any("serving.knative.dev" in r["apiGroups"] for r in rules)
    binding = named(render("defaults.yaml"), "RoleBinding", f"{RELEASE}-controller")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-controller", "namespace": NAMESPACE}
    ]
    controller = named(render("defaults.yaml"), "Deployment", f"{RELEASE}-controller")
    assert controller["spec"]["template"]["spec"]["serviceAccountName"] == f"{RELEASE}-controller"
    assert runtime_container(controller)["command"] == ["kindling", "controller", "run"]
    # Raw mode: the Deployments it may scale, handed over by name (it may not list them),
    # as the controller's own settings read them.
    raw_controller = named(raw, "Deployment", f"{RELEASE}-controller")
    env = {e["name"]: e.get("value") for e in runtime_container(raw_controller)["env"]}
    workloads = ControllerSettings.from_env(
        {"KINDLING_NAMESPACE": NAMESPACE, "KINDLING_WORKLOADS": env["KINDLING_WORKLOADS"]}
    ).raw_workloads()
    assert sorted(w.deployment for w in workloads) == sorted(rules[0]["resourceNames"])
    assert "KINDLING_WORKLOADS" not in {e["name"] for e in runtime_container(controller)["env"]}
    with_prometheus = named(
        render("defaults.yaml", sets=("controller.prometheusUrl=http://prometheus:9090",)),
        "Role",
        f"{RELEASE}-controller",
    )
    assert not any("pods" in r["resources"] for r in with_prometheus["rules"])


def test_controller_off_renders_none_of_it(render: Any) -> None:
    objects = render("controller-off.yaml")
    components = {o["metadata"]["labels"].get("app.kubernetes.io/component") for o in objects}
    assert "controller" not in components
    assert not {"Role", "RoleBinding", "ServiceAccount"} & {o["kind"] for o in objects}
    assert len(runtimes(objects)) == len(SAMPLES)


def test_the_built_in_redis_and_its_password(render: Any) -> None:
    objects = render("redis.yaml")
    password = "not-a-real-password-0123"
    secret = named(objects, "Secret", f"{RELEASE}-redis")
    # The password is in the Secret (base64) and nowhere else in any object.
    for obj in objects:
        if obj is not secret:
            assert password not in json.dumps(obj), obj["metadata"]["name"]
    statefulset = named(objects, "StatefulSet", f"{RELEASE}-redis")
    (redis,) = statefulset["spec"]["template"]["spec"]["containers"]
    # Redis reads the password from a file of the Secret, not from its environment.
    assert "env" not in redis
    (auth,) = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth"]
    assert auth["secret"]["secretName"] == f"{RELEASE}-redis"
    assert auth["secret"]["items"] == [{"key": "redis-password", "path": "password"}]
    assert "/etc/redis-auth/password" in redis["args"][0]
    assert (
        statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "8Gi"
    )
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    config = named(objects, "ConfigMap", f"{RELEASE}-redis")["data"]["redis.conf"]
    assert "include /tmp/auth.conf" in config and "requirepass" not in config
    # 3/4 of the 1Gi limit, refusing writes when full; snapshots only on request and on stop
    # (tests/charts/test_redis_config.py runs this file on a real redis-server).
    lines = set(config.splitlines())
    assert {"maxmemory 805306368", "maxmemory-policy noeviction", 'save ""'} <= lines
    assert "shutdown-on-sigterm save" in lines
    for job in by_kind(objects, "Job"):
        assert "--snapshot" in job["spec"]["template"]["spec"]["containers"][0]["command"]
    # Alive while LOADING a large snapshot, ready only on PONG.
    assert "LOADING*" in redis["livenessProbe"]["exec"]["command"][-1]
    assert "LOADING" not in redis["readinessProbe"]["exec"]["command"][-1]

    models = runtimes(objects)
    kim = runtime_container(models["kim_cnn"])
    variables = env(kim)
    assert variables["KINDLING_REDIS_URL"] == f"redis://:$(REDIS_PASSWORD)@{RELEASE}-redis:6379/0"
    # $(REDIS_PASSWORD) expands only if the variable comes before the URL in the list.
    names = [e["name"] for e in kim["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("KINDLING_REDIS_URL")
    settings = EmbeddingSettings.from_env(_expanded(variables, password))
    assert (settings.cache_size, settings.oov, settings.connect_timeout) == (50000, "random", 0.5)
    assert settings.location.kind == "redis"
    # Only the text model reads the store.
    assert "KINDLING_REDIS_URL" not in env(runtime_container(models["mobilenet_v2"]))
    assert (
        "checksum/redis-secret" in models["kim_cnn"]["spec"]["template"]["metadata"]["annotations"]
    )


def _expanded(variables: dict[str, Any], password: str) -> dict[str, str]:
    """The environment the container sees: plain values, with $(REDIS_PASSWORD) expanded
    as the kubelet does it."""
    return {
        k: v.replace("$(REDIS_PASSWORD)", password)
        for k, v in variables.items()
        if isinstance(v, str)
    }


def loader_jobs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["labels"]["kindling.dev/table"]: j for j in by_kind(objects, "Job")}


def test_the_loader_jobs_are_plain_jobs_that_run_the_loader_cli(render: Any) -> None:
    jobs = loader_jobs(render("redis.yaml"))
    assert set(jobs) == {"word2vec", "glove"}
    for table, job in jobs.items():
        # Not a Helm hook: the install does not wait for a load.
        assert not any(k.startswith("helm.sh/") for k in job["metadata"].get("annotations", {}))
        assert re.fullmatch(rf"{RELEASE}-load-{table}-[0-9a-f]{{10}}", job["metadata"]["name"])
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never"
        (load,) = spec["containers"]
        assert load["command"][:3] == ["kindling", "embeddings", "load"]
        # The loader's own parser takes the arguments as they are.
        args = embeddings_parser().parse_args(load["command"][2:])
        assert (args.command, args.table) == ("load", table)
        assert env(load)["KINDLING_REDIS_URL"].endswith(f"@{RELEASE}-redis:6379/0")
    word2vec = jobs["word2vec"]["spec"]["template"]["spec"]
    (fetch,) = word2vec["initContainers"]
    assert fetch["image"] == "docker.io/curlimages/curl:8.11.1"
    assert (
        fetch["command"][-1] == "https://vectors.example.com/GoogleNews-vectors-negative300.bin.gz"
    )
    args = embeddings_parser().parse_args(word2vec["containers"][0]["command"][2:])
    assert (args.format, args.dtype, str(args.file)) == (
        "word2vec-bin",
        "float16",
        "/work/GoogleNews-vectors-negative300.bin.gz",
    )
    glove = jobs["glove"]["spec"]["template"]["spec"]
    args = embeddings_parser().parse_args(glove["containers"][0]["command"][2:])
    assert (str(args.file), str(args.vocab)) == (
        "/vectors/glove/glove.840B.300d.txt.gz",
        "/vectors/glove/vocab.txt",
    )
    volumes = {v["name"]: v for v in glove["volumes"]}
    assert volumes["vectors"]["persistentVolumeClaim"] == {"claimName": "vectors", "readOnly": True}


@pytest.mark.parametrize(
    ("values", "kind", "seeds", "user"),
    [
        ("external-redis.yaml", "redis", None, "kindling"),
        (
            "redis-cluster.yaml",
            "cluster",
            [("redis-0.redis", 6379), ("redis-1.redis", 6379), ("redis-2.redis", 6379)],
            None,
        ),
    ],
)
def test_external_redis_and_redis_cluster_urls(
    render: Any, values: str, kind: str, seeds: Any, user: Any
) -> None:
    objects = render(values)
    assert not by_kind(objects, "StatefulSet") and not by_kind(objects, "Secret")
    kim = runtime_container(runtimes(objects)["kim_cnn"])
    variables = env(kim)
    location = parse_store_url(_expanded(variables, "s3cret")["KINDLING_REDIS_URL"])
    assert location.kind == kind
    if kind == "cluster":
        assert list(location.seeds) == seeds and location.password == "s3cret"
    else:
        assert (
            variables["KINDLING_REDIS_URL"]
            == "rediss://kindling:$(REDIS_PASSWORD)@redis.data.svc:6380/2"
        )
        assert variables["REDIS_PASSWORD"] == {
            "secretKeyRef": {"name": "redis-credentials", "key": "password"}
        }


def test_a_loader_job_is_renamed_only_when_its_spec_changes(render: Any) -> None:
    """The name ends with a hash of the Job's spec: an upgrade that changes nothing in it
    keeps the finished Job (no reload), one that changes the table or the loader's image
    makes a new Job; tables whose names differ only in _ and - get different Jobs."""
    names = {t: j["metadata"]["name"] for t, j in loader_jobs(render("redis.yaml")).items()}
    again = {t: j["metadata"]["name"] for t, j in loader_jobs(render("redis.yaml")).items()}
    assert again == names
    # Something that is not the loader's (a model's setting) leaves both names alone.
    other = render("redis.yaml", sets=("modelDefaults.containerConcurrency=4",))
    assert {t: j["metadata"]["name"] for t, j in loader_jobs(other).items()} == names
    dtype = render("redis.yaml", sets=("embeddings.loader.tables[0].dtype=float32",))
    changed = {t: j["metadata"]["name"] for t, j in loader_jobs(dtype).items()}
    assert changed["word2vec"] != names["word2vec"] and changed["glove"] == names["glove"]
    image = render("redis.yaml", sets=("runtime.image.tag=0.2.0",))
    assert not set(names.values()) & {j["metadata"]["name"] for j in by_kind(image, "Job")}
    tables = [
        {"name": name, "format": "glove", "url": "https://vectors.example.com/v.txt"}
        for name in ("demo_300", "demo-300")
    ]
    twins = render(
        "redis.yaml",
        extra=("--set-json", f"embeddings.loader.tables={json.dumps(tables)}",
               "--set", "embeddings.externalTables={word2vec}"),
    )  # fmt: skip
    jobs = by_kind(twins, "Job")
    assert len({j["metadata"]["name"] for j in jobs}) == len(jobs) == 2
    assert all(j["metadata"]["name"].startswith(f"{RELEASE}-load-demo-300-") for j in jobs)


@pytest.mark.parametrize(
    "removed",
    [
        "gpuPool.nodeSelector", "gpuPool.tolerations", "modelDefaults.tolerations",
        "modelDefaults.nodeSelector", "modelDefaults.resources", "modelDefaults.podLabels",
        "runtime.podLabels", "runtime.podAnnotations", "runtime.settings", "commonAnnotations",
        "controller.serviceAccount.annotations",
    ],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["knative", "raw"])
def test_a_default_map_removed_with_null_renders(render: Any, removed: str, mode: str) -> None:
    """Helm's way to drop a default map or list is `key: null`; the chart renders without
    it instead of failing inside a template function."""
    sets = (
        f"serving.mode={mode}", f"controller.enabled={str(mode == 'knative').lower()}",
        "models[0].name=mobilenet_v2", "models[0].gpu=true",
        "models[0].image.repository=registry.example.com/gpu-models", f"{removed}=null",
    )  # fmt: skip
    (model,) = runtimes(render(sets=sets)).values()
    assert model["kind"] in ("Service", "Deployment")


def test_runtime_settings_reach_the_runtime_under_its_own_names(render: Any) -> None:
    """Every runtime.settings key, set, becomes the variable runtime/settings.py reads."""
    sets = (
        "runtime.settings.logLevel=debug", "runtime.settings.maxBodyBytes=1048576",
        "runtime.settings.maxJsonBytes=524288", "runtime.settings.maxBodyMemoryBytes=4194304",
        "runtime.settings.maxConnections=50", "runtime.settings.headerTimeoutS=5",
        "runtime.settings.bodyTimeoutS=7.5", "runtime.settings.downloadTimeoutS=600",
        "runtime.settings.gracefulTimeoutS=20", "runtime.settings.inlineMaxMs=0",
        "runtime.settings.maxBatchSize=8", "runtime.settings.maxQueueDelayMs=1.5",
        "runtime.settings.optimizedCache=false", "runtime.settings.optimizedCacheDelayS=2",
        "runtime.settings.providers={CPUExecutionProvider}",
        "runtime.settings.modelUriSchemes={https,s3}", "runtime.settings.modelUriRoot=/mnt/models",
    )  # fmt: skip
    container = runtime_container(runtimes(render("defaults.yaml", sets=sets))["mobilenet_v2"])
    settings = ServerSettings.from_env(_expanded(env(container), ""))
    assert settings.log_level == "debug"
    assert (settings.max_body_bytes, settings.max_json_bytes, settings.max_body_memory_bytes) == (
        1048576,
        524288,
        4194304,
    )
    assert (settings.max_connections, settings.header_timeout_s, settings.body_timeout_s) == (
        50,
        5.0,
        7.5,
    )
    assert (settings.download_timeout_s, settings.graceful_timeout_s, settings.inline_max_ms) == (
        600.0,
        20.0,
        0.0,
    )
    assert (settings.max_batch_size, settings.max_queue_delay_ms) == (8, 1.5)
    assert (settings.optimized_cache, settings.optimized_cache_delay_s) == (False, 2.0)
    assert settings.providers == ("CPUExecutionProvider",)
    assert settings.uri_schemes == ("https", "s3")
    assert str(settings.model_uri_root) == "/mnt/models"
    assert (str(settings.model_repository), settings.models) == ("/models", ("mobilenet_v2",))
    assert str(settings.cache_dir) == "/var/cache/kindling"


def test_sizing_settings_per_model_over_the_global_ones(render: Any) -> None:
    """What `kindling advise` writes: a model's own maxBatchSize and maxQueueDelayMs win
    over runtime.settings; unset (null, the default), no variable: config.yaml's values."""
    sets = (
        "runtime.settings.maxBatchSize=8", "runtime.settings.maxQueueDelayMs=2",
        "models[0].name=kim_cnn", "models[0].settings.maxBatchSize=1",
        "models[0].settings.maxQueueDelayMs=0.5", "models[1].name=minilm",
        "models[1].settings.maxBatchSize=4",
    )  # fmt: skip
    models = runtimes(render("defaults.yaml", sets=sets))
    read = {
        name: ServerSettings.from_env(_expanded(env(runtime_container(obj)), ""))
        for name, obj in models.items()
    }
    assert (read["kim_cnn"].max_batch_size, read["kim_cnn"].max_queue_delay_ms) == (1, 0.5)
    # Key by key: a model's own maxBatchSize leaves it the global maxQueueDelayMs.
    assert (read["minilm"].max_batch_size, read["minilm"].max_queue_delay_ms) == (4, 2.0)
    for obj in runtimes(render("defaults.yaml")).values():
        variables = env(runtime_container(obj))
        assert "KINDLING_MAX_BATCH_SIZE" not in variables
        assert "KINDLING_MAX_QUEUE_DELAY_MS" not in variables


def test_a_models_prewarm_margin_is_an_annotation_the_controller_reads(render: Any) -> None:
    """prewarm.marginK: on the Knative Service's template (each Revision carries it) or the
    raw Deployment itself (not its pods: no roll), as targets.margin_k_of reads it; null
    (the default) writes none, and the controller's KINDLING_MARGIN_K applies."""
    sets = (
        "modelDefaults.prewarm.marginK=4", "models[0].name=kim_cnn",
        "models[0].prewarm.marginK=0", "models[1].name=minilm",
        "models[2].name=resnet18", "models[2].prewarm.marginK=1.5",
    )  # fmt: skip

    def margin(annotations: dict[str, str] | None) -> float | None:
        return margin_k_of(annotations or {}, "test", set())

    knative = runtimes(render("defaults.yaml", sets=sets))
    revisions = {n: o["spec"]["template"]["metadata"]["annotations"] for n, o in knative.items()}
    assert revisions["kim_cnn"][PREWARM_MARGIN_K] == "0"  # 0 is a value, not "unset"
    assert {n: margin(a) for n, a in revisions.items()} == {
        "kim_cnn": 0.0,
        "minilm": 4.0,
        "resnet18": 1.5,
    }
    raw = runtimes(render("raw.yaml", sets=(*sets, "commonAnnotations.team=ml")))
    for name, expected in (("kim_cnn", 0.0), ("minilm", 4.0), ("resnet18", 1.5)):
        metadata = raw[name]["metadata"]
        assert margin(metadata["annotations"]) == expected
        assert metadata["annotations"]["team"] == "ml"  # merged with the common ones
        pod = raw[name]["spec"]["template"]["metadata"].get("annotations") or {}
        assert PREWARM_MARGIN_K not in pod
    for obj in runtimes(render("defaults.yaml")).values():
        assert PREWARM_MARGIN_K not in obj["spec"]["template"]["metadata"]["annotations"]
    for obj in runtimes(render("raw.yaml")).values():
        assert PREWARM_MARGIN_K not in (obj["metadata"].get("annotations") or {})


def test_embedding_settings_reach_the_store_under_its_own_names(render: Any) -> None:
    sets = (
        "redis.enabled=true", "embeddings.externalTables={demo300,demo50}",
        "embeddings.settings.cacheSize=0", "embeddings.settings.oov=unk",
        "embeddings.settings.unkToken=UNK", "embeddings.settings.aliasTtl=0",
        "embeddings.settings.maxWords=100", "embeddings.settings.redisConnectTimeout=1",
        "embeddings.settings.redisSocketTimeout=2", "embeddings.settings.redisRetries=3",
        "embeddings.settings.redisBackoff=0.1", "embeddings.settings.redisCooldown=4",
    )  # fmt: skip
    container = runtime_container(runtimes(render("defaults.yaml", sets=sets))["kim_cnn"])
    settings = EmbeddingSettings.from_env(_expanded(env(container), "pw"))
    assert (settings.cache_size, settings.oov, settings.unk_token, settings.alias_ttl) == (
        0,
        "unk",
        "UNK",
        0.0,
    )
    assert (settings.max_words, settings.connect_timeout, settings.socket_timeout) == (
        100,
        1.0,
        2.0,
    )
    assert (settings.retries, settings.backoff, settings.cooldown) == (3, 0.1, 4.0)


def test_a_model_uri_model_gets_its_config_yaml_from_a_configmap(render: Any, helm: Helm) -> None:
    objects = render("model-cache.yaml")
    models = runtimes(objects)
    mnist = models["mnist"]
    configmap = named(objects, "ConfigMap", f"{RELEASE}-mnist-model")
    root = Path(env(runtime_container(mnist))["KINDLING_MODEL_REPOSITORY"])
    config = ModelConfig.from_dict(_yaml(configmap["data"]["config.yaml"]), root / "mnist")
    assert (config.name, config.model_uri, config.max_batch_size) == (
        "mnist",
        "s3://models/mnist/model.onnx",
        16,
    )
    assert config.model_sha256 == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    spec = mnist["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "model-config")
    assert volume["configMap"] == {
        "name": configmap["metadata"]["name"],
        "items": [{"key": "config.yaml", "path": "mnist/config.yaml"}],
    }
    mounts = {m["name"]: m["mountPath"] for m in runtime_container(mnist)["volumeMounts"]}
    assert mounts["model-config"] == str(root)
    variables = env(runtime_container(mnist))
    assert variables["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    assert variables["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    # The text model's table is written into its config; a setting of its own wins.
    text = ModelConfig.from_dict(
        _yaml(named(objects, "ConfigMap", f"{RELEASE}-tiny-text-model")["data"]["config.yaml"]),
        root / "tiny-text",
    )
    assert text.preprocess["table"] == "demo300"
    assert env(runtime_container(models["mobilenet_v2"]))["KINDLING_INLINE_MAX_MS"] == "0"
    assert "AWS_ENDPOINT_URL" not in env(runtime_container(models["mobilenet_v2"]))
    # A changed config.yaml changes the pod template, so the pods roll.
    changed = helm.template("model-cache.yaml", sets=("models[1].config.max_batch_size=8",))
    before = mnist["spec"]["template"]["metadata"]["annotations"]["checksum/model-config"]
    after = runtimes(changed)["mnist"]["spec"]["template"]["metadata"]["annotations"][
        "checksum/model-config"
    ]
    assert before != after


def _yaml(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def test_the_model_cache_is_mounted_at_the_runtimes_cache_dir(render: Any) -> None:
    for service in runtimes(render("model-cache.yaml")).values():
        spec = service["spec"]["template"]["spec"]
        container = runtime_container(service)
        cache = env(container)["KINDLING_CACHE_DIR"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = next(v for v in spec["volumes"] if v["name"] == mounts[cache])
        assert volume["hostPath"] == {"path": "/var/lib/kindling-cache", "type": "Directory"}
    gpu = runtimes(render("gpu.yaml"))
    volumes = gpu["resnet18"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}} in volumes
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in volumes


def test_a_model_baked_into_the_image_has_no_volume(render: Any) -> None:
    """It writes nothing, so the kubelet need not wait on its volume manager (a 300 ms
    poll) before starting it: kindling.runtime.writes."""
    for service in [
        *runtimes(render("defaults.yaml")).values(),
        runtimes(render("gpu.yaml"))["squeezenet1_1"],
    ]:
        spec = service["spec"]["template"]["spec"]
        assert "volumes" not in spec
        assert "volumeMounts" not in runtime_container(service)
    pvc = render(
        "defaults.yaml",
        sets=(
            "modelCache.enabled=true",
            "modelCache.type=pvc",
            "modelCache.existingClaim=models-cache",
        ),
    )
    for service in runtimes(pvc).values():
        volume = next(
            v for v in service["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"
        )
        assert volume == {"name": "cache", "persistentVolumeClaim": {"claimName": "models-cache"}}


def test_pods_roll_when_the_redis_password_changes(render: Any) -> None:
    def annotations(password: str) -> dict[str, dict[str, str]]:
        objects = render("redis.yaml", sets=(f"redis.auth.password={password}",))
        pods = {
            name: o["spec"]["template"]["metadata"]["annotations"]
            for name, o in runtimes(objects).items()
        }
        pods["redis"] = named(objects, "StatefulSet", f"{RELEASE}-redis")["spec"]["template"][
            "metadata"
        ]["annotations"]
        return pods

    one, two = annotations("one"), annotations("two")
    assert one["kim_cnn"] != two["kim_cnn"] and one["redis"] != two["redis"]
    assert one["mobilenet_v2"] == two["mobilenet_v2"]  # reads no word vectors


@pytest.mark.parametrize("values", VALUES_FILES)
def test_network_policies_select_the_right_pods(render: Any, values: str) -> None:
    objects = render(values)
    pods = {
        f"{o['kind']}/{o['metadata']['name']}": pod_template(o)["metadata"]["labels"]
        for o in objects
        if pod_template(o)
    }

    for pod in by_kind(objects, "Pod"):  # helm test's
        pods[f"Pod/{pod['metadata']['name']}"] = pod["metadata"]["labels"]

    def component(labels: dict[str, str]) -> str:
        return labels["app.kubernetes.io/component"]

    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    runtime = policies[f"{RELEASE}-runtime"]
    assert {n for n, labels in pods.items() if selects(runtime["podSelector"], labels)} == {
        n for n, labels in pods.items() if component(labels) == "runtime"
    }
    namespaces = [
        rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
        for rule in runtime["ingress"]
        if "namespaceSelector" in rule["from"][0]
    ]
    # Pods of the release that reach the runtimes, on the runtime's port alone: the
    # controller, which scrapes their /metrics itself (no Prometheus URL is set), and
    # helm test's pod, which asks one model's readiness.
    has_controller = any(component(labels) == "controller" for labels in pods.values())
    peers = [r for r in runtime["ingress"] if "podSelector" in r["from"][0]]
    assert all(peer["ports"] == [{"port": 8080, "protocol": "TCP"}] for peer in peers)
    assert {
        component(labels)
        for labels in pods.values()
        for peer in peers
        if selects(peer["from"][0]["podSelector"], labels)
    } == {"test", *(["controller"] if has_controller else [])}
    # The ingress path; and Prometheus, on the metrics port alone, where listed.
    assert namespaces[0] == (
        ["ingress-nginx"]
        if values == "raw.yaml"
        else ["knative-serving", "kourier-system", "istio-system"]
    )
    no_ingress = policies[f"{RELEASE}-no-ingress"]
    assert no_ingress["ingress"] == []
    closed = {
        component(labels) for labels in pods.values() if selects(no_ingress["podSelector"], labels)
    }
    if values == "model-cache.yaml":
        assert namespaces[1] == ["monitoring"]
        assert runtime["ingress"][1]["ports"] == [{"port": 8080, "protocol": "TCP"}]
        # Prometheus may scrape the controller too, there and on that port only.
        controller = policies[f"{RELEASE}-controller"]
        assert controller["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
        assert "controller" not in closed
    else:
        assert ("controller" in closed) == has_controller
    assert closed <= {"controller", "loader"}
    if f"{RELEASE}-redis" in policies:
        redis = policies[f"{RELEASE}-redis"]
        assert {n for n, labels in pods.items() if selects(redis["podSelector"], labels)} == {
            f"StatefulSet/{RELEASE}-redis"
        }
        allowed = {
            n
            for n, labels in pods.items()
            if any(selects(peer["podSelector"], labels) for peer in redis["ingress"][0]["from"])
        }
        assert allowed == {
            n for n, labels in pods.items() if component(labels) in ("runtime", "loader")
        }
        assert allowed


def test_the_service_monitor_renders_only_where_its_crd_is(render: Any) -> None:
    assert not by_kind(render("model-cache.yaml"), "ServiceMonitor")
    objects = render(
        "model-cache.yaml", extra=("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    )
    (monitor,) = by_kind(objects, "ServiceMonitor")
    service = named(objects, "Service", f"{RELEASE}-metrics")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The metrics Service fronts every runtime pod's :8080.
    for obj in runtimes(objects).values():
        assert selects(
            {"matchLabels": service["spec"]["selector"]},
            obj["spec"]["template"]["metadata"]["labels"],
        )
        assert obj["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"


def test_the_grafana_dashboard_queries_metrics_the_runtime_exports(render: Any) -> None:
    (configmap,) = [
        c
        for c in by_kind(render("model-cache.yaml"), "ConfigMap")
        if c["metadata"]["name"] == f"{RELEASE}-dashboard"
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kindling.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    metrics = RuntimeMetrics(ColdStartTimeline())
    exported = {m.name: m.kind for m in metrics.registry.metrics}
    for expr in exprs:
        for metric, suffix in re.findall(r"\b(kindling_[a-z_]+?)(_bucket|_sum|_count)?\{", expr):
            assert metric in exported, metric
            assert not suffix or exported[metric] == "histogram", metric


def test_notes_show_how_to_call_each_model_and_no_secret(helm: Helm) -> None:
    password = "not-a-real-password-0123"
    out = helm.run(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
        "--values", str(VALUES / "redis.yaml"), "--values", str(VALUES / "defaults.yaml"),
    ).stdout  # fmt: skip
    notes = out.split("NOTES:", 1)[1]
    assert password not in out.replace(f"redis-password: {_b64(password)}", "")
    assert password not in notes and _b64(password) not in notes
    for model in ("kim_cnn", "mobilenet_v2"):
        assert f'curl "$URL/v2/models/{model}"' in notes
        assert f"kubectl get ksvc {RELEASE}-{model.replace('_', '-')} -n {NAMESPACE}" in notes
    assert 'curl "$URL/v2/models/kim_cnn/infer"' in notes
    assert 'client.infer("mobilenet_v2", [image])' in notes
    raw = helm.run(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--dry-run=client",
        "-f",
        str(VALUES / "raw.yaml"),
    ).stdout
    assert "no scale-to-zero" in raw


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_chart_lists_the_images_its_defaults_run(render: Any) -> None:
    """Chart.yaml's `images` annotation (for mirroring) names exactly the images the
    default values run: the runtime, the controller, Redis, the loader's fetcher, and the
    GPU runtime for a gpu model."""
    listed = yaml.safe_load(
        yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"]["images"]
    )
    objects = render(
        "redis.yaml",
        sets=("models[1].name=resnet18", "models[1].gpu=true",
              "models[1].modelUri=https://models.example.com/resnet18.onnx",
              "models[1].config.inputs[0].name=x", "models[1].config.outputs[0].name=y"),
    )  # fmt: skip
    rendered = {c["image"] for o in objects for c in containers(o)}
    assert {i["image"] for i in listed} == rendered


@pytest.mark.parametrize(
    "auth",
    [("redis.auth.existingSecret=redis-auth",), ("redis.auth.password=from-my-vault-0123",)],
)
def test_a_gitops_render_is_the_same_every_time(helm: Helm, auth: tuple[str, ...]) -> None:
    """Argo CD renders with `helm template` (no cluster for `lookup`): with the Redis
    password given (a Secret of one's own, or the value), two renders are byte-identical,
    so a sync changes nothing; a password the chart makes differs per render, which is why
    the README tells Argo CD users to give one."""

    def rendered(*sets: str) -> str:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        return helm.run(*args, *[a for s in sets for a in ("--set", s)]).stdout

    redis = ("redis.enabled=true", "embeddings.externalTables={demo300,demo50}")
    assert rendered(*redis, *auth) == rendered(*redis, *auth)
    assert rendered(*redis) != rendered(*redis)


@pytest.mark.parametrize("mode", ["knative", "raw"])
def test_helm_test_asks_the_first_models_readiness(render: Any, mode: str) -> None:
    """`helm test`'s pod: a hook, the runtime image's Python, one GET of the first model's
    OIP readiness through its Service's cluster address, as non-root as the runtimes."""
    objects = render(sets=(f"serving.mode={mode}", "controller.enabled=false"))
    (pod,) = by_kind(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["command"][-1] == (
        f"http://{RELEASE}-kim-cnn.{NAMESPACE}.svc.cluster.local/v2/health/ready"
    )
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not by_kind(render(sets=("models=null",)), "Pod")


def test_per_model_scheduling_pull_policy_and_pod_labels(render: Any) -> None:
    """topologySpreadConstraints, priorityClassName and the image's pull policy per model;
    commonLabels on every pod template (the selector labels win); PodDisruptionBudgets in
    raw mode only, for the models that ask."""
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
               "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"kindling.dev/model": "resnet18"}}}]  # fmt: skip
    models = [
        {"name": "resnet18", "priorityClassName": "inference", "topologySpreadConstraints": spread,
         "image": {"pullPolicy": "Always"}, "podDisruptionBudget": {"enabled": True}},
        {"name": "minilm"},
    ]  # fmt: skip
    for mode in ("knative", "raw"):
        objects = render(
            "redis.yaml",
            sets=(f"serving.mode={mode}", "controller.enabled=false", "commonLabels.team=ml"),
            extra=("--set-json", f"models={json.dumps(models)}"),
        )
        resnet, minilm = runtimes(objects)["resnet18"], runtimes(objects)["minilm"]
        spec = resnet["spec"]["template"]["spec"]
        assert spec["priorityClassName"] == "inference"
        assert spec["topologySpreadConstraints"] == spread
        assert runtime_container(resnet)["imagePullPolicy"] == "Always"
        assert runtime_container(minilm)["imagePullPolicy"] == "IfNotPresent"
        assert "priorityClassName" not in minilm["spec"]["template"]["spec"]
        for obj in objects:
            if pod_template(obj):
                assert pod_template(obj)["metadata"]["labels"]["team"] == "ml", obj["metadata"]
        budgets = by_kind(objects, "PodDisruptionBudget")
        if mode == "raw":
            (budget,) = budgets
            assert budget["spec"]["maxUnavailable"] == 1
            assert selects(
                budget["spec"]["selector"], resnet["spec"]["template"]["metadata"]["labels"]
            )
            assert not selects(
                budget["spec"]["selector"], minilm["spec"]["template"]["metadata"]["labels"]
            )
        else:
            assert budgets == []


def test_emptydirs_are_requested_as_ephemeral_storage(render: Any) -> None:
    """The scheduler counts an emptyDir only through the pod's ephemeral-storage request:
    a pod that writes asks for its scratch volumes' limits; one that writes nothing, none."""
    objects = render("gpu.yaml")
    for model, obj in runtimes(objects).items():
        requests = runtime_container(obj)["resources"]["requests"]
        volumes = {v["name"]: v for v in obj["spec"]["template"]["spec"].get("volumes", [])}
        if "tmp" in volumes:  # 64Mi of /tmp and the 2Gi cache
            assert requests["ephemeral-storage"] == "2112Mi", model
        else:
            assert "ephemeral-storage" not in requests, model
    jobs = loader_jobs(render("redis.yaml"))
    load = {t: j["spec"]["template"]["spec"]["containers"][0] for t, j in jobs.items()}
    assert load["word2vec"]["resources"]["requests"]["ephemeral-storage"] == "8256Mi"  # + download
    assert load["glove"]["resources"]["requests"]["ephemeral-storage"] == "64Mi"  # from a PVC


def test_openshift_leaves_out_the_fixed_ids(render: Any) -> None:
    """global.openshift: no runAsUser, runAsGroup or fsGroup anywhere (its SCC assigns them);
    everything else of each securityContext stays."""
    sets = ("global.openshift=true", "serving.mode=raw", "controller.enabled=true")
    objects = render("redis.yaml", sets=sets)
    text = json.dumps(objects)
    assert all(key not in text for key in ('"runAsUser"', '"runAsGroup"', '"fsGroup"'))
    for obj in objects:
        for container in containers(obj):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["capabilities"] == {"drop": ["ALL"]}


def test_extra_ingress_and_a_restricted_egress_for_the_runtimes(render: Any) -> None:
    extra_in = [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 8080}]}]
    extra_out = [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 9000}]}]
    sets = ("networkPolicy.egress.enabled=true",)
    extra = ("--set-json", f"networkPolicy.extraIngress={json.dumps(extra_in)}",
             "--set-json", f"networkPolicy.extraEgress={json.dumps(extra_out)}")  # fmt: skip
    policy = named(
        render("redis.yaml", sets=sets, extra=extra), "NetworkPolicy", f"{RELEASE}-runtime"
    )
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"][-1] == extra_in[0]
    dns, redis, storage = spec["egress"]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert {p["port"] for p in dns["ports"]} == {53}
    assert redis["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert storage == extra_out[0]
    # By default the runtimes' egress is not restricted.
    default = named(render("redis.yaml"), "NetworkPolicy", f"{RELEASE}-runtime")["spec"]
    assert default["policyTypes"] == ["Ingress"] and "egress" not in default


def test_every_model_default_is_a_valid_key_of_a_model(helm: Helm) -> None:
    """One model schema: each modelDefaults key, with its default value, is accepted under
    models[] (values.schema.json's models refer to definitions.model)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    model = {**values["modelDefaults"], "name": "resnet18"}
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    assert helm.run(*args, "--set-json", f"models={json.dumps([model])}").returncode == 0
