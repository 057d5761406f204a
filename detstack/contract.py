"""The tensor contract between the exported graph, Triton's config.pbtxt and the client.

This module is the only place that names the served model's tensors, their Triton data types and
their shapes. Export names the ONNX graph's inputs and outputs from it, the config writer builds
``config.pbtxt`` from it and the client builds its requests from it; nothing retypes a name.

The input is **one image, uint8, CHW** (3 × height × width, RGB, any height and width): the
layout PyTorch uses, so the exported graph needs no transpose, and the dtype a decoded image file
already has, so a request is 4× smaller than float32. The graph does the scaling to float, the
model's own resize and normalisation, detection and post-processing inside.

The outputs are in the original image's pixels and the dataset's own category ids::

    boxes   FP32  N×4   x1, y1, x2, y2
    scores  FP32  N
    labels  INT64 N     dataset category ids (not training labels)

N may be 0. Example:

    >>> from detstack.contract import IMAGE, OUTPUTS
    >>> IMAGE.name, IMAGE.datatype, IMAGE.shape
    ('image', 'UINT8', (3, -1, -1))
    >>> [spec.name for spec in OUTPUTS]
    ['boxes', 'scores', 'labels']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOXES",
    "DEFAULT_MODEL_NAME",
    "IMAGE",
    "INPUTS",
    "LABELS",
    "LABEL_MAP_PARAMETER",
    "OUTPUTS",
    "SCORES",
    "TensorSpec",
]

_NUMPY_DTYPES = {
    "UINT8": np.uint8,
    "FP32": np.float32,
    "INT64": np.int64,
}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the served model; ``-1`` in ``shape`` is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype that carries this tensor on the wire."""
        return np.dtype(_NUMPY_DTYPES[self.datatype])

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """The ONNX dynamic axes of this tensor: every ``-1`` axis, named after tensor and axis."""
        return {axis: f"{self.name}_dim{axis}" for axis, size in enumerate(self.shape) if size < 0}


IMAGE = TensorSpec("image", "UINT8", (3, -1, -1))
BOXES = TensorSpec("boxes", "FP32", (-1, 4))
SCORES = TensorSpec("scores", "FP32", (-1,))
LABELS = TensorSpec("labels", "INT64", (-1,))

INPUTS: tuple[TensorSpec, ...] = (IMAGE,)
OUTPUTS: tuple[TensorSpec, ...] = (BOXES, SCORES, LABELS)

#: The seed's model name, the default everywhere a model name is asked for.
DEFAULT_MODEL_NAME = "my-detection-model"

#: Key of the config.pbtxt parameter that carries the label map of every version as JSON:
#: ``{"<version>": {"<dataset category id>": {"name": str, "color": "#rrggbb"}}}``.
#: It makes the served model self-describing: the client reads names from the model config.
LABEL_MAP_PARAMETER = "detstack_label_map"
