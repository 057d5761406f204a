"""KServe instead of the Deployment: an ``InferenceService`` on its Triton runtime.

KServe's runtime sets the repository (copied from S3 by its storage initializer, with the
credentials of a ServiceAccount's Secret) and the ports; we add the same secure options as
``detstack serve``. With no shell in between, the token reaches Triton through
``$(DETSTACK_API_TOKEN)``, which Kubernetes expands from the container's environment, filled
from the Secret.

Example:
    >>> [d["kind"] for d in kserve(K8sConfig("s3://m/r", model="detector", kserve=True))]
    ['ServiceAccount', 'InferenceService']
"""

from __future__ import annotations

from detstack.tokens import TOKEN_ENV
from serve._config import CONTAINER_CONFIG_NAME
from serve._k8s_common import TOKEN_KEY, Document, metadata, resources
from serve._k8s_config import K8sConfig
from serve._triton_args import (
    TOKEN_PLACEHOLDER,
    placeholder_token,
    restriction_arguments,
    restriction_groups,
)

__all__ = ["KSERVE_TOKEN_ENV", "kserve"]

#: KServe's variant passes the token through this variable (Kubernetes expands ``$(NAME)``).
KSERVE_TOKEN_ENV = TOKEN_ENV


def _kserve_arguments(config: K8sConfig) -> list[str]:
    """tritonserver options added to KServe's runtime (which sets the repository and ports).

    Kubernetes expands ``$(DETSTACK_API_TOKEN)`` in ``args`` from the container's environment,
    filled from the Secret, so the manifest names the variable only. There is no shell to draw
    a random lock, so shared memory is restricted to the token like every other API.
    """
    arguments = [
        f"--model-config-name={CONTAINER_CONFIG_NAME}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={config.exit_timeout_s}",
    ]
    groups = restriction_groups(placeholder_token(), allow_shared_memory=True, lock_value="")
    return arguments + [
        argument.replace(TOKEN_PLACEHOLDER, f"$({KSERVE_TOKEN_ENV})")
        for argument in restriction_arguments(groups)
    ]


def kserve(config: K8sConfig) -> list[Document]:
    """The ``InferenceService`` on KServe's Triton runtime, and the account that reads S3."""
    # Only the tag is selectable: the image itself comes from KServe's Triton serving runtime.
    tag = config.image.rpartition(":")[2]
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(config, f"{config.object_name}-s3"),
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
        "resources": resources(config),
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
        "metadata": metadata(config, config.object_name),
        "spec": {"predictor": predictor},
    }
    return [account, service]
