"""One prediction for the demo page, through the project's Triton client, and its preview.

The page's server sends the uploaded file's bytes as they are to Triton, which decodes them with
the project's image loader, through :class:`client.DetectionClient`. The page shows a preview
made here by a cheap decode of the same bytes (EXIF orientation applied, as the model sees it).
The prediction function is a parameter of :func:`demo.create_app` so the server stays
independent of how it is called.

Example:
    >>> outcome = predict_image(resolved, "my-model", "s3cret", data, 30.0)  # doctest: +SKIP
    >>> [(d.name, round(d.score, 2)) for d in outcome.detections]          # doctest: +SKIP
    [('circle', 0.98)]
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from client.codec import detection_to_dict
from client.drawing import category_color
from demo._endpoints import ResolvedEndpoint
from detstack.errors import ImageDecodeError
from detstack.images import ALLOWED_FORMATS, decode_image, probe_image

__all__ = ["Detection", "Outcome", "Predictor", "Preview", "make_preview", "predict_image"]

logger = logging.getLogger(__name__)

#: Longest side of the preview image sent back to the page (boxes are scaled in the browser).
_PREVIEW_MAX_SIDE = 1600
#: Images up to this many pixels come back as PNG (exact pixels); larger ones as JPEG.
_PNG_MAX_PIXELS = 512 * 512


@dataclass(frozen=True)
class Detection:
    """One detected object, in the original image's pixels."""

    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str
    color: str

    def to_json(self) -> dict[str, Any]:
        # The colour reaches the browser: only ``#rrggbb`` passes (category_color's rule).
        color = category_color(self.label, {self.label: {"color": self.color}})
        return {**detection_to_dict(self.box, self.score, self.label, self.name), "color": color}


@dataclass(frozen=True)
class Outcome:
    """Detections of one image, the version that answered and the Triton round-trip time."""

    detections: tuple[Detection, ...]
    model_version: str
    triton_ms: float


#: ``(endpoint, model, token, image file bytes, timeout_s) -> Outcome``
Predictor = Callable[[ResolvedEndpoint, str, "str | None", bytes, float], Outcome]


@dataclass(frozen=True)
class Preview:
    """What the page draws on: a ``data:`` URL and the oriented size of the original image."""

    url: str
    width: int
    height: int


def predict_image(
    resolved: ResolvedEndpoint,
    model: str,
    token: str | None,
    data: bytes,
    timeout_s: float,
) -> Outcome:
    """Send one image file's bytes to Triton with :class:`client.DetectionClient`.

    Raises:
        client errors (subclasses of :class:`detstack.errors.InferenceError`): unreachable,
        unauthorized, model not ready, bad input.
    """
    from client import DetectionClient  # heavy import (tritonclient), only when predicting

    endpoint = resolved.endpoint
    with DetectionClient(
        resolved.address,
        model=model,
        protocol=endpoint.protocol,
        token=token,
        timeout=timeout_s,
        concurrency=1,
        retries=1,  # a person is waiting: report an unreachable server quickly
        model_version=endpoint.version or "",
    ) as client:
        # The file itself travels: the server decodes it with the same policy as the preview.
        timed = client.infer_encoded(data, "uploaded image")
        result = timed.detections
        label_info = client.labels(result.model_version or None) if len(result.labels) else {}
    detections = tuple(
        Detection(
            box=tuple(float(v) for v in box),
            score=float(score),
            label=int(label),
            name=str(name),
            color=category_color(int(label), label_info),
        )
        for box, score, label, name in zip(
            result.boxes, result.scores, result.labels, result.names, strict=True
        )
    )
    return Outcome(detections, str(result.model_version), timed.request_s * 1000.0)


def make_preview(data: bytes, source: str, max_pixels: int) -> Preview:
    """Check the upload is an image the model accepts and make the page's preview of it.

    The size and format are checked from the header first (no pixels decoded for a bomb or a
    non-image). A JPEG, the usual large photo, is decoded at a reduced scale (``draft``); other
    formats go through the shared loader. The orientation is the one the model sees.

    Raises:
        ImageDecodeError: not an accepted image, too many pixels, or corrupt (whatever Pillow
            raised on the hostile bytes).
    """
    width, height = probe_image(data, source=source, max_pixels=max_pixels)
    try:
        image = _preview_image(data, source, max_pixels)
    except ImageDecodeError:
        raise
    except Exception as error:  # Pillow raises many types on crafted files; all mean "corrupt"
        logger.info("%s: preview decode failed: %r", source, error)
        raise ImageDecodeError(
            f"{source}: truncated or corrupt image data ({type(error).__name__})"
        ) from None
    return Preview(_data_url(image), width, height)


def _preview_image(data: bytes, source: str, max_pixels: int) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
        if opened.format not in ("JPEG", "MPO"):
            return Image.fromarray(decode_image(data, source=source, max_pixels=max_pixels))
        opened.draft("RGB", (_PREVIEW_MAX_SIDE, _PREVIEW_MAX_SIDE))
        opened.load()
        try:
            image = ImageOps.exif_transpose(opened)
        except Exception:  # a malformed EXIF block is ignored, as detstack.images does
            image = opened.copy()
        return image.convert("RGB")


def _data_url(image: Image.Image) -> str:
    """The image as a ``data:`` URL: lossless PNG when small, else a downscaled JPEG."""
    buffer = io.BytesIO()
    if image.width * image.height <= _PNG_MAX_PIXELS:
        image.save(buffer, format="PNG")
        media_type = "image/png"
    else:
        if max(image.size) > _PREVIEW_MAX_SIDE:
            image.thumbnail((_PREVIEW_MAX_SIDE, _PREVIEW_MAX_SIDE))
        image.save(buffer, format="JPEG", quality=90)
        media_type = "image/jpeg"
    return f"data:{media_type};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
