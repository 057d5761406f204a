"""Triton python-backend model ``<name>-gate``: the first step of the decode-on-GPU ensemble.

Export copies this file into every version directory of ``<name>-gate`` as ``model.py``, next
to a vendored copy of :mod:`detstack.wire` (``<v>/detstack/wire.py`` and what it imports), and
NVIDIA's Triton container runs it: that image has Python and numpy but neither Pillow nor
detstack, so this file needs the standard library, numpy and the vendored package only.

For each request it takes ``image_bytes`` (one BYTES element: the image file, raw or the seed's
base64 text, told apart by content exactly as :func:`detstack.wire.image_file_bytes` does it)
and answers ``image_file`` (UINT8 ``[1, n]``: the file's bytes, as DALI's unbatched model wants
them), after three checks, each answered ``INVALID_ARG`` with the reason for that request only:

* the payload is valid (not empty; strict base64 when it is text);
* the file is at most ``max_file_bytes`` bytes (config parameter);
* its magic bytes name a format of the ``allowed_formats`` parameter
  (:func:`detstack.wire.sniff_format`; the ones DALI's decoder reads).

What it cannot check without decoding (the pixel limit, a truncated file) is left to the
decoder; ``model_repository/README.md`` says what the GPU path enforces and what it does not.

Example (what Triton does with it):
    model = TritonPythonModel()
    model.initialize({"model_config": json_text, ...})
    responses = model.execute(requests)
"""

import json
import os
import sys

import numpy as np

# The vendored ``detstack`` package (wire and errors only) sits next to this file.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from detstack.errors import DetstackError  # noqa: E402 - after the path is set
from detstack.wire import image_file_bytes, sniff_format  # noqa: E402

try:  # Only inside Triton's python backend; importable elsewhere for tests.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised by the real server
    pb_utils = None

INPUT_NAME = "image_bytes"
OUTPUT_NAME = "image_file"
DEFAULT_MAX_FILE_BYTES = 64 * 2**20
DEFAULT_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")


class RequestError(Exception):
    """A request the gate refuses because of its input (answered with INVALID_ARG)."""


class Gate:
    """The checks of one ``image_bytes`` element, without Triton (tests run exactly this).

    Args:
        max_file_bytes: larger files are refused.
        formats: accepted formats, by the names :func:`detstack.wire.sniff_format` gives.
    """

    def __init__(self, max_file_bytes=DEFAULT_MAX_FILE_BYTES, formats=DEFAULT_FORMATS):
        self.max_file_bytes = int(max_file_bytes)
        self.formats = tuple(formats)

    def check(self, payload):
        """The image file inside ``payload`` as a uint8 ``[1, n]`` array, or RequestError."""
        # Base64 text is 4/3 of the file: refuse a payload too large to hold an allowed file
        # before decoding it.
        if len(payload) > self.max_file_bytes * 4 // 3 + 1024:
            raise RequestError(
                f"payload of {len(payload)} bytes exceeds the limit of {self.max_file_bytes} "
                "bytes for an image file (4/3 of that as base64 text)"
            )
        try:
            data = image_file_bytes(payload)
        except DetstackError as error:
            raise RequestError(str(error)) from None
        if len(data) > self.max_file_bytes:
            raise RequestError(
                f"image file of {len(data)} bytes exceeds the limit of {self.max_file_bytes} bytes"
            )
        found = sniff_format(data)
        if found not in self.formats:
            what = f"a {found} file" if found else f"not an image file (first bytes {data[:8]!r})"
            raise RequestError(
                f"the payload is {what}; the GPU flavour decodes {', '.join(self.formats)}"
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(1, -1)


def _parameters(model_config):
    return {
        key: value.get("string_value", "")
        for key, value in (model_config.get("parameters") or {}).items()
    }


class TritonPythonModel:
    """The model Triton's python backend instantiates once per instance."""

    def initialize(self, args):
        parameters = _parameters(json.loads(args["model_config"]))
        formats = [f for f in (parameters.get("allowed_formats") or "").split(",") if f]
        self.gate = Gate(
            max_file_bytes=int(parameters.get("max_file_bytes") or DEFAULT_MAX_FILE_BYTES),
            formats=formats or DEFAULT_FORMATS,
        )

    def _answer(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            raise RequestError(f"the request must carry the input '{INPUT_NAME}'")
        elements = tensor.as_numpy().reshape(-1)
        if elements.size != 1:
            raise RequestError(
                f"input '{INPUT_NAME}' must hold exactly one image file, got {elements.size} "
                "elements"
            )
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(OUTPUT_NAME, self.gate.check(elements[0]))]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except RequestError as error:
                responses.append(self._error(str(error), pb_utils.TritonError.INVALID_ARG))
            except Exception as error:  # one failing request must not fail the others
                responses.append(
                    self._error(f"gate failed: {error}", pb_utils.TritonError.INTERNAL)
                )
        return responses

    def _error(self, message, code):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(message, code)
        )

    def finalize(self):
        self.gate = None
