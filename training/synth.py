"""A deterministic synthetic COCO dataset of coloured shapes, for the offline default and tests.

The quickstart and the test suite need a dataset that exists without a download, is the same on
every machine, and is easy enough that a small Faster R-CNN learns it in minutes on a CPU, yet
exercises what real datasets do: category ids that are not contiguous and include 0, several
objects per image, images with no objects at all (negatives), polygons, areas.

Each image is a noisy background with 1-4 filled shapes (``circle`` id 0, ``square`` id 3,
``triangle`` id 7) of random size, position and saturated colour. The category is told by the
shape only, never the colour. Shapes are at least :attr:`SynthConfig.min_object_size` pixels
and overlap little, so boxes are unambiguous. Image ``i`` depends only on ``(seed, i)``: the
first 10 images of a 1000-image dataset are those of a 10-image one, and the same seed always
writes byte-identical files.

Layout written::

    OUT/annotations.json          # every image
    OUT/annotations_train.json    # only with val_fraction > 0: a deterministic split ...
    OUT/annotations_val.json      # ... of the same images (same file names)
    OUT/images/000000.png ...

Example:
    >>> from pathlib import Path
    >>> summary = write_synthetic_dataset(Path("data/shapes"), SynthConfig(images=200, seed=0))
    ...                                                                     # doctest: +SKIP
    >>> summary.annotations_path                                            # doctest: +SKIP
    PosixPath('data/shapes/annotations.json')
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detstack.errors import ConfigError, StorageError
from detstack.progress import progress as show_progress

__all__ = [
    "SYNTH_CATEGORIES",
    "SynthConfig",
    "SynthSummary",
    "render_image",
    "write_synthetic_dataset",
]

logger = logging.getLogger(__name__)

#: ``(id, name)`` of the synthetic categories: not contiguous, and one of them is 0 on purpose.
SYNTH_CATEGORIES: tuple[tuple[int, str], ...] = ((0, "circle"), (3, "square"), (7, "triangle"))

# Shapes may overlap at most this much (intersection over the smaller box): little occlusion.
_MAX_OVERLAP = 0.1
_PLACEMENT_TRIES = 50


@dataclass(frozen=True)
class SynthConfig:
    """What synthetic dataset to write.

    Attributes:
        images: number of images.
        seed: the dataset is a pure function of the seed (and the other fields).
        size: the shorter image side in pixels.
        aspect_ratios: each image's width/height is drawn from these (1.0 = square images).
        min_objects / max_objects: objects per non-negative image.
        negative_fraction: share of images with no objects at all.
        min_object_size: smallest box side in pixels.
        max_object_fraction: largest box side as a fraction of the shorter image side.
        noise: standard deviation of the background's pixel noise (0-255 scale).
        val_fraction: when > 0, also write ``annotations_train.json`` and
            ``annotations_val.json`` splitting the images (at least one in each).
    """

    images: int = 200
    seed: int = 0
    size: int = 128
    aspect_ratios: tuple[float, ...] = (1.0,)
    min_objects: int = 1
    max_objects: int = 4
    negative_fraction: float = 0.05
    min_object_size: int = 16
    max_object_fraction: float = 0.4
    noise: float = 18.0
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError(f"images must be at least 1, got {self.images}")
        if self.size < 32:
            raise ConfigError(f"size must be at least 32 pixels, got {self.size}")
        if not self.aspect_ratios or any(not 0.25 <= r <= 4.0 for r in self.aspect_ratios):
            raise ConfigError(
                f"aspect_ratios must be a non-empty list of values in [0.25, 4], "
                f"got {list(self.aspect_ratios)}"
            )
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(
                f"expected 1 <= min_objects <= max_objects, got {self.min_objects} and "
                f"{self.max_objects}"
            )
        if not 0.0 <= self.negative_fraction < 1.0:
            raise ConfigError(f"negative_fraction must be in [0, 1), got {self.negative_fraction}")
        if self.min_object_size < 4:
            raise ConfigError(f"min_object_size must be at least 4, got {self.min_object_size}")
        if self.min_object_size > self.size // 2:
            raise ConfigError(
                f"min_object_size {self.min_object_size} is more than half the image size "
                f"{self.size}; objects would not fit"
            )
        if not 0.0 < self.max_object_fraction <= 0.9:
            raise ConfigError(
                f"max_object_fraction must be in (0, 0.9], got {self.max_object_fraction}"
            )
        if not 0.0 <= self.noise <= 64.0:
            raise ConfigError(f"noise must be in [0, 64], got {self.noise}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction > 0 and self.images < 2:
            raise ConfigError(
                f"a train/validation split needs at least 2 images, got {self.images}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` wrote."""

    root: Path
    annotations_path: Path
    images: int
    annotations: int
    negatives: int
    per_category: dict[str, int] = field(default_factory=dict)
    split_paths: tuple[Path, ...] = ()


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # One independent stream per image: image i does not depend on how many images there are.
    return np.random.default_rng([seed, index])


