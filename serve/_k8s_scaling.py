"""How the fleet is sized: the autoscaler, the Prometheus pieces it reads, the disruption budget.

The ``HorizontalPodAutoscaler`` (``autoscaling/v2``) follows the average time a request waits
in Triton's queue, a per-pod metric that the Prometheus adapter serves with the rule of
:func:`adapter_rule` (as a ConfigMap, :func:`adapter_config_map`, or Helm values,
:func:`adapter_values`). A prometheus-operator ``ServiceMonitor`` is optional; the
``PodDisruptionBudget`` (``policy/v1``) lets a drain take one pod at a time.

Example:
    >>> adapter_rule()["name"]["as"] == QUEUE_METRIC
    True
"""

from __future__ import annotations

from serve._k8s_common import Document, metadata, selector
from serve._k8s_config import K8sConfig

__all__ = [
    "QUEUE_METRIC",
    "adapter_config_map",
    "adapter_rule",
    "adapter_values",
    "autoscaler",
    "disruption_budget",
    "service_monitor",
]

#: The custom metric the adapter serves and the autoscaler reads: queue microseconds per request.
QUEUE_METRIC = "triton_queue_time_per_request_us"


def autoscaler(config: K8sConfig) -> Document:
    """The ``autoscaling/v2`` autoscaler on :data:`QUEUE_METRIC`: add soon, remove slowly."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(config, config.object_name),
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


def disruption_budget(config: K8sConfig) -> Document:
    """The ``policy/v1`` budget: a node drain takes one pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(config, config.object_name),
        # maxUnavailable, not minAvailable: with one replica minAvailable 1 would block every
        # node drain; this lets a drain go on, one pod at a time.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(config)}},
    }


def service_monitor(config: K8sConfig) -> Document:
    """A prometheus-operator ``ServiceMonitor`` on the metrics Service."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(config, config.object_name),
        "spec": {
            "selector": {"matchLabels": {**selector(config), "detstack.dev/metrics": "true"}},
            "namespaceSelector": {"matchNames": [config.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


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
