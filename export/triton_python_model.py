"""Triton python-backend model of the embedded flavour: decode, detect, answer in file pixels.

Export copies this file into every version directory as ``model.py``; Triton's python backend
(in the ``tritonserver`` binary that ``nvidia-pytriton`` ships) runs it, with the environment
``detstack serve`` prepares (numpy, onnxruntime, Pillow and detstack's image policy).

Each request carries exactly one of the two inputs of :mod:`detstack.contract`:

* ``image_bytes`` (BYTES, one element): an image file, raw or base64 text
  (:mod:`detstack.wire`). It is decoded with the one image policy (:mod:`detstack.images`:
  formats allow-list, pixel limit before decoding, EXIF orientation, colour modes, truncated
  files refused). With ``draft_decode`` on, a JPEG decodes at the smallest DCT scale that still
  covers ``draft_margin`` times the version's working size (config parameter
  ``detstack_resize``); boxes are always answered in the original image's pixels.
* ``image`` (UINT8 ``[3, H, W]``): decoded pixels, checked against ``min_image_side``,
  ``max_image_side`` and ``max_image_pixels``.

Either way, an image the detector would shrink is first resized here to the version's working
size as the graph's own (torchvision) resize would do it, reading only the rows and columns
bilinear interpolation needs, and handed over as 2×2 blocks that the graph's resize halves
back (:func:`detstack.images.resize_for_graph`: within 1/8 grey level of eager PyTorch), so
the graph normalises tens of thousands of pixels instead of millions; boxes are scaled back to
the image the client sent. Config parameter ``server_resize`` ``"0"`` leaves the resize to the
graph.

A bad request gets a ``TritonError`` with code ``INVALID_ARG`` and the reason, for that request
only (HTTP 400, gRPC ``INVALID_ARGUMENT``). :class:`DetectorRuntime` holds everything but the
Triton glue, so export's accuracy check and the tests run exactly what the server runs.

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

try:  # Only inside Triton's python backend; importable elsewhere for tests and export checks.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised by the real server
    pb_utils = None

logger = logging.getLogger("detstack.triton_python_model")

INPUT_NAME = "image"
BYTES_INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("boxes", "scores", "labels")
OUTPUT_DTYPES = (np.float32, np.float32, np.int64)
RESIZE_PARAMETER = "detstack_resize"


class RequestError(Exception):
    """A request the model cannot answer because of its input (answered with INVALID_ARG)."""


def check_size(width, height, min_side, max_side, max_pixels):
    """Return why a ``width×height`` image is not acceptable, or None when it is."""
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


def check_image(array, min_side, max_side, max_pixels):
    """Return why ``array`` is not an acceptable image tensor, or None when it is."""
    if array.dtype != np.uint8:
        return f"input '{INPUT_NAME}' must be UINT8, got {array.dtype}"
    if array.ndim != 3 or array.shape[0] != 3:
        return f"input '{INPUT_NAME}' must have shape [3, height, width], got {list(array.shape)}"
    return check_size(int(array.shape[2]), int(array.shape[1]), min_side, max_side, max_pixels)


def scale_boxes(outputs, original, working):
    """``outputs`` with boxes found on a ``working`` ``(w, h)`` image put in ``original`` pixels.

    The same per-axis ratio ``original / working`` in float32 that torchvision's
    ``resize_boxes`` multiplies by, then clipped to the original image.
    """
    boxes, scores, labels = outputs
    if tuple(original) == tuple(working):
        return boxes, scores, labels
    ratio = np.asarray(original, np.float32) / np.asarray(working, np.float32)
    boxes = boxes * np.concatenate([ratio, ratio])
    limit = np.asarray([*original, *original], np.float32)
    return np.minimum(boxes, limit).astype(np.float32, copy=False), scores, labels


class DetectorRuntime:
    """One ONNX session and the policy around it: what a served request goes through.

    Args:
        session: an onnxruntime ``InferenceSession`` of the exported graph.
        min_size, max_size: the detector's own resize (decode no smaller than that).
        min_side, max_side, max_pixels: what an image may be.
        draft: decode JPEGs at a reduced DCT scale (see :func:`detstack.images.decode_for_model`).
        draft_margin: the reduced scale still covers this many times the working size.
        resize: shrink images to the working size before the graph
            (:func:`detstack.images.server_working_size`); needs ``min_size``/``max_size``.
    """

    def __init__(
        self,
        session,
        *,
        min_size,
        max_size,
        min_side,
        max_side,
        max_pixels,
        draft=False,
        draft_margin=2.0,
        resize=True,
    ):
        self.session = session
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.min_side = int(min_side)
        self.max_side = int(max_side)
        self.max_pixels = int(max_pixels)
        self.draft = bool(draft)
        self.draft_margin = float(draft_margin)
        self.resize = bool(resize) and self.min_size > 0 and self.max_size > 0

    def detect_pixels(self, array):
        """``(boxes, scores, labels)`` of a uint8 CHW array, in its pixels."""
        from detstack.resize import resize_for_graph, server_working_size

        problem = check_image(array, self.min_side, self.max_side, self.max_pixels)
        if problem is not None:
            raise RequestError(problem)
        height, width = int(array.shape[1]), int(array.shape[2])
        size = None
        if self.resize:
            size = server_working_size(width, height, self.min_size, self.max_size)
        if size is None:
            return self._run(array)
        working = resize_for_graph(array, size, channels_first=True)
        return scale_boxes(
            self._run(working), (width, height), (working.shape[2], working.shape[1])
        )

    def _run(self, chw):
        """The graph's three outputs for a uint8 CHW array, as contiguous contract dtypes."""
        outputs = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(chw)})
        return tuple(
            np.ascontiguousarray(value, dtype=dtype)
            for value, dtype in zip(outputs, OUTPUT_DTYPES, strict=True)
        )

    def decode(self, payload, source="image"):
        """The :class:`~detstack.images.WorkingImage` of one ``image_bytes`` element."""
        from detstack.errors import DetstackError
        from detstack.images import decode_for_model
        from detstack.wire import image_file_bytes

        try:
            data = image_file_bytes(payload)
            return decode_for_model(
                data,
                min_size=self.min_size,
                max_size=self.max_size,
                source=source,
                max_pixels=self.max_pixels,
                draft=self.draft,
                margin=self.draft_margin,
                resize=self.resize,
            )
        except DetstackError as error:
            raise RequestError(str(error)) from None

    def detect_encoded(self, payload, source="image"):
        """``(boxes, scores, labels)`` of an image file, in the oriented original's pixels."""
        working = self.decode(payload, source)
        width, height = working.original_size
        problem = check_size(width, height, self.min_side, self.max_side, self.max_pixels)
        if problem is not None:
            raise RequestError(problem)
        height_now, width_now = working.pixels.shape[:2]
        outputs = self._run(working.pixels.transpose(2, 0, 1))
        return scale_boxes(outputs, (width, height), (width_now, height_now))


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


