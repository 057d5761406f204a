"""Offline validation of rendered manifests for the deploy tests.

Core and built-in API objects are checked with the Kubernetes JSON schemas bundled in the
``kubernetes-validate`` package (strict: an unknown field is an error). Custom resources have no
bundled schema, so KServe's ``InferenceService`` and prometheus-operator's ``ServiceMonitor`` are
checked against the small JSON schemas below, written from the fields of their CRDs that we use
(``additionalProperties: false`` at every level we define), and the containers inside an
InferenceService are checked as a core ``Pod`` with the Kubernetes schema.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate

#: The oldest Kubernetes release we claim (autoscaling/v2 and policy/v1 are GA well before it)
#: and the newest one whose schemas the package bundles.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


_NAME = {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

INFERENCE_SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["model"],
                    "additionalProperties": False,
                    "properties": {
                        "serviceAccountName": _NAME,
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "model": {
                            "type": "object",
                            "required": ["modelFormat", "storageUri"],
                            "additionalProperties": False,
                            "properties": {
                                "modelFormat": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string"},
                                        "version": {"type": "string"},
                                    },
                                },
                                "storageUri": {"type": "string", "pattern": "^s3://"},
                                "runtimeVersion": {"type": "string"},
                                # Container fields: checked with the Kubernetes Pod schema.
                                "args": {"type": "array", "items": {"type": "string"}},
                                "env": {"type": "array"},
                                "resources": {"type": "object"},
                            },
                        },
                    },
                }
            },
        },
    },
}

SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": _NAME}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def _inference_service_as_pod(document: dict[str, Any]) -> dict[str, Any]:
    """The predictor's container fields as a Pod, so Kubernetes' own schema checks them."""
    predictor = document["spec"]["predictor"]
    model = predictor["model"]
    container = {"name": "kserve-container", "image": "nvcr.io/nvidia/tritonserver:x"}
    container.update({key: model[key] for key in ("args", "env", "resources") if key in model})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": document["metadata"]["name"]},
        "spec": {
            "serviceAccountName": predictor.get("serviceAccountName"),
            "containers": [container],
        },
    }


def validate(document: dict[str, Any], version: str) -> None:
    """Raise a ValidationError (jsonschema or kubernetes_validate) unless ``document`` is valid."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key == ("serving.kserve.io/v1beta1", "InferenceService"):
        jsonschema.validate(document, INFERENCE_SERVICE_SCHEMA)
        kubernetes_validate.validate(_inference_service_as_pod(document), version, strict=True)
    elif key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        jsonschema.validate(document, SERVICE_MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(document, version, strict=True)
