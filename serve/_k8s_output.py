"""Rendered Kubernetes objects as YAML: one stream for ``kubectl apply -f -``, or a folder.

A folder holds one file per object, a ``kustomization.yaml`` that lists them (``kubectl apply
-k DIR``; overlays can patch them), and ``prometheus-adapter/`` with the adapter rule as a
ConfigMap and as Helm values. It is not part of the kustomization: it belongs to the adapter's
namespace and replaces an adapter's configuration, so it is applied on purpose, once per cluster.

Every file starts with :data:`MARKER`; a file without it is never overwritten.

Example:
    >>> text = to_yaml(render_manifests(K8sConfig("s3://models/repo", model="detector")))
    >>> text.startswith(MARKER)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from detstack.errors import ConfigError
from serve._k8s import adapter_config_map, adapter_values, render_manifests
from serve._k8s_config import K8sConfig
from serve._marker import ours_or_absent

__all__ = ["MARKER", "to_yaml", "write_manifests"]

#: First line of every file we write; only such files are ever overwritten.
MARKER = "# Written by `detstack deploy k8s`: re-render rather than edit (docs/scale.md)."
ADAPTER_DIR = "prometheus-adapter"


class _Dumper(yaml.SafeDumper):
    """A safe dumper that writes multi-line strings (the entrypoint script) as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)


def to_yaml(documents: Iterable[dict[str, Any]], header: str = MARKER) -> str:
    """``documents`` as one YAML stream, separated by ``---``, after a comment line."""
    body = "---\n".join(_dump(document) for document in documents)
    return f"{header}\n{body}"


def _file_name(document: dict[str, Any]) -> str:
    return f"{document['kind'].lower()}-{document['metadata']['name']}.yaml"


def _check_writable(paths: Sequence[Path]) -> None:
    for path in paths:
        if not ours_or_absent(path, MARKER):
            raise ConfigError(
                f"{path} exists and was not written by detstack deploy k8s; choose another "
                "--output folder or remove the file"
            )


def write_manifests(config: K8sConfig, directory: Path) -> list[Path]:
    """Write every object, a ``kustomization.yaml`` and the adapter rule under ``directory``.

    Nothing is written unless every target file is new or was written by detstack.

    Returns:
        The files written, kustomization first.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--output {directory} exists and is not a folder")
    documents = render_manifests(config)
    files = {directory / _file_name(document): to_yaml([document]) for document in documents}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [path.name for path in files],
    }
    contents = {directory / "kustomization.yaml": to_yaml([kustomization]), **files}
    if not config.kserve:
        adapter = directory / ADAPTER_DIR
        contents[adapter / "configmap.yaml"] = to_yaml(
            [adapter_config_map(config.prometheus_namespace)]
        )
        contents[adapter / "values.yaml"] = (
            f"{MARKER}\n# Values for the prometheus-community/prometheus-adapter Helm chart.\n"
            + _dump(adapter_values())
        )
    _check_writable(list(contents))
    for path, text in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(contents)
