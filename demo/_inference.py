"""One prediction for the demo page, through the project's Triton client.

The page's server decodes the upload with the shared image loader (so the page shows exactly the
pixels the model sees), then asks :class:`client.DetectionClient` for detections. The function is
a parameter of :func:`demo.create_app` so the server stays independent of how it is called.

Example:
    >>> outcome = predict_image(resolved, "my-model", "s3cret", pixels, 30.0)  # doctest: +SKIP
    >>> [(d.name, round(d.score, 2)) for d in outcome.detections]            # doctest: +SKIP
    [('circle', 0.98)]
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from demo._endpoints import ResolvedEndpoint

__all__ = ["Detection", "Outcome", "Predictor", "encode_preview", "predict_image"]

_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_FALLBACK_COLORS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f")
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
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "label": int(self.label),
            "name": self.name,
            "color": self.color if _COLOR.match(self.color) else "#ff0000",
        }


@dataclass(frozen=True)
class Outcome:
    """Detections of one image, the version that answered and the Triton round-trip time."""

    detections: tuple[Detection, ...]
    model_version: str
    triton_ms: float


#: ``(endpoint, model, token, pixels HWC uint8, timeout_s) -> Outcome``
Predictor = Callable[[ResolvedEndpoint, str, "str | None", np.ndarray, float], Outcome]


def predict_image(
    resolved: ResolvedEndpoint,
    model: str,
    token: str | None,
    pixels: np.ndarray,
    timeout_s: float,
) -> Outcome:
    """Send one decoded image to Triton with :class:`client.DetectionClient`.

    Raises:
        client errors (subclasses of :class:`detstack.errors.InferenceError`): unreachable,
        unauthorized, model not ready, bad input.
    """
    from client import DetectionClient  # heavy import (tritonclient), only when predicting
    from detstack.images import to_chw

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
        timed = client.infer_chw(to_chw(pixels), "uploaded image")
        result = timed.detections
        label_info = client.labels(result.model_version or None) if len(result.labels) else {}
    detections = tuple(
        Detection(
            box=tuple(float(v) for v in box),
            score=float(score),
            label=int(label),
            name=str(name),
            color=_color(label_info, int(label)),
        )
        for box, score, label, name in zip(
            result.boxes, result.scores, result.labels, result.names, strict=True
        )
    )
    return Outcome(detections, str(result.model_version), timed.request_s * 1000.0)


def _color(label_info: dict[int, dict[str, str]], label: int) -> str:
    color = label_info.get(label, {}).get("color")
    if isinstance(color, str) and _COLOR.match(color):
        return color
    return _FALLBACK_COLORS[label % len(_FALLBACK_COLORS)]


def encode_preview(pixels: np.ndarray) -> str:
    """The decoded image as a ``data:`` URL: lossless PNG when small, else a downscaled JPEG."""
    image = Image.fromarray(pixels)
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
