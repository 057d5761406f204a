"""detstack: COCO dataset → fine-tuned Faster R-CNN → ONNX → Triton → DataFrame client.

This package holds what every stage shares (the error hierarchy, the tensor contract, the image
loader) and the ``detstack`` command line. The stages themselves live in the top-level packages
``training``, ``export``, ``serve`` and ``client``.
"""

__version__ = "0.1.0"