def _background(rng: np.random.Generator, width: int, height: int, noise_std: float) -> np.ndarray:
    base = rng.integers(40, 216, size=3)
    noise = rng.normal(0.0, 1.0, size=(height, width, 3)) * noise_std
    # A gentle gradient so the background is not a flat colour the model can trivially ignore.
    ramp = np.linspace(-20.0, 20.0, width)[None, :, None] * rng.choice([-1.0, 1.0])
    pixels = base[None, None, :] + noise + ramp
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    # Saturated colours far from the background's mean, so every object has clear edges.
    mean = background.reshape(-1, 3).mean(axis=0)
    best: tuple[int, int, int] = (255, 255, 255)
    best_distance = -1.0
    for _ in range(8):
        hue = rng.random()
        value = rng.uniform(0.55, 1.0)
        rgb = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0), value)
        distance = float(np.linalg.norm(np.array(rgb, dtype=float) - mean))
        if distance > best_distance:
            best, best_distance = rgb, distance
        if distance > 120:
            break
    return best


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i]
    return round(r * 255), round(g * 255), round(b * 255)


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area (0 = disjoint, 1 = one inside the other)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def _shape_polygon(
    name: str, x: float, y: float, side: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Polygon of a shape whose bounding box is the square ``(x, y, side, side)``."""
    if name == "square":
        return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    if name == "triangle":
        # Apex on the top or bottom edge, at a random place: upright and upside-down triangles.
        apex_x = x + side * rng.uniform(0.2, 0.8)
        if rng.random() < 0.5:
            return [(apex_x, y), (x + side, y + side), (x, y + side)]
        return [(x, y), (x + side, y), (apex_x, y + side)]
    # circle: a 32-gon is what COCO tools would store for it.
    radius = side / 2
    cx, cy = x + radius, y + radius
    return [
        (cx + radius * math.cos(2 * math.pi * k / 32), cy + radius * math.sin(2 * math.pi * k / 32))
        for k in range(32)
    ]


def _polygon_area(points: Sequence[tuple[float, float]]) -> float:
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]], strict=True):
        total += x0 * y1 - x1 * y0
    return abs(total) / 2


def render_image(config: SynthConfig, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render image ``index`` of the dataset ``config`` describes.

    Returns:
        The HWC RGB uint8 pixels and the image's objects as COCO-like dicts with ``category_id``,
        ``bbox`` (``[x, y, w, h]``), ``segmentation``, ``area`` and ``iscrowd``.
    """
    rng = _image_rng(config.seed, index)
    ratio = float(config.aspect_ratios[int(rng.integers(len(config.aspect_ratios)))])
    if ratio >= 1.0:
        width, height = round(config.size * ratio), config.size
    else:
        width, height = config.size, round(config.size / ratio)
    pixels = _background(rng, width, height, config.noise)
    negative = rng.random() < config.negative_fraction
    count = 0 if negative else int(rng.integers(config.min_objects, config.max_objects + 1))

    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    largest = max(config.min_object_size, round(config.size * config.max_object_fraction))
    boxes: list[tuple[float, float, float, float]] = []
    objects: list[dict[str, Any]] = []
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            side = int(rng.integers(config.min_object_size, largest + 1))
            x = int(rng.integers(0, width - side + 1))
            y = int(rng.integers(0, height - side + 1))
            box = (x, y, x + side, y + side)
            if all(_overlap(box, other) <= _MAX_OVERLAP for other in boxes):
                break
        else:
            continue  # no room left for another shape: fewer objects, never heavy occlusion
        category_id, name = SYNTH_CATEGORIES[int(rng.integers(len(SYNTH_CATEGORIES)))]
        polygon = _shape_polygon(name, x, y, side, rng)
        colour = _object_colour(rng, pixels[y : y + side, x : x + side])
        # PIL fills pixel centres up to and including the end coordinate: draw to side - 1 so
        # the filled pixels are exactly [x, x + side) and the box is tight.
        shrink = (side - 1) / side
        drawn = [(x + (px - x) * shrink, y + (py - y) * shrink) for px, py in polygon]
        if name == "circle":
            draw.ellipse((x, y, x + side - 1, y + side - 1), fill=colour)
        else:
            draw.polygon(drawn, fill=colour)
        xs = [px for px, _ in polygon]
        ys = [py for _, py in polygon]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        boxes.append(box)
        objects.append(
            {
                "category_id": category_id,
                "bbox": [round(v, 2) for v in bbox],
                "segmentation": [[round(v, 2) for point in polygon for v in point]],
                "area": round(_polygon_area(polygon), 2),
                "iscrowd": 0,
            }
        )
    return np.asarray(canvas, dtype=np.uint8), objects


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # No metadata, fixed compression: the same pixels always give the same bytes.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _split(image_ids: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng([seed, 0x5E11]).permutation(len(image_ids))
    val_count = min(len(image_ids) - 1, max(1, round(len(image_ids) * val_fraction)))
    val = sorted(image_ids[i] for i in order[:val_count])
    train = sorted(image_ids[i] for i in order[val_count:])
    return train, val


def _coco_document(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], config: SynthConfig
) -> dict[str, Any]:
    return {
        "info": {
            "description": "detstack synthetic shapes",
            "version": "1",
            "seed": config.seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": "shape"} for cid, name in SYNTH_CATEGORIES
        ],
    }


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def write_synthetic_dataset(
    root: str | Path, config: SynthConfig, *, progress: bool = False
) -> SynthSummary:
    """Write the dataset ``config`` describes under ``root`` (created if needed).

    Existing files of the same names are overwritten; other files in ``root`` are left alone.

    Args:
        root: the dataset folder.
        config: what to write.
        progress: show a progress bar (the CLI turns it on).

    Raises:
        StorageError: ``root`` cannot be created or written.
    """
    root = Path(root)
    images_dir = root / "images"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create dataset folder {images_dir}: {error}") from None

    image_entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    negatives = 0
    per_category = {name: 0 for _, name in SYNTH_CATEGORIES}
    names = dict(SYNTH_CATEGORIES)
    for index in show_progress(range(config.images), desc="synth", unit="img", enabled=progress):
        pixels, objects = render_image(config, index)
        file_name = f"images/{index:06d}.png"
        try:
            (root / file_name).write_bytes(_png_bytes(pixels))
        except OSError as error:
            raise StorageError(f"cannot write {root / file_name}: {error}") from None
        image_id = index + 1
        image_entries.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": int(pixels.shape[1]),
                "height": int(pixels.shape[0]),
            }
        )
        negatives += not objects
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
            per_category[names[obj["category_id"]]] += 1

    annotations_path = root / "annotations.json"
    try:
        _write_json(annotations_path, _coco_document(image_entries, annotations, config))
        split_paths: tuple[Path, ...] = ()
        if config.val_fraction > 0:
            train_ids, val_ids = _split(
                [e["id"] for e in image_entries], config.val_fraction, config.seed
            )
            for name, ids in (("train", set(train_ids)), ("val", set(val_ids))):
                path = root / f"annotations_{name}.json"
                _write_json(
                    path,
                    _coco_document(
                        [e for e in image_entries if e["id"] in ids],
                        [a for a in annotations if a["image_id"] in ids],
                        config,
                    ),
                )
                split_paths += (path,)
    except OSError as error:
        raise StorageError(f"cannot write annotations under {root}: {error}") from None
    logger.info(
        "wrote %d images (%d negatives), %d objects to %s",
        config.images,
        negatives,
        len(annotations),
        root,
    )
    return SynthSummary(
        root=root,
        annotations_path=annotations_path,
        images=config.images,
        annotations=len(annotations),
        negatives=negatives,
        per_category=per_category,
        split_paths=split_paths,
    )
