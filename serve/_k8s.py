"""Kubernetes objects for a Triton fleet: plain dicts, one function per object, no templates.

What :func:`render_manifests` returns for a :class:`~serve._k8s_config.K8sConfig`:

* ``ConfigMap`` ``<name>-entrypoint``: the shell entrypoint. Triton 2.51 takes the header value
  of a restricted API only on its command line, so the pod starts ``sh entrypoint.sh``, which
  reads the token from the mounted Secret, checks it, draws the lock for disabled APIs from
  ``/dev/urandom`` and ``exec``\\ s tritonserver. The token's text is never in a manifest.
* ``Deployment``: NVIDIA's Triton image serving ``--model-repository=s3://...`` with
  ``--model-config-name=gpu`` (the GPU flavour of ``detstack export``), the same secure options
  as ``detstack serve`` (:func:`serve._triton_args.server_arguments`), probes on
  ``/v2/health/*`` (and a startup probe on ``/v2/models/<model>/ready``), GPU limits, S3
  credentials from a Secret, non-root, read-only root file system.
* ``Service`` ``<name>`` (HTTP and gRPC, the public one), ``Service`` ``<name>-pods`` (headless:
  every pod's address, for clients that spread load themselves, gRPC above all), ``Service``
  ``<name>-metrics`` (port 8002, for Prometheus only) and a ``NetworkPolicy`` that lets only the
  Prometheus namespace reach the metrics port.
* ``HorizontalPodAutoscaler`` (``autoscaling/v2``) on the average time a request waits in
  Triton's queue, served by the Prometheus adapter rule of :func:`adapter_rule`.
* ``PodDisruptionBudget`` (``policy/v1``): a drain takes one pod at a time.
* Optionally a prometheus-operator ``ServiceMonitor``; with ``kserve`` a KServe
  ``InferenceService`` (Triton runtime) and its ``ServiceAccount`` instead of all of the above.

Example:
    >>> config = K8sConfig("s3://models/detection", model="my-detection-model")
    >>> [doc["kind"] for doc in render_manifests(config)]           # doctest: +NORMALIZE_WHITESPACE
    ['ConfigMap', 'Deployment', 'Service', 'Service', 'Service', 'NetworkPolicy',
     'HorizontalPodAutoscaler', 'PodDisruptionBudget']
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from serve._config import ServeConfig
from serve._k8s_config import K8sConfig
from serve._token import MIN_TOKEN_LENGTH, ApiToken
from serve._triton_args import restriction_arguments, restriction_groups, server_arguments

__all__ = [
    "ENTRYPOINT_PATH",
    "PORTS",
    "QUEUE_METRIC",
    "TOKEN_FILE",
    "adapter_config_map",
    "adapter_rule",
    "adapter_values",
    "entrypoint_script",
    "render_manifests",
]

Document = dict[str, Any]

#: Triton's ports in the pod (the same as in the container world).
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: The custom metric the adapter serves and the autoscaler reads: queue microseconds per request.
QUEUE_METRIC = "triton_queue_time_per_request_us"
ENTRYPOINT_DIR = "/opt/detstack"
ENTRYPOINT_PATH = f"{ENTRYPOINT_DIR}/entrypoint.sh"
TOKEN_DIR = "/var/run/secrets/detstack"  # noqa: S105 - a folder
TOKEN_FILE = f"{TOKEN_DIR}/token"
#: The key of the API token in its Secret.
TOKEN_KEY = "token"  # noqa: S105 - a key name
TOKEN_FILE_ENV = "DETSTACK_API_TOKEN_FILE"  # noqa: S105 - a variable name
#: KServe's variant passes the token through this variable (Kubernetes expands ``$(NAME)``).
KSERVE_TOKEN_ENV = "DETSTACK_API_TOKEN"  # noqa: S105 - a variable name
#: The NVIDIA image runs as ``triton-server`` (uid 1000); the pod pins it and never runs as root.
_TRITON_UID = 1000
#: Seconds a stopping pod keeps serving while endpoints and load balancers forget it.
_PRESTOP_SLEEP_S = 10
_STARTUP_BUDGET_S = 600  # pulling weights from S3 and loading them on a GPU takes minutes
_GPU_RESOURCE = "nvidia.com/gpu"
_S3_VARIABLES = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", True),
    ("AWS_DEFAULT_REGION", True),
)
_GPU_CONFIG_NAME = "gpu"
# Replaced in the arguments by shell (or Kubernetes) variable references; never a real token.
_TOKEN_PLACEHOLDER = "@@DETSTACK-TOKEN@@"  # noqa: S105 - not a secret
_LOCK_PLACEHOLDER = "@@DETSTACK-LOCK@@"


def _labels(config: K8sConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": config.object_name,
        "app.kubernetes.io/part-of": "detstack",
        "app.kubernetes.io/managed-by": "detstack",
        "detstack.dev/model": config.model,
    }


def _selector(config: K8sConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": config.object_name}


def _metadata(config: K8sConfig, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": config.namespace, "labels": _labels(config), **extra}


def _placeholder_token() -> ApiToken:
    return ApiToken(_TOKEN_PLACEHOLDER, source="the Kubernetes Secret")


def _serve_config(config: K8sConfig) -> ServeConfig:
    """The serve stage's config for the pod: the same secure options as ``detstack serve``."""
    return ServeConfig(
        repository=config.repository,
        mode="container",
        token=_placeholder_token(),
        model_config_name=_GPU_CONFIG_NAME,
        exit_timeout_s=config.exit_timeout_s,
    )


