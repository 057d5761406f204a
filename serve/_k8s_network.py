"""How the fleet is reached: its Services and the NetworkPolicy in front of the metrics port.

``<name>`` is the public Service (HTTP and gRPC); ``<name>-pods`` is headless, so DNS answers
every pod's address for clients that spread load themselves (gRPC above all, whose one HTTP/2
connection would stay on one pod behind a ClusterIP); ``<name>-metrics`` serves port 8002 to
Prometheus only, which the NetworkPolicy enforces (metrics carry no token).

Example:
    >>> [s["metadata"]["name"] for s in services(K8sConfig("s3://m/r", model="detector"))]
    ['detector', 'detector-pods', 'detector-metrics']
"""

from __future__ import annotations

from serve._k8s_common import PORTS, Document, labels, metadata, selector
from serve._k8s_config import K8sConfig

__all__ = ["network_policy", "services"]


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


def services(config: K8sConfig) -> list[Document]:
    """The public Service (HTTP, gRPC), the headless one (every pod) and the metrics one."""
    public = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(config, config.object_name),
        "spec": {
            "type": config.service_type,
            "selector": selector(config),
            "ports": _service_ports(("http", "grpc")),
        },
    }
    pods = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(config, f"{config.object_name}-pods"),
        "spec": {
            # Headless: DNS answers every ready pod's address. A gRPC client holds one HTTP/2
            # connection, so through the ClusterIP above it would stay on one pod.
            "clusterIP": "None",
            "selector": selector(config),
            "ports": _service_ports(("http", "grpc")),
        },
    }
    metrics_labels = {**labels(config), "detstack.dev/metrics": "true"}
    metrics = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(config, f"{config.object_name}-metrics", labels=metrics_labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(config),
            "ports": _service_ports(("metrics",)),
        },
    }
    return [public, pods, metrics]


def network_policy(config: K8sConfig) -> Document:
    """HTTP and gRPC from anywhere; the metrics port from the Prometheus namespace only."""

    def ports(*names: str) -> list[Document]:
        return [{"protocol": "TCP", "port": PORTS[name]} for name in names]

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(config, config.object_name),
        "spec": {
            "podSelector": {"matchLabels": selector(config)},
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