def _resize_of(parameters, version_dir, version):
    """``(min_size, max_size)`` of this version (config parameter, else manifest), or None."""
    try:
        entry = json.loads(parameters.get(RESIZE_PARAMETER) or "{}").get(str(version))
        if entry:
            return int(entry["min_size"]), int(entry["max_size"])
    except (ValueError, TypeError, KeyError, AttributeError):
        logger.warning("config parameter %s is not a valid resize map", RESIZE_PARAMETER)
    try:
        with open(os.path.join(version_dir, "manifest.json"), encoding="utf-8") as stream:
            resize = json.load(stream)["export"]["resize"]
        return int(resize["min_size"]), int(resize["max_size"])
    except (OSError, ValueError, TypeError, KeyError):
        return None  # a version exported before the resize was recorded: decode fully


class TritonPythonModel:
    """The model Triton's python backend instantiates once per instance."""

    def initialize(self, args):
        import onnxruntime

        self.model_config = json.loads(args["model_config"])
        parameters = _parameters(self.model_config)
        version = args["model_version"]
        version_dir = os.path.join(args["model_repository"], version)
        resize = _resize_of(parameters, version_dir, version)
        min_size, max_size = resize or (0, 0)
        path = os.path.join(version_dir, "model.onnx")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        threads = int(parameters.get("intra_op_thread_count") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        # Several instances share the cores: idle threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        choice = (parameters.get("execution_provider") or "auto").lower()
        session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=_providers(choice)
        )
        self.runtime = DetectorRuntime(
            session,
            min_size=min_size,
            max_size=max_size,
            min_side=int(parameters.get("min_image_side") or 16),
            max_side=int(parameters.get("max_image_side") or 8192),
            max_pixels=int(parameters.get("max_image_pixels") or 40_000_000),
            draft=resize is not None and (parameters.get("draft_decode") or "0") == "1",
            draft_margin=float(parameters.get("draft_margin") or 2.0),
            resize=(parameters.get("server_resize") or "1") != "0",
        )
        logger.info(
            "loaded %s (version %s, resize %d/%d) with %s",
            path,
            version,
            min_size,
            max_size,
            ", ".join(session.get_providers()),
        )

    def _error(self, message, code):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(message, code)
        )

    def _answer(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, BYTES_INPUT_NAME)
        pixels = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if (encoded is None) == (pixels is None):
            raise RequestError(
                f"the request must carry exactly one of the inputs '{BYTES_INPUT_NAME}' "
                f"(an image file) and '{INPUT_NAME}' (uint8 pixels), got "
                f"{'both' if encoded is not None else 'neither'}"
            )
        if encoded is not None:
            elements = encoded.as_numpy().reshape(-1)
            if elements.size != 1:
                raise RequestError(
                    f"input '{BYTES_INPUT_NAME}' must hold exactly one image file, "
                    f"got {elements.size} elements"
                )
            outputs = self.runtime.detect_encoded(elements[0], source="image")
        else:
            outputs = self.runtime.detect_pixels(pixels.as_numpy())
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, value)
                for name, value in zip(OUTPUT_NAMES, outputs, strict=True)
            ]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except RequestError as error:
                responses.append(self._error(str(error), pb_utils.TritonError.INVALID_ARG))
            except Exception as error:  # one failing request must not fail the others
                logger.exception("inference failed")
                responses.append(
                    self._error(f"inference failed: {error}", pb_utils.TritonError.INTERNAL)
                )
        return responses

    def finalize(self):
        self.runtime = None