def entrypoint_script(config: K8sConfig) -> str:
    """The POSIX shell script the pod runs: read and check the token, then exec tritonserver.

    The token never passes through a manifest: the script reads it from the file the Secret is
    mounted as (``$DETSTACK_API_TOKEN_FILE``), applies the rules of :class:`serve.ApiToken`
    (visible ASCII, at least ``MIN_TOKEN_LENGTH`` characters) and fails with a message that
    names the Secret.
    """
    arguments = server_arguments(
        _serve_config(config),
        repository=config.triton_repository,
        http_port=PORTS["http"],
        grpc_port=PORTS["grpc"],
        metrics_port=PORTS["metrics"],
        lock_value=_LOCK_PLACEHOLDER,
        host="0.0.0.0",
    )
    # Prometheus scrapes the pod's address, so metrics bind every address in the pod (serve
    # keeps them on loopback); the NetworkPolicy lets only the Prometheus namespace reach them.
    arguments = [
        "--metrics-address=0.0.0.0" if a.startswith("--metrics-address=") else a for a in arguments
    ]
    lines = []
    for argument in arguments:
        if _TOKEN_PLACEHOLDER in argument or _LOCK_PLACEHOLDER in argument:
            # Double quotes: the shell expands the variables; the values hold no quote or '$'
            # that could matter, since "${token}" is expanded once and never re-parsed.
            expanded = argument.replace(_TOKEN_PLACEHOLDER, "${token}").replace(
                _LOCK_PLACEHOLDER, "${lock}"
            )
            lines.append(f'  "{expanded}"')
        else:
            lines.append(f"  {shlex.quote(argument)}")
    secret = f"Secret {config.token_secret!r}, key {TOKEN_KEY!r}"
    return "\n".join(
        [
            "#!/bin/sh",
            "# Written by `detstack deploy k8s`. Starts tritonserver with the API token read from",
            "# the mounted Secret: Triton takes it only on its command line, so it is never in a",
            "# manifest. The lock on disabled APIs (shared memory) is drawn at every start.",
            "set -eu",
            "export LC_ALL=C",
            f'token_file="${{{TOKEN_FILE_ENV}:-{TOKEN_FILE}}}"',
            'if [ ! -r "$token_file" ]; then',
            f'  echo "detstack: cannot read the API token at $token_file ({secret})" >&2',
            "  exit 64",
            "fi",
            'token=$(cat "$token_file")',
            'case "$token" in',
            "  *[!!-~]*)",
            f'    echo "detstack: the API token ({secret}) may only hold visible ASCII characters'
            ' (no spaces or line breaks inside)" >&2',
            "    exit 64 ;;",
            "esac",
            f'if [ "${{#token}}" -lt {MIN_TOKEN_LENGTH} ]; then',
            f'  echo "detstack: the API token ({secret}) has ${{#token}} characters, fewer than'
            f' {MIN_TOKEN_LENGTH}" >&2',
            "  exit 64",
            "fi",
            "lock=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \\n')",
            "exec tritonserver \\",
            " \\\n".join(lines),
            "",
        ]
    )


def _entrypoint_config_map(config: K8sConfig, script: str) -> Document:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(config, f"{config.object_name}-entrypoint"),
        "data": {"entrypoint.sh": script},
    }


def _probe(path: str, period_s: int, failures: int, timeout_s: int = 5) -> Document:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    }


def _s3_env(config: K8sConfig) -> list[Document]:
    return [
        {
            "name": variable,
            "valueFrom": {
                "secretKeyRef": {
                    "name": config.s3_secret,
                    "key": variable,
                    **({"optional": True} if optional else {}),
                }
            },
        }
        for variable, optional in _S3_VARIABLES
    ]


def _resources(config: K8sConfig) -> Document:
    # Extended resources (GPUs) are set as limits; Kubernetes copies them to requests.
    # No CPU limit: a throttled CPU starves the GPU of work and adds latency.
    return {
        "requests": {"cpu": config.cpu, "memory": config.memory},
        "limits": {"memory": config.memory, _GPU_RESOURCE: config.gpus},
    }


