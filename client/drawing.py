"""Draw detections on an image: a box, the category name and the score, one colour per category.

Colours come from the served model's label map (what the export stage wrote, the seed's Set2
palette: :data:`training.categories.PALETTE`); a category the map does not know, or whose colour
is not ``#rrggbb``, gets a stable colour of the same palette derived from its id. Only
detections whose score reaches ``threshold`` are drawn (the seed drew those above 0.9).

Example:
    >>> pixels = read_image("dog.jpg")                                         # doctest: +SKIP
    >>> picture = draw_detections(pixels, detections, client.labels(), 0.5)    # doctest: +SKIP
    >>> picture.save("dog.annotated.jpg")                                      # doctest: +SKIP
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from client.codec import Detections
from detstack.errors import BadInputError
from training.categories import palette_color

__all__ = ["category_color", "draw_detections"]

#: The only colour form accepted from a label map: it also reaches a browser (the demo page).
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


def category_color(category_id: int, label_map: Mapping[int, Mapping[str, str]]) -> str:
    """The ``#rrggbb`` colour of a category: the label map's, else a stable one from its id.

    The label map comes from the server, so its colour is used only if it is ``#rrggbb``.
    """
    color = label_map.get(int(category_id), {}).get("color")
    if isinstance(color, str) and _HEX_COLOR.match(color):
        return color
    return palette_color(zlib.crc32(str(int(category_id)).encode()))


def _text_color(background: str) -> str:
    red, green, blue = ImageColor.getrgb(background)[:3]
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#ffffff"


def draw_detections(
    image: Image.Image | np.ndarray,
    detections: Detections,
    label_map: Mapping[int, Mapping[str, str]] | None = None,
    threshold: float = 0.5,
) -> Image.Image:
    """Return a copy of ``image`` with the detections at or above ``threshold`` drawn on it.

    Args:
        image: a PIL image or an HWC RGB uint8 array (what :func:`detstack.images.decode_image`
            returns, i.e. the pixels the model saw).
        detections: boxes in that image's pixels.
        label_map: ``{category id: {"name", "color"}}`` (``DetectionClient.labels()``).
        threshold: the lowest score drawn.
    """
    if not 0.0 <= threshold <= 1.0:
        raise BadInputError(f"threshold must be in [0, 1], got {threshold}")
    label_map = label_map or {}
    if isinstance(image, np.ndarray):
        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    else:
        picture = image.convert("RGB")
    draw = ImageDraw.Draw(picture)
    side = min(picture.size)
    width = max(1, round(side / 250))
    font = ImageFont.load_default(size=max(10, round(side / 40)))
    kept = detections.above(threshold)
    # Draw the weakest first so the most confident boxes and labels end up on top.
    for i in np.argsort(kept.scores, kind="stable"):
        x1, y1, x2, y2 = (float(v) for v in kept.boxes[i])
        category = int(kept.labels[i])
        color = category_color(category, label_map)
        name = (
            kept.names[i]
            if i < len(kept.names)
            else label_map.get(category, {}).get("name", str(category))
        )
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        caption = f"{name} {float(kept.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left, bottom - top
        y = y1 - text_h - 2 * width if y1 - text_h - 2 * width >= 0 else y1
        draw.rectangle((x1, y, x1 + text_w + 2 * width, y + text_h + 2 * width), fill=color)
        draw.text((x1 + width - left, y + width - top), caption, fill=_text_color(color), font=font)
    return picture
