"""``K8sConfig``: what ``detstack deploy k8s`` renders, checked once before any YAML is written.

Every name becomes part of a Kubernetes object, so each is checked against the rule Kubernetes
itself applies (DNS-1123 labels and subdomains, DNS-1035 labels for Services, label values),
and a bad one is a :class:`~detstack.errors.ConfigError` that names the value and the rule, not
a manifest the API server refuses later.

Example:
    >>> config = K8sConfig("s3://models/detection", model="my-detection-model")
    >>> config.object_name, config.autoscaled, config.min_replicas_value, config.max_replicas_value
    ('my-detection-model', True, 1, 4)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from detstack.errors import ConfigError
from serve._config import DEFAULT_IMAGE
from serve._repository import split_s3_url, triton_s3_url

__all__ = [
    "DEFAULT_S3_SECRET",
    "DEFAULT_TOKEN_SECRET",
    "MAX_NAME_LENGTH",
    "SERVICE_TYPES",
    "K8sConfig",
]

#: Secret with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and optional session/region).
DEFAULT_S3_SECRET = "detstack-s3"  # noqa: S105 - a Secret's name
#: Secret with the API token under the key ``token``.
DEFAULT_TOKEN_SECRET = "detstack-api-token"  # noqa: S105 - a Secret's name, not a secret
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
#: Derived names (``<name>-metrics``, KServe's ``<name>-predictor-...``) must stay within 63.
MAX_NAME_LENGTH = 45
_MAX_REPLICAS = 1000
_MAX_GPUS = 16

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_KSERVE_IMAGE = re.compile(r"^nvcr\.io/nvidia/tritonserver:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Kubernetes quantities, in the forms people write for CPU and memory.
_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


def check_dns1123_label(what: str, value: str) -> None:
    """Namespaces: lowercase letters, digits and '-', starting and ending alphanumeric, <= 63."""
    if not isinstance(value, str) or len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid Kubernetes name (DNS-1123 label): use at most 63 "
            "lowercase letters, digits and '-', starting and ending with a letter or digit"
        )


def check_dns1123_subdomain(what: str, value: str) -> None:
    """Secrets and ConfigMaps: dot-separated DNS-1123 labels, <= 253 characters."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 253
        or not all(_DNS1123_LABEL.match(part) for part in value.split("."))
    ):
        raise ConfigError(
            f"{what} {value!r} is not a valid Kubernetes name (DNS-1123 subdomain): use "
            "lowercase letters, digits, '-' and '.', each part starting and ending with a letter "
            "or digit, at most 253 characters"
        )


def _check_name(value: str) -> None:
    if (
        not isinstance(value, str)
        or len(value) > MAX_NAME_LENGTH
        or not _DNS1035_LABEL.match(value)
    ):
        raise ConfigError(
            f"name {value!r} is not usable for the Deployment and Services (DNS-1035 label): use "
            f"at most {MAX_NAME_LENGTH} lowercase letters, digits and '-', starting with a "
            "letter and ending with a letter or digit (the limit leaves room for derived names "
            "such as <name>-metrics)"
        )


def _check_count(what: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, got {value!r}")


def default_name(model: str) -> str:
    """The resource name derived from a model name: lowercase, '_' and '.' turned into '-'."""
    return model.lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True)