def _container(config: K8sConfig) -> Document:
    return {
        "name": "tritonserver",
        "image": config.image,
        # args, not command: the image's own entrypoint (NVIDIA's, which sets up CUDA forward
        # compatibility on older drivers) runs first, as with `docker run` in container mode.
        "args": ["sh", ENTRYPOINT_PATH],
        "env": [*_s3_env(config), {"name": TOKEN_FILE_ENV, "value": TOKEN_FILE}],
        "ports": [
            {"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS.items()
        ],
        # The model must be loaded before the pod counts as started; liveness waits for it.
        "startupProbe": _probe(
            f"/v2/models/{config.model}/ready", 10, _STARTUP_BUDGET_S // 10, timeout_s=5
        ),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(_PRESTOP_SLEEP_S)]}}},
        "resources": _resources(config),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "entrypoint", "mountPath": ENTRYPOINT_DIR, "readOnly": True},
            {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True},
            # Triton copies an S3 repository to a local temporary folder before loading it.
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }


def _deployment(config: K8sConfig, script: str) -> Document:
    spec: Document = {}
    if not config.autoscaled:
        # With an autoscaler the field is left out, so that re-applying does not reset the size.
        spec["replicas"] = config.replicas
    spec.update(
        {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(config)},
            # A GPU is scarce: start the new pod first, stop an old one only when it is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": _labels(config),
                    "annotations": {
                        # For annotation-based Prometheus scrape configs.
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(PORTS["metrics"]),
                        "prometheus.io/path": "/metrics",
                        # A changed entrypoint rolls the pods.
                        "detstack.dev/entrypoint-sha256": hashlib.sha256(
                            script.encode("utf-8")
                        ).hexdigest(),
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": config.exit_timeout_s + _PRESTOP_SLEEP_S + 5,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": _TRITON_UID,
                        "runAsGroup": _TRITON_UID,
                        "fsGroup": _TRITON_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "tolerations": [
                        {"key": _GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [_container(config)],
                    "volumes": [
                        {
                            "name": "entrypoint",
                            "configMap": {
                                "name": f"{config.object_name}-entrypoint",
                                "defaultMode": 0o444,
                            },
                        },
                        {
                            "name": "api-token",
                            "secret": {
                                "secretName": config.token_secret,
                                "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
                                "defaultMode": 0o440,
                            },
                        },
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                    ],
                },
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(config, config.object_name),
        "spec": spec,
    }


def _service_ports(names: tuple[str, ...]) -> list[Document]:
    app_protocol = {"http": "http", "grpc": "kubernetes.io/h2c", "metrics": "http"}
    return [
        {
            "name": name,
            "port": PORTS[name],
            "targetPort": name,
            "protocol": "TCP",
            "appProtocol": app_protocol[name],
        }
        for name in names
    ]


def _services(config: K8sConfig) -> list[Document]:
    public = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(config, config.object_name),
        "spec": {
            "type": config.service_type,
            "selector": _selector(config),
            "ports": _service_ports(("http", "grpc")),
        },
    }
    pods = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(config, f"{config.object_name}-pods"),
        "spec": {
            # Headless: DNS answers every ready pod's address. A gRPC client holds one HTTP/2
            # connection, so through the ClusterIP above it would stay on one pod.
            "clusterIP": "None",
            "selector": _selector(config),
            "ports": _service_ports(("http", "grpc")),
        },
    }
    metrics_labels = {**_labels(config), "detstack.dev/metrics": "true"}
    metrics = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{config.object_name}-metrics",
            "namespace": config.namespace,
            "labels": metrics_labels,
        },
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(config),
            "ports": _service_ports(("metrics",)),
        },
    }
    return [public, pods, metrics]


def _network_policy(config: K8sConfig) -> Document:
    def ports(*names: str) -> list[Document]:
        return [{"protocol": "TCP", "port": PORTS[name]} for name in names]

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(config, config.object_name),
        "spec": {
            "podSelector": {"matchLabels": _selector(config)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": ports("http", "grpc")},
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": config.prometheus_namespace
                                }
                            }
                        }
                    ],
                    "ports": ports("metrics"),
                },
            ],
        },
    }


def _autoscaler(config: K8sConfig) -> Document:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(config, config.object_name),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": config.object_name,
            },
            "minReplicas": config.min_replicas_value,
            "maxReplicas": config.max_replicas_value,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(config.target_queue_us),
                        },
                    },
                }
            ],
            "behavior": {
                # A new GPU pod takes minutes to be ready: add soon, remove slowly.
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def _disruption_budget(config: K8sConfig) -> Document:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(config, config.object_name),
        # maxUnavailable, not minAvailable: with one replica minAvailable 1 would block every
        # node drain; this lets a drain go on, one pod at a time.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(config)}},
    }


