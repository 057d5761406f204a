"""The pod of the fleet: its entrypoint script, its ConfigMap, its container and its Deployment.

Triton 2.51 takes the header value of a restricted API only on its command line, so the pod
starts ``sh entrypoint.sh`` (from a ConfigMap), which reads the token from the mounted Secret,
checks it, draws the lock for disabled APIs from ``/dev/urandom`` and ``exec``\\ s
tritonserver with the same secure options as ``detstack serve``
(:func:`serve._triton_args.server_arguments`). The Deployment runs NVIDIA's image non-root, on a
read-only root file system, with probes on ``/v2/health/*``, GPU limits and S3 credentials from
a Secret.

Example:
    >>> script = entrypoint_script(K8sConfig("s3://models/detection", model="detector"))
    >>> script.splitlines()[0]
    '#!/bin/sh'
"""

from __future__ import annotations

import hashlib

from detstack.tokens import TOKEN_ENV
from serve._config import CONTAINER_CONFIG_NAME, ServeConfig
from serve._k8s_common import (
    GPU_RESOURCE,
    PORTS,
    TOKEN_KEY,
    Document,
    labels,
    metadata,
    resources,
    selector,
)
from serve._k8s_config import K8sConfig
from serve._repository import S3_OPTIONAL_VARIABLES, S3_VARIABLES
from serve._token import MIN_TOKEN_LENGTH
from serve._triton_args import (
    LOCK_PLACEHOLDER,
    RANDOM_LOCK_SHELL,
    TOKEN_PLACEHOLDER,
    placeholder_token,
    server_arguments,
    shell_words,
)

__all__ = [
    "ENTRYPOINT_PATH",
    "TOKEN_FILE",
    "deployment",
    "entrypoint_config_map",
    "entrypoint_script",
]

ENTRYPOINT_DIR = "/opt/detstack"
ENTRYPOINT_PATH = f"{ENTRYPOINT_DIR}/entrypoint.sh"
TOKEN_DIR = "/var/run/secrets/detstack"  # noqa: S105 - a folder
TOKEN_FILE = f"{TOKEN_DIR}/token"
#: The variable that names the token file (the entrypoint reads ``TOKEN_FILE`` without it).
TOKEN_FILE_ENV = f"{TOKEN_ENV}_FILE"
#: The NVIDIA image runs as ``triton-server`` (uid 1000); the pod pins it and never runs as root.
_TRITON_UID = 1000
#: Seconds a stopping pod keeps serving while endpoints and load balancers forget it.
_PRESTOP_SLEEP_S = 10
_STARTUP_BUDGET_S = 600  # pulling weights from S3 and loading them on a GPU takes minutes


def _serve_config(config: K8sConfig) -> ServeConfig:
    """The serve stage's config for the pod: the same secure options as ``detstack serve``."""
    return ServeConfig(
        repository=config.repository,
        mode="container",
        token=placeholder_token(),
        model_config_name=CONTAINER_CONFIG_NAME,
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
        lock_value=LOCK_PLACEHOLDER,
        host="0.0.0.0",
    )
    # Prometheus scrapes the pod's address, so metrics bind every address in the pod (serve
    # keeps them on loopback); the NetworkPolicy lets only the Prometheus namespace reach them.
    arguments = [
        "--metrics-address=0.0.0.0" if a.startswith("--metrics-address=") else a for a in arguments
    ]
    # The shell expands the variables; "${token}" is expanded once and never re-parsed.
    words = shell_words(arguments, {TOKEN_PLACEHOLDER: "${token}", LOCK_PLACEHOLDER: "${lock}"})
    lines = [f"  {word}" for word in words]
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
            f"lock=$({RANDOM_LOCK_SHELL})",
            "exec tritonserver \\",
            " \\\n".join(lines),
            "",
        ]
    )


def entrypoint_config_map(config: K8sConfig, script: str) -> Document:
    """The ConfigMap ``<name>-entrypoint`` holding :func:`entrypoint_script`'s ``script``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(config, f"{config.object_name}-entrypoint"),
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
                    **({"optional": True} if variable in S3_OPTIONAL_VARIABLES else {}),
                }
            },
        }
        for variable in S3_VARIABLES
    ]


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
        "resources": resources(config),
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


def deployment(config: K8sConfig, script: str) -> Document:
    """The Deployment of the Triton pods; ``script``'s hash rolls them when it changes."""
    spec: Document = {}
    if not config.autoscaled:
        # With an autoscaler the field is left out, so that re-applying does not reset the size.
        spec["replicas"] = config.replicas
    spec.update(
        {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(config)},
            # A GPU is scarce: start the new pod first, stop an old one only when it is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(config),
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
                        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
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
        "metadata": metadata(config, config.object_name),
        "spec": spec,
    }