class K8sConfig:
    """A Triton fleet on Kubernetes reading one model repository on S3.

    Attributes:
        repository: ``s3://bucket/prefix`` holding the model repository (``detstack export``
            output, uploaded as is).
        model: the model every pod must serve before it counts as started (its
            ``/v2/models/<model>/ready``); a folder of the repository.
        name: name of the Deployment, Services and the rest; ``None`` derives it from ``model``.
        namespace: namespace of every object.
        image: NVIDIA's Triton image (the GPU flavour needs its onnxruntime backend).
        s3_secret: Secret holding ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (optional
            ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``).
        s3_endpoint_url: ``http(s)://host:port`` of an S3-compatible store; ``None`` for AWS.
        token_secret: Secret holding the API token under the key ``token``.
        replicas: a fixed number of pods and no autoscaler; ``None`` autoscales.
        min_replicas / max_replicas: the autoscaler's range (defaults 1 and 4); only without
            ``replicas``.
        gpus: GPUs per pod (``nvidia.com/gpu`` limit).
        cpu / memory: requests per pod (memory is also the limit).
        target_queue_ms: average time a request may wait in Triton's queue before the
            autoscaler adds a pod.
        service_type: type of the public Service (HTTP and gRPC).
        prometheus_namespace: namespace of Prometheus (the only one allowed to reach the metrics
            port) and of the Prometheus adapter (its rule's ConfigMap).
        service_monitor: also render a prometheus-operator ``ServiceMonitor``.
        kserve: render a KServe ``InferenceService`` instead of the Deployment and its objects.
        exit_timeout_s: how long in-flight requests may take to finish when a pod stops.
    """

    repository: str
    model: str
    name: str | None = None
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    s3_secret: str = DEFAULT_S3_SECRET
    s3_endpoint_url: str | None = None
    token_secret: str = DEFAULT_TOKEN_SECRET
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    target_queue_ms: float = 50.0
    service_type: str = "ClusterIP"
    prometheus_namespace: str = "monitoring"
    service_monitor: bool = False
    kserve: bool = False
    exit_timeout_s: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.repository, str) or not self.repository.startswith("s3://"):
            raise ConfigError(
                "a Kubernetes fleet reads its model repository from S3: --repository must look "
                f"like s3://bucket/prefix, got {self.repository!r} (upload a local repository "
                "first, see docs/scale.md)"
            )
        split_s3_url(self.repository)  # Triton's own bucket and path rules
        if self.s3_endpoint_url is not None:
            if self.kserve:
                raise ConfigError(
                    "with --kserve the S3 endpoint is read by KServe's storage initializer from "
                    "the annotation serving.kserve.io/s3-endpoint on the S3 Secret, not from "
                    f"--s3-endpoint-url (got {self.s3_endpoint_url!r}); see docs/scale.md"
                )
            triton_s3_url(self.repository, self.s3_endpoint_url)
        if (
            not isinstance(self.model, str)
            or len(self.model) > 63
            or not _LABEL_VALUE.match(self.model)
        ):
            raise ConfigError(
                f"model name {self.model!r} must be a Triton model folder name usable in "
                "Kubernetes labels: at most 63 letters, digits, '-', '_' and '.', starting and "
                "ending with a letter or digit"
            )
        if self.name is None:
            derived = default_name(self.model)
            try:
                _check_name(derived)
            except ConfigError:
                raise ConfigError(
                    f"cannot derive a Kubernetes name from model {self.model!r} (got "
                    f"{derived!r}); give one with --name (at most {MAX_NAME_LENGTH} lowercase "
                    "letters, digits and '-', starting with a letter)"
                ) from None
        else:
            _check_name(self.name)
        check_dns1123_label("namespace", self.namespace)
        check_dns1123_label("Prometheus namespace", self.prometheus_namespace)
        check_dns1123_subdomain("S3 Secret name", self.s3_secret)
        check_dns1123_subdomain("token Secret name", self.token_secret)
        if (
            not isinstance(self.image, str)
            or not self.image
            or any(c.isspace() for c in self.image)
        ):
            raise ConfigError(
                f"image must be an image reference such as {DEFAULT_IMAGE}, got {self.image!r}"
            )
        if self.kserve and not _KSERVE_IMAGE.match(self.image):
            raise ConfigError(
                "with --kserve the image comes from KServe's Triton serving runtime and only its "
                f"tag can be chosen: --image must look like {DEFAULT_IMAGE}, got {self.image!r}"
            )
        self._check_replicas()
        _check_count("--gpus", self.gpus, 1, _MAX_GPUS)
        if not isinstance(self.cpu, str) or not _CPU.match(self.cpu):
            raise ConfigError(f"--cpu must be a CPU quantity such as 4 or 3500m, got {self.cpu!r}")
        if not isinstance(self.memory, str) or not _MEMORY.match(self.memory):
            raise ConfigError(
                f"--memory must be a memory quantity such as 16Gi or 8000Mi, got {self.memory!r}"
            )
        target = self.target_queue_ms
        if (
            isinstance(target, bool)
            or not isinstance(target, int | float)
            or not math.isfinite(target)
            or not 0.001 <= target <= 60_000
        ):
            raise ConfigError(
                f"--target-queue-ms must be a number of milliseconds from 0.001 to 60000, "
                f"got {target!r}"
            )
        if self.service_type not in SERVICE_TYPES:
            raise ConfigError(
                f"service type must be one of {', '.join(SERVICE_TYPES)}, got {self.service_type!r}"
            )
        _check_count("exit timeout (seconds)", self.exit_timeout_s, 0, 3600)

    def _check_replicas(self) -> None:
        if self.replicas is not None:
            if self.min_replicas is not None or self.max_replicas is not None:
                raise ConfigError(
                    f"--replicas {self.replicas} fixes the number of pods (no autoscaler); "
                    "--min/--max set the autoscaler's range: give one or the other, got "
                    f"--min {self.min_replicas} --max {self.max_replicas}"
                )
            _check_count("--replicas", self.replicas, 1, _MAX_REPLICAS)
            return
        _check_count("--min", self.min_replicas_value, 1, _MAX_REPLICAS)
        _check_count("--max", self.max_replicas_value, 1, _MAX_REPLICAS)
        if self.min_replicas_value > self.max_replicas_value:
            raise ConfigError(
                f"--min {self.min_replicas_value} is more than --max {self.max_replicas_value}: "
                "the autoscaler's lower bound must not exceed its upper bound"
            )

    @property
    def object_name(self) -> str:
        """The name of the Deployment, Services and the rest: ``name``, else from ``model``."""
        return self.name if self.name is not None else default_name(self.model)

    @property
    def autoscaled(self) -> bool:
        """Whether a HorizontalPodAutoscaler sizes the fleet (no fixed ``replicas``)."""
        return self.replicas is None

    @property
    def min_replicas_value(self) -> int:
        """The autoscaler's lower bound (1 unless given)."""
        return 1 if self.min_replicas is None else self.min_replicas

    @property
    def max_replicas_value(self) -> int:
        """The autoscaler's upper bound (4 unless given)."""
        return 4 if self.max_replicas is None else self.max_replicas

    @property
    def triton_repository(self) -> str:
        """Triton's ``--model-repository`` value (with the endpoint for S3-compatible stores)."""
        return triton_s3_url(self.repository, self.s3_endpoint_url)

    @property
    def target_queue_us(self) -> int:
        """The autoscaler's target in whole microseconds (the unit of Triton's counter)."""
        return max(1, round(self.target_queue_ms * 1000))