def _service_monitor(config: K8sConfig) -> Document:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(config, config.object_name),
        "spec": {
            "selector": {"matchLabels": {**_selector(config), "detstack.dev/metrics": "true"}},
            "namespaceSelector": {"matchNames": [config.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def _kserve_arguments(config: K8sConfig) -> list[str]:
    """tritonserver options added to KServe's runtime (which sets the repository and ports).

    Kubernetes expands ``$(DETSTACK_API_TOKEN)`` in ``args`` from the container's environment,
    filled from the Secret, so the manifest names the variable only. There is no shell to draw
    a random lock, so shared memory is restricted to the token like every other API.
    """
    arguments = [
        f"--model-config-name={_GPU_CONFIG_NAME}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={config.exit_timeout_s}",
    ]
    groups = restriction_groups(_placeholder_token(), allow_shared_memory=True, lock_value="")
    return arguments + [
        argument.replace(_TOKEN_PLACEHOLDER, f"$({KSERVE_TOKEN_ENV})")
        for argument in restriction_arguments(groups)
    ]


def _kserve(config: K8sConfig) -> list[Document]:
    # Only the tag is selectable: the image itself comes from KServe's Triton serving runtime.
    tag = config.image.rpartition(":")[2]
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(config, f"{config.object_name}-s3"),
        # KServe's storage initializer takes S3 credentials from the Secrets of this account.
        "secrets": [{"name": config.s3_secret}],
    }
    model: Document = {
        "modelFormat": {"name": "triton"},
        "storageUri": config.repository,
        "runtimeVersion": tag,
        "args": _kserve_arguments(config),
        "env": [
            {
                "name": KSERVE_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": config.token_secret, "key": TOKEN_KEY}},
            }
        ],
        "resources": _resources(config),
    }
    predictor: Document = {"serviceAccountName": f"{config.object_name}-s3"}
    if config.autoscaled:
        predictor["minReplicas"] = config.min_replicas_value
        predictor["maxReplicas"] = config.max_replicas_value
    else:
        predictor["minReplicas"] = config.replicas
        predictor["maxReplicas"] = config.replicas
    predictor["model"] = model
    service = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(config, config.object_name),
        "spec": {"predictor": predictor},
    }
    return [account, service]


def render_manifests(config: K8sConfig) -> list[Document]:
    """Every Kubernetes object of the fleet, in the order ``kubectl apply`` should see them.

    Args:
        config: the checked configuration.

    Returns:
        Plain dicts, ready for ``yaml.safe_dump``; the adapter rule is separate
        (:func:`adapter_config_map`), since it belongs to the Prometheus adapter's namespace.
    """
    if config.kserve:
        return _kserve(config)
    script = entrypoint_script(config)
    documents = [
        _entrypoint_config_map(config, script),
        _deployment(config, script),
        *_services(config),
        _network_policy(config),
    ]
    if config.autoscaled:
        documents.append(_autoscaler(config))
    documents.append(_disruption_budget(config))
    if config.service_monitor:
        documents.append(_service_monitor(config))
    return documents


def adapter_rule() -> Document:
    """The Prometheus adapter rule that serves :data:`QUEUE_METRIC` per pod.

    Triton counts, per model, the microseconds requests spent queued
    (``nv_inference_queue_duration_us``) and the requests that succeeded
    (``nv_inference_request_success``). Their rates' ratio over one minute is the average queue
    time per request; summed over the pod's models it says how loaded the pod is. The divisor is
    clamped so that an idle pod reads 0 instead of NaN.
    """
    window = "1m"
    queued = f"sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>}}[{window}]))"
    served = f"sum(rate(nv_inference_request_success{{<<.LabelMatchers>>}}[{window}]))"
    return {
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
        "metricsQuery": (
            f"{queued} by (<<.GroupBy>>) / clamp_min({served} by (<<.GroupBy>>), 0.001)"
        ),
    }


def adapter_config_map(namespace: str) -> Document:
    """A complete Prometheus adapter configuration holding :func:`adapter_rule`, as a ConfigMap.

    For an adapter started with ``--config=/etc/adapter/config.yaml`` from this ConfigMap; with
    the prometheus-community Helm chart use :func:`adapter_values` instead.
    """
    import yaml

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "detstack-prometheus-adapter",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "detstack"},
        },
        "data": {"config.yaml": yaml.safe_dump({"rules": [adapter_rule()]}, sort_keys=False)},
    }


def adapter_values() -> Document:
    """Values for the prometheus-community ``prometheus-adapter`` chart adding the rule."""
    return {"rules": {"default": True, "custom": [adapter_rule()]}}
