"""Export stage: a training checkpoint → a validated ONNX graph → a new, immutable version in a
Triton model repository, servable on GPU (NVIDIA's container) or CPU (the embedded server).

Example:
    >>> from export import ExportConfig, export_checkpoint
    >>> result = export_checkpoint(Path("runs/exp/checkpoint.pt"),
    ...                            ExportConfig(repository=Path("model_repository")))
    ...                                                          # doctest: +SKIP
    >>> print(result.version, result.version_dir)                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.adapter import DetectionAdapter, adapter_from_checkpoint
    from export.exporter import ExportConfig, ExportResult, export_checkpoint
    from export.triton_config import ConfigOptions

__all__ = [
    "ConfigOptions",
    "DetectionAdapter",
    "ExportConfig",
    "ExportResult",
    "adapter_from_checkpoint",
    "export_checkpoint",
]

# Resolved on first use (PEP 562): importing this package (as `detstack --help` does through
# the CLI registry) must not pay for importing torch.
_HOMES = {
    "ConfigOptions": "export.triton_config",
    "DetectionAdapter": "export.adapter",
    "ExportConfig": "export.exporter",
    "ExportResult": "export.exporter",
    "adapter_from_checkpoint": "export.adapter",
    "export_checkpoint": "export.exporter",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
