"""Triton python-backend model of the embedded flavour: onnxruntime in-process on model.onnx.

Export copies this file into every version directory as ``model.py``; Triton's python backend
(in the ``tritonserver`` binary that ``nvidia-pytriton`` ships) runs it. It imports only numpy,
onnxruntime and Triton's ``triton_python_backend_utils`` (never detstack), so a repository
serves from any environment that has those two packages.

* ``initialize`` opens ``<version>/model.onnx`` with onnxruntime: the CUDA execution provider
  when onnxruntime offers it and a GPU is usable, else the CPU provider (config parameter
  ``execution_provider``: ``auto``, ``cpu`` or ``cuda``; ``intra_op_thread_count``: threads per
  session, 0 = onnxruntime's choice).
* ``execute`` answers each request of a batch on its own. A bad image (wrong dtype or shape, a
  side outside ``min_image_side``..``max_image_side``, more than ``max_image_pixels``) gets a
  ``TritonError`` with code ``INVALID_ARG`` for that request only (HTTP 400, gRPC
  ``INVALID_ARGUMENT``); the other requests of the batch are answered normally.

Example (what Triton does with it):
    model = TritonPythonModel()
    model.initialize({"model_config": json_text, "model_repository": "/repo/my-model",
                      "model_version": "3", ...})
    responses = model.execute(requests)
"""

import json
import logging
import os

import numpy as np

try:  # Only inside Triton's python backend; importable elsewhere for tests of the checks.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised by the real server
    pb_utils = None

logger = logging.getLogger("detstack.triton_python_model")

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
OUTPUT_DTYPES = (np.float32, np.float32, np.int64)


def check_image(array, min_side, max_side, max_pixels):
    """Return why ``array`` is not an acceptable image tensor, or None when it is."""
    if array.dtype != np.uint8:
        return f"input '{INPUT_NAME}' must be UINT8, got {array.dtype}"
    if array.ndim != 3 or array.shape[0] != 3:
        return f"input '{INPUT_NAME}' must have shape [3, height, width], got {list(array.shape)}"
    height, width = int(array.shape[1]), int(array.shape[2])
    if min(height, width) < min_side:
        return (
            f"image of {width}x{height} pixels is too small: each side must be at least "
            f"{min_side} pixels"
        )
    if max(height, width) > max_side:
        return (
            f"image of {width}x{height} pixels is too large: each side must be at most "
            f"{max_side} pixels"
        )
    if height * width > max_pixels:
        return f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
    return None


def _parameters(model_config):
    return {
        key: value.get("string_value", "")
        for key, value in (model_config.get("parameters") or {}).items()
    }


def _providers(choice):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"execution_provider 'cuda' requested but onnxruntime offers only {available}"
        )
    if "CUDAExecutionProvider" in available:
        # onnxruntime falls back to the CPU provider (with a warning) when no GPU is usable.
        return [
            ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
            "CPUExecutionProvider",
        ]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    """The model Triton's python backend instantiates once per instance."""

    def initialize(self, args):
        import onnxruntime

        self.model_config = json.loads(args["model_config"])
        parameters = _parameters(self.model_config)
        self.min_side = int(parameters.get("min_image_side") or 16)
        self.max_side = int(parameters.get("max_image_side") or 8192)
        self.max_pixels = int(parameters.get("max_image_pixels") or 40_000_000)
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        threads = int(parameters.get("intra_op_thread_count") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        choice = (parameters.get("execution_provider") or "auto").lower()
        self.session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=_providers(choice)
        )
        logger.info(
            "loaded %s (version %s) with %s",
            path,
            args["model_version"],
            ", ".join(self.session.get_providers()),
        )

    def _error(self, message, code):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(message, code)
        )

    def _answer(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            return self._error(
                f"the request has no input '{INPUT_NAME}'", pb_utils.TritonError.INVALID_ARG
            )
        array = tensor.as_numpy()
        problem = check_image(array, self.min_side, self.max_side, self.max_pixels)
        if problem is not None:
            return self._error(problem, pb_utils.TritonError.INVALID_ARG)
        outputs = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(array)})
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
                for name, value, dtype in zip(OUTPUT_NAMES, outputs, OUTPUT_DTYPES, strict=True)
            ]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except Exception as error:  # one failing request must not fail the others
                logger.exception("inference failed")
                responses.append(
                    self._error(f"inference failed: {error}", pb_utils.TritonError.INTERNAL)
                )
        return responses

    def finalize(self):
        self.session = None
