"""The tensor contract between the exported graph, Triton's config.pbtxt and the client.

This module is the only place that names the served model's tensors, their Triton data types and
their shapes. Export names the ONNX graph's inputs and outputs from it, the config writer builds
``config.pbtxt`` from it and the client builds its requests from it; nothing retypes a name.

The **served model** takes one of two inputs per request (both optional in its config, exactly
one given):

* ``image_bytes``: BYTES, one element: the image *file* (raw bytes, or the seed's base64 text,
  see :mod:`detstack.wire`). The server decodes it with the one image policy
  (:mod:`detstack.images`), at the smallest JPEG DCT scale that still covers the model's working
  size. This is what travels by default: about the file's size, not the pixels'.
* ``image``: uint8, CHW (3 × height × width, RGB, any size), for callers that already hold
  decoded frames (video, numpy pipelines).

The **ONNX graph** takes only ``image`` (:data:`GRAPH_INPUTS`): the layout PyTorch uses, so it
needs no transpose, and the dtype a decoded file already has. The graph does the scaling to float,
the model's own resize and normalisation, detection and post-processing inside.

The outputs are in the original image's pixels and the dataset's own category ids::

    boxes   FP32  N×4   x1, y1, x2, y2
    scores  FP32  N
    labels  INT64 N     dataset category ids (not training labels)

N may be 0. Example:

    >>> from detstack.contract import IMAGE, OUTPUTS
    >>> IMAGE.name, IMAGE.datatype, IMAGE.shape
    ('image', 'UINT8', (3, -1, -1))
    >>> [spec.name for spec in SERVED_INPUTS]
    ['image_bytes', 'image']
    >>> [spec.name for spec in OUTPUTS]
    ['boxes', 'scores', 'labels']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BATCHED_IMAGE",
    "BOXES",
    "DEFAULT_MODEL_NAME",
    "GPU_DECODE_PART_PARAMETER",
    "GPU_DECODE_SUFFIXES",
    "GRAPH_INPUTS",
    "IMAGE",
    "IMAGE_BYTES",
    "IMAGE_FILE",
    "LABELS",
    "LABEL_MAP_PARAMETER",
    "OUTPUTS",
    "PIXELS_MODEL_PARAMETER",
    "RESIZE_PARAMETER",
    "SCORES",
    "SERVED_INPUTS",
    "TensorSpec",
    "gpu_decode_model_names",
]

_NUMPY_DTYPES = {
    "UINT8": np.uint8,
    "FP32": np.float32,
    "INT64": np.int64,
    "BYTES": np.object_,
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
    def config_type(self) -> str:
        """The ``data_type`` name in ``config.pbtxt`` (Triton calls BYTES ``TYPE_STRING`` there)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """The ONNX dynamic axes of this tensor: every ``-1`` axis, named after tensor and axis."""
        return {axis: f"{self.name}_dim{axis}" for axis, size in enumerate(self.shape) if size < 0}


IMAGE = TensorSpec("image", "UINT8", (3, -1, -1))
IMAGE_BYTES = TensorSpec("image_bytes", "BYTES", (1,))
BOXES = TensorSpec("boxes", "FP32", (-1, 4))
SCORES = TensorSpec("scores", "FP32", (-1,))
LABELS = TensorSpec("labels", "INT64", (-1,))

#: What the ONNX graph takes.
GRAPH_INPUTS: tuple[TensorSpec, ...] = (IMAGE,)
#: What the served model takes: each optional, exactly one per request (encoded first).
SERVED_INPUTS: tuple[TensorSpec, ...] = (IMAGE_BYTES, IMAGE)
OUTPUTS: tuple[TensorSpec, ...] = (BOXES, SCORES, LABELS)

#: The seed's model name, the default everywhere a model name is asked for.
DEFAULT_MODEL_NAME = "my-detection-model"

#: Key of the config.pbtxt parameter that carries the label map of every version as JSON:
#: ``{"<version>": {"<dataset category id>": {"name": str, "color": "#rrggbb"}}}``.
#: It makes the served model self-describing: the client reads names from the model config.
LABEL_MAP_PARAMETER = "detstack_label_map"

#: Key of the config.pbtxt parameter with each version's resize (what the server decodes to):
#: ``{"<version>": {"min_size": int, "max_size": int}}``.
RESIZE_PARAMETER = "detstack_resize"

#: Key of the config.pbtxt parameter naming the model that takes ``image`` pixels, when the
#: model itself takes only ``image_bytes`` (the GPU flavour's DALI ensemble); absent when the
#: model takes both.
PIXELS_MODEL_PARAMETER = "detstack_pixels_model"

# --- The GPU flavour's decode-on-GPU ensemble (export --gpu-decode) --------------------------
# `<name>` (GPU flavour) is then an ensemble: `<name>-gate` (python, CPU: base64 or raw bytes,
# format allow-list, size limit) -> `<name>-decode` (DALI, nvJPEG) -> `<name>-detector`
# (onnxruntime on the GPU). DALI models with max_batch_size 0 take and give tensors whose first
# dimension is DALI's batch, so the file and the decoded image travel with a leading 1.

#: The image file as the gate hands it to DALI: one row of bytes.
IMAGE_FILE = TensorSpec("image_file", "UINT8", (1, -1))
#: The decoded image as DALI gives it (CHW with DALI's batch of one in front); the detector
#: sibling reshapes it to :data:`IMAGE` for the graph. Pixel clients of the detector send this.
BATCHED_IMAGE = TensorSpec("image", "UINT8", (1, 3, -1, -1))

#: Suffixes of the sibling models of ``<name>`` (same repository): gate, decode, detector.
GPU_DECODE_SUFFIXES: tuple[str, str, str] = ("-gate", "-decode", "-detector")

#: Key of the config.pbtxt parameter that marks a sibling model and names the model it belongs
#: to; such a model has only the GPU flavour, and ``detstack serve`` (embedded) leaves it out.
GPU_DECODE_PART_PARAMETER = "detstack_part_of"


def gpu_decode_model_names(name: str) -> tuple[str, str, str]:
    """``(gate, decode, detector)`` model names of model ``name``'s decode-on-GPU ensemble."""
    gate, decode, detector = (f"{name}{suffix}" for suffix in GPU_DECODE_SUFFIXES)
    return gate, decode, detector
