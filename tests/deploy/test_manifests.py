"""The rendered Kubernetes manifests: valid against bundled schemas, secure, and as documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from serve._k8s import (
    PORTS,
    QUEUE_METRIC,
    adapter_config_map,
    adapter_rule,
    adapter_values,
    render_manifests,
)
from serve._k8s_config import K8sConfig
from serve._k8s_output import MARKER, to_yaml, write_manifests
from tests.deploy._schemas import KUBERNETES_VERSIONS, validate

REPOSITORY = "s3://my-bucket/model_repository"
MODEL = "my-detection-model"
BASE = K8sConfig(REPOSITORY, model=MODEL)
VARIANTS = {
    "autoscaled": BASE,
    "fixed-size": dataclasses.replace(BASE, replicas=3),
    "minio-and-monitor": dataclasses.replace(
        BASE,
        s3_endpoint_url="http://minio.storage.svc:9000",
        service_monitor=True,
        namespace="vision",
        min_replicas=2,
        max_replicas=8,
        gpus=2,
        service_type="LoadBalancer",
    ),
    "kserve": dataclasses.replace(BASE, kserve=True),
    "kserve-fixed": dataclasses.replace(BASE, kserve=True, replicas=2),
}
ROOT = Path(__file__).resolve().parents[2]


def _by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [document for document in documents if document["kind"] == kind]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_document_validates_against_the_kubernetes_schemas(variant, version):
    documents = render_manifests(VARIANTS[variant])
    assert documents
    for document in documents:
        validate(document, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_prometheus_adapter_config_map_validates_and_holds_the_rule(version):
    config_map = adapter_config_map("monitoring")
    validate(config_map, version)
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config == {"rules": [adapter_rule()]}
    assert adapter_values()["rules"]["custom"] == [adapter_rule()]


def test_the_yaml_stream_parses_back_to_the_same_documents():
    documents = render_manifests(VARIANTS["minio-and-monitor"])
    text = to_yaml(documents)
    assert text.startswith(MARKER + "\n")
    assert list(yaml.safe_load_all(text)) == documents
    # The entrypoint is a readable block, not one quoted line.
    assert "entrypoint.sh: |" in text


def test_the_autoscaler_is_autoscaling_v2_on_the_average_queue_time_per_request():
    config = dataclasses.replace(BASE, min_replicas=2, max_replicas=6, target_queue_ms=25)
    (hpa,) = _by_kind(render_manifests(config), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": MODEL,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == QUEUE_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "25000"}


def test_the_adapter_rule_divides_queue_time_by_successful_requests_per_pod():
    rule = adapter_rule()
    assert rule["name"]["as"] == QUEUE_METRIC
    query = rule["metricsQuery"]
    queued, _, served = query.partition(" / ")
    assert "rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}" in queued
    assert "rate(nv_inference_request_success{<<.LabelMatchers>>}" in served
    assert "clamp_min(" in served  # an idle pod reads 0, not NaN
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_a_fixed_size_fleet_has_replicas_and_no_autoscaler():
    documents = render_manifests(VARIANTS["fixed-size"])
    assert not _by_kind(documents, "HorizontalPodAutoscaler")
    (deployment,) = _by_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 3


def test_an_autoscaled_deployment_leaves_replicas_to_the_autoscaler():
    (deployment,) = _by_kind(render_manifests(BASE), "Deployment")
    assert "replicas" not in deployment["spec"]


def test_the_metrics_port_is_not_on_the_public_or_headless_service():
    services = {s["metadata"]["name"]: s for s in _by_kind(render_manifests(BASE), "Service")}
    assert set(services) == {MODEL, f"{MODEL}-pods", f"{MODEL}-metrics"}
    for name in (MODEL, f"{MODEL}-pods"):
        ports = services[name]["spec"]["ports"]
        assert {p["name"] for p in ports} == {"http", "grpc"}
        assert PORTS["metrics"] not in {p["port"] for p in ports}
        assert "metrics" not in {p["targetPort"] for p in ports}
    assert services[f"{MODEL}-pods"]["spec"]["clusterIP"] == "None"
    (metrics_port,) = services[f"{MODEL}-metrics"]["spec"]["ports"]
    assert metrics_port["port"] == PORTS["metrics"]
    assert services[f"{MODEL}-metrics"]["spec"]["type"] == "ClusterIP"


def test_the_network_policy_lets_only_the_prometheus_namespace_reach_the_metrics_port():
    config = dataclasses.replace(BASE, prometheus_namespace="observability")
    (policy,) = _by_kind(render_manifests(config), "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    open_rules = [rule for rule in rules if "from" not in rule]
    assert {p["port"] for rule in open_rules for p in rule["ports"]} == {8000, 8001}
    (metrics_rule,) = [
        rule for rule in rules if PORTS["metrics"] in {p["port"] for p in rule["ports"]}
    ]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}
    ]


def test_the_deployment_probes_health_and_limits_gpus():
    config = dataclasses.replace(BASE, gpus=2, cpu="6", memory="24Gi")
    (deployment,) = _by_kind(render_manifests(config), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # NVIDIA's image entrypoint stays in place and starts our script.
    assert "command" not in container
    assert container["args"] == ["sh", "/opt/detstack/entrypoint.sh"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == f"/v2/models/{MODEL}/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"] == {"cpu": "6", "memory": "24Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # In-flight requests get the exit timeout after the pre-stop pause.
    assert pod["terminationGracePeriodSeconds"] > config.exit_timeout_s


def test_s3_credentials_and_the_token_come_from_secrets_by_reference():
    config = dataclasses.replace(BASE, s3_secret="aws-creds", token_secret="triton-token")
    documents = render_manifests(config)
    (deployment,) = _by_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "aws-creds", "key": variable}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-token"]["secret"]["secretName"] == "triton-token"
    (config_map,) = _by_kind(documents, "ConfigMap")
    assert "triton-token" in config_map["data"]["entrypoint.sh"]  # named in its error message


def test_the_deployment_serves_the_gpu_flavour_from_s3_with_triton_reading_the_endpoint():
    documents = render_manifests(VARIANTS["minio-and-monitor"])
    (config_map,) = _by_kind(documents, "ConfigMap")
    script = config_map["data"]["entrypoint.sh"]
    assert (
        "--model-repository=s3://http://minio.storage.svc:9000/my-bucket/model_repository" in script
    )
    assert "--model-config-name=gpu" in script
    assert "--model-control-mode=none" in script


def test_the_pod_template_changes_when_the_entrypoint_changes():
    def annotation(config: K8sConfig) -> str:
        (deployment,) = _by_kind(render_manifests(config), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"][
            "detstack.dev/entrypoint-sha256"
        ]

    assert annotation(BASE) != annotation(dataclasses.replace(BASE, exit_timeout_s=60))


def test_the_disruption_budget_is_policy_v1_and_lets_a_drain_proceed():
    (budget,) = _by_kind(render_manifests(BASE), "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["maxUnavailable"] == 1


def test_the_kserve_variant_is_an_inference_service_on_the_triton_runtime():
    documents = render_manifests(VARIANTS["kserve"])
    assert {d["kind"] for d in documents} == {"InferenceService", "ServiceAccount"}
    (service,) = _by_kind(documents, "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["storageUri"] == REPOSITORY
    assert model["runtimeVersion"] == "24.10-py3"
    assert "--model-config-name=gpu" in model["args"]
    restricted = [a for a in model["args"] if a.startswith("--http-restricted-api=")]
    assert restricted == [
        "--http-restricted-api=inference,metadata,model-config,model-repository,statistics,"
        "trace,logging,shared-memory:authorization=Bearer $(DETSTACK_API_TOKEN)"
    ]
    (token_env,) = model["env"]
    assert token_env["valueFrom"]["secretKeyRef"] == {"name": "detstack-api-token", "key": "token"}
    (account,) = _by_kind(documents, "ServiceAccount")
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    assert account["secrets"] == [{"name": "detstack-s3"}]


def test_the_service_monitor_selects_only_the_metrics_service():
    documents = render_manifests(VARIANTS["minio-and-monitor"])
    (monitor,) = _by_kind(documents, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    matching = [
        s["metadata"]["name"]
        for s in _by_kind(documents, "Service")
        if wanted.items() <= s["metadata"]["labels"].items()
    ]
    assert matching == [f"{MODEL}-metrics"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(
    ("folder", "config"),
    [
        ("triton", dataclasses.replace(BASE, namespace="detstack")),
        ("kserve", dataclasses.replace(BASE, namespace="detstack", kserve=True)),
    ],
)
def test_the_committed_example_in_deploy_is_exactly_what_the_renderer_writes(
    tmp_path, folder, config
):
    written = write_manifests(config, tmp_path)
    committed = ROOT / "deploy" / "k8s" / folder
    expected = {p.relative_to(tmp_path): p.read_text(encoding="utf-8") for p in written}
    found = {
        p.relative_to(committed): p.read_text(encoding="utf-8") for p in committed.rglob("*.yaml")
    }
    assert found == expected, (
        f"deploy/k8s/{folder} is stale: re-render it with the command in deploy/README.md"
    )


def test_the_validators_reject_an_unknown_field_an_old_api_version_and_a_bad_custom_resource():
    import jsonschema
    import kubernetes_validate

    (budget,) = _by_kind(render_manifests(BASE), "PodDisruptionBudget")
    typo = {**budget, "spec": {**budget["spec"], "maxUnavailabel": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo, KUBERNETES_VERSIONS[-1])
    (hpa,) = _by_kind(render_manifests(BASE), "HorizontalPodAutoscaler")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({**hpa, "apiVersion": "autoscaling/v2beta2"}, KUBERNETES_VERSIONS[-1])
    (service,) = _by_kind(render_manifests(VARIANTS["kserve"]), "InferenceService")
    predictor = service["spec"]["predictor"]
    misspelt = {**service, "spec": {"predictor": {**predictor, "modle": predictor["model"]}}}
    with pytest.raises(jsonschema.ValidationError):
        validate(misspelt, KUBERNETES_VERSIONS[-1])
    bad_env = dict(predictor["model"], env=[{"name": "X", "valueFrom": {"secretRef": {}}}])
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(
            {**service, "spec": {"predictor": {**predictor, "model": bad_env}}},
            KUBERNETES_VERSIONS[-1],
        )


def test_object_names_follow_the_model_unless_a_name_is_given():
    other = dataclasses.replace(BASE, model="Parcels_v2.onnx")
    assert {d["metadata"]["name"] for d in render_manifests(other)} >= {"parcels-v2-onnx"}
    named = dataclasses.replace(other, name="fleet")
    names = {d["metadata"]["name"] for d in render_manifests(named)}
    assert names == {"fleet", "fleet-entrypoint", "fleet-pods", "fleet-metrics"}
