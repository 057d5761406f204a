"""Predict a set of images into a folder: annotated pictures plus one ``detections.json``.

``detstack predict`` and the pipeline's smoke stage both show a person what the served model
sees; they write the same files, in one schema, here. Nothing is printed: the result lists one
outcome per image (written, or why not) for the caller to report.

``detections.json``::

    {"model": "...", "url": "grpc://host:port" (a list for several servers), "threshold": 0.5,
     "images": [{"image": "<input>", "output": "<annotated file>", "width": W, "height": H,
                 "model_version": "1", "detections": [{"box", "score", "label", "name"}]},
                {"image": "<input>", "error": "<why it failed>"}]}

Only detections at or above ``threshold`` are drawn and written (rounded by
:func:`client.codec.detection_to_dict`). An annotated JPEG input stays a JPEG, any other image
becomes a PNG; two inputs with the same stem get ``name.png`` and ``name_1.png``.

Example:
    >>> with DetectionClient("localhost:8001") as client:                  # doctest: +SKIP
    ...     client.wait_until_ready(timeout=60)
    ...     result = predict_to_folder(client, [Path("dog.jpg")], Path("out"), 0.5)
    >>> [(o.source, len(o.detections or ())) for o in result.images]     # doctest: +SKIP
    [('dog.jpg', 2)]
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from client._client import DetectionClient
from client.codec import IMAGE_COLUMN, Detections, RowError, encode_image
from client.drawing import draw_detections
from detstack.atomic import atomic_write_bytes, atomic_write_json
from detstack.errors import BadInputError, ImageDecodeError
from detstack.images import decode_image

__all__ = ["DETECTIONS_FILE", "ImageOutcome", "PredictFolderResult", "predict_to_folder"]

#: The JSON file written next to the annotated images.
DETECTIONS_FILE = "detections.json"
_JPEG_SUFFIXES = (".jpg", ".jpeg")

#: An image given by name and bytes (a dataset's image), rather than by a path read here.
NamedImage = tuple[str, bytes]


@dataclass(frozen=True, eq=False)
class ImageOutcome:
    """What became of one input image.

    Attributes:
        source: the input as given (a path, or the name of a :data:`NamedImage`).
        output: the annotated image written, or ``None`` when the image failed.
        width, height: the image's size as the model saw it (EXIF orientation applied).
        detections: the detections at or above the threshold (``None`` when it failed).
        error: why the image failed (``None`` when it was written).
    """

    source: str
    output: Path | None = None
    width: int = 0
    height: int = 0
    detections: Detections | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, object]:
        """This image's entry in ``detections.json``."""
        if self.error is not None or self.detections is None:
            return {"image": self.source, "error": self.error}
        return {
            "image": self.source,
            "output": str(self.output),
            "width": self.width,
            "height": self.height,
            **self.detections.to_dict(),
        }


@dataclass(frozen=True)
class PredictFolderResult:
    """Every image's outcome, in input order, and where ``detections.json`` was written."""

    out: Path
    detections_file: Path
    threshold: float
    images: tuple[ImageOutcome, ...]

    @property
    def failed(self) -> int:
        return sum(not outcome.ok for outcome in self.images)

    @property
    def detections(self) -> int:
        """Detections written, over all images."""
        return sum(len(o.detections) for o in self.images if o.detections is not None)


def predict_to_folder(
    client: DetectionClient,
    images: Sequence[str | os.PathLike[str] | NamedImage],
    out: Path,
    threshold: float = 0.5,
) -> PredictFolderResult:
    """Send every image to the served model, draw what it found and write it all into ``out``.

    An image that cannot be read or that the server refuses fails alone (its outcome says why);
    the others are still written.

    Args:
        client: an open client (the caller waits until it is ready).
        images: image files, or ``(name, bytes)`` pairs.
        out: the folder (created if missing).
        threshold: the lowest score drawn and written, in [0, 1].

    Raises:
        BadInputError: ``threshold`` is outside [0, 1].
        ServerUnreachableError, UnauthorizedError, ModelNotReadyError: the server failed as a
            whole (see :meth:`DetectionClient.predict_rows`); nothing is written then.
    """
    if not 0.0 <= threshold <= 1.0:
        raise BadInputError(f"threshold must be in [0, 1], got {threshold}")
    sources, files, unreadable = _read_all(images)
    cells = {position: encode_image(data) for position, data in files.items()}
    frame = pd.DataFrame({IMAGE_COLUMN: pd.Series(cells, dtype=object)})
    rows = dict(zip(frame.index, client.predict_rows(frame), strict=True))
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    outcomes = []
    for position, source in enumerate(sources):
        result = rows.get(position)
        if position in unreadable:
            outcomes.append(ImageOutcome(source, error=unreadable[position]))
        elif isinstance(result, RowError) or result is None:
            reason = result.reason if result is not None else "no answer"
            outcomes.append(ImageOutcome(source, error=reason.replace(f"row {position!r}", source)))
        else:
            name = _unique_name(Path(source), used)
            outcomes.append(_draw(client, source, files[position], result, out / name, threshold))
    document = {
        "model": client.config.model,
        "url": _url(client),
        "threshold": threshold,
        "images": [outcome.to_dict() for outcome in outcomes],
    }
    detections_file = out / DETECTIONS_FILE
    atomic_write_json(detections_file, document)
    return PredictFolderResult(out, detections_file, threshold, tuple(outcomes))


def _read_all(
    images: Sequence[str | os.PathLike[str] | NamedImage],
) -> tuple[list[str], dict[int, bytes], dict[int, str]]:
    """``(source names, {position: file bytes}, {position: why it could not be read})``."""
    sources, files, unreadable = [], {}, {}
    for position, image in enumerate(images):
        if isinstance(image, tuple):
            name, data = image
            sources.append(str(name))
            files[position] = bytes(data)
            continue
        path = Path(image)
        sources.append(str(path))
        try:
            files[position] = path.read_bytes()
        except OSError as error:
            unreadable[position] = f"{path}: cannot read ({error.strerror or error})"
    return sources, files, unreadable


def _unique_name(source: Path, used: set[str]) -> str:
    """``<stem>.jpg`` for a JPEG, else ``<stem>.png``; ``<stem>_N`` when the name is taken."""
    suffix = ".jpg" if source.suffix.lower() in _JPEG_SUFFIXES else ".png"
    name, counter = f"{source.stem}{suffix}", 1
    while name in used:
        name, counter = f"{source.stem}_{counter}{suffix}", counter + 1
    used.add(name)
    return name


def _draw(
    client: DetectionClient,
    source: str,
    data: bytes,
    detections: Detections,
    target: Path,
    threshold: float,
) -> ImageOutcome:
    """Draw one answered image into ``target``; an image the server read but we cannot fails."""
    try:
        pixels = decode_image(data, source=source)
    except (BadInputError, ImageDecodeError) as error:
        return ImageOutcome(source, error=str(error))
    labels = client.labels(detections.model_version or None)
    picture = draw_detections(pixels, detections, labels, threshold)
    buffer = io.BytesIO()
    if target.suffix == ".jpg":
        picture.save(buffer, format="JPEG", quality=92)
    else:
        picture.save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    return ImageOutcome(
        source,
        output=target,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        detections=detections.above(threshold),
    )


def _url(client: DetectionClient) -> str | list[str]:
    """The server's URL as ``protocol://host:port`` (a list for several servers)."""
    config = client.config
    urls = [f"{config.protocol}://{address}" for address in config.addresses]
    return urls[0] if len(urls) == 1 else urls
