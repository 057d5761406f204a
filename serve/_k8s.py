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

One module per part builds them: :mod:`serve._k8s_deployment` (entrypoint, pod, Deployment),
:mod:`serve._k8s_network` (Services, NetworkPolicy), :mod:`serve._k8s_scaling` (autoscaler,
Prometheus adapter rule, ServiceMonitor, disruption budget), :mod:`serve._k8s_kserve`, on the
labels and metadata of :mod:`serve._k8s_common`. This module puts them in order.

Example:
    >>> config = K8sConfig("s3://models/detection", model="my-detection-model")
    >>> [doc["kind"] for doc in render_manifests(config)]           # doctest: +NORMALIZE_WHITESPACE
    ['ConfigMap', 'Deployment', 'Service', 'Service', 'Service', 'NetworkPolicy',
     'HorizontalPodAutoscaler', 'PodDisruptionBudget']
"""

from __future__ import annotations

from serve._k8s_common import PORTS, Document
from serve._k8s_config import K8sConfig
from serve._k8s_deployment import (
    ENTRYPOINT_PATH,
    TOKEN_FILE,
    deployment,
    entrypoint_config_map,
    entrypoint_script,
)
from serve._k8s_kserve import kserve
from serve._k8s_network import network_policy, services
from serve._k8s_scaling import (
    QUEUE_METRIC,
    adapter_config_map,
    adapter_rule,
    adapter_values,
    autoscaler,
    disruption_budget,
    service_monitor,
)

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


def render_manifests(config: K8sConfig) -> list[Document]:
    """Every Kubernetes object of the fleet, in the order ``kubectl apply`` should see them.

    Args:
        config: the checked configuration.

    Returns:
        Plain dicts, ready for ``yaml.safe_dump``; the adapter rule is separate
        (:func:`adapter_config_map`), since it belongs to the Prometheus adapter's namespace.
    """
    if config.kserve:
        return kserve(config)
    script = entrypoint_script(config)
    documents = [
        entrypoint_config_map(config, script),
        deployment(config, script),
        *services(config),
        network_policy(config),
    ]
    if config.autoscaled:
        documents.append(autoscaler(config))
    documents.append(disruption_budget(config))
    if config.service_monitor:
        documents.append(service_monitor(config))
    return documents
