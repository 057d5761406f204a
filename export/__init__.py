"""Export stage: a training checkpoint → a validated ONNX graph → a new, immutable version in a
Triton model repository, servable on GPU (NVIDIA's container) or CPU (the embedded server).

Example:
    >>> from export import ExportConfig, export_checkpoint
    >>> result = export_checkpoint(Path("runs/exp/checkpoint.pt"),
    ...                            ExportConfig(repository=Path("model_repository")))
    ...                                                          # doctest: +SKIP
    >>> print(result.version, result.version_dir)                # doctest: +SKIP
"""

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
