"""What every Kubernetes object of the fleet shares: labels, metadata, ports, the token's key.

The kinds are built in :mod:`serve._k8s_deployment`, :mod:`serve._k8s_network`,
:mod:`serve._k8s_scaling` and :mod:`serve._k8s_kserve`; :func:`serve._k8s.render_manifests`
puts them in order. Each object carries the same labels, and the selector is the subset of them
that never changes when a model or a release does.

Example:
    >>> metadata(K8sConfig("s3://models/detection", model="detector"), "detector")["name"]
    'detector'
"""

from __future__ import annotations

from typing import Any

from serve._config import TRITON_PORTS
from serve._k8s_config import K8sConfig

__all__ = [
    "GPU_RESOURCE",
    "PORTS",
    "TOKEN_KEY",
    "Document",
    "labels",
    "metadata",
    "resources",
    "selector",
]

Document = dict[str, Any]

#: Triton's ports in the pod (the same as in the container world).
PORTS = TRITON_PORTS
#: The key of the API token in its Secret.
TOKEN_KEY = "token"  # noqa: S105 - a key name
GPU_RESOURCE = "nvidia.com/gpu"


def labels(config: K8sConfig) -> dict[str, str]:
    """The labels of every object of the fleet."""
    return {
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": config.object_name,
        "app.kubernetes.io/part-of": "detstack",
        "app.kubernetes.io/managed-by": "detstack",
        "detstack.dev/model": config.model,
    }


def selector(config: K8sConfig) -> dict[str, str]:
    """The labels that pick the fleet's pods (not the model: a new model keeps the pods)."""
    return {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": config.object_name}


def metadata(config: K8sConfig, name: str, **extra: Any) -> dict[str, Any]:
    """``metadata`` of an object called ``name`` in the fleet's namespace, with its labels."""
    return {"name": name, "namespace": config.namespace, "labels": labels(config), **extra}


def resources(config: K8sConfig) -> Document:
    """A pod's requests and limits, for the Deployment and for KServe alike."""
    # Extended resources (GPUs) are set as limits; Kubernetes copies them to requests.
    # No CPU limit: a throttled CPU starves the GPU of work and adds latency.
    return {
        "requests": {"cpu": config.cpu, "memory": config.memory},
        "limits": {"memory": config.memory, GPU_RESOURCE: config.gpus},
    }
