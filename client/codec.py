"""The base64 DataFrame protocol of the seed, as pure functions (no server, no network).

Users of the seed's ``ModelWrapper`` send a DataFrame with one column, ``image_data``, whose
cells are base64-encoded image *files*, and get back a DataFrame with the columns ``boxes``,
``labels`` and ``scores`` (in that order, as the seed's ``pd.DataFrame(pred)`` built it from
torchvision's result dicts), each cell the base64 of the raw numpy bytes of one image's result:

=========  ========  ===============================  =====================================
column     dtype     shape                            bytes per detection
=========  ========  ===============================  =====================================
boxes      float32   N × 4 (x1, y1, x2, y2, pixels)   16
labels     int64     N (dataset category ids)         8
scores     float32   N                                4
=========  ========  ===============================  =====================================

Bytes are little-endian (what the seed produced on every machine it ran on), so the seed's own
``revert_predict_to_array`` reads our output unchanged.

Decisions (the seed is silent on them):

* **Base64 is strict.** Only the standard alphabet with correct padding is accepted
  (``validate=True``), after removing ASCII whitespace anywhere in the text (so line-wrapped
  base64, as the ``base64`` command prints it, works) and an optional data-URL prefix
  (``data:image/png;base64,``, what a browser's ``FileReader`` produces). URL-safe base64
  (``-``/``_``) is refused rather than guessed.
* **A bad row fails only that row.** Each cell is decoded on its own; a cell that is missing
  (``None``/``NaN``), of the wrong type, not base64, empty, not an image, a decompression bomb
  or truncated becomes a :class:`RowError` naming the row and the reason.
* **How failures come back.** The output keeps exactly the three columns and the input's index.
  A failed row's three cells are ``None`` (a missing value, never an empty array that would read
  as "no detections"), and ``frame.attrs["errors"]`` maps the failed rows' index labels to their
  reasons (``{}`` when all succeeded; read it with :func:`row_errors`). No extra column is
  added, because the seed's helper base64-decodes *every* column.

Example:
    >>> frame = encode_images([Path("dog.jpg"), Path("cat.png")])    # doctest: +SKIP
    >>> rows = decode_frame(frame)                                   # doctest: +SKIP
    >>> [row.shape if isinstance(row, np.ndarray) else row.reason for row in rows]  # doctest: +SKIP
    [(3, 480, 640), (3, 300, 400)]
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from detstack.errors import BadInputError, ImageDecodeError
from detstack.images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, decode_image, to_chw
from detstack.wire import decode_base64, sniff_format

__all__ = [
    "ERRORS_ATTR",
    "IMAGE_COLUMN",
    "OUTPUT_COLUMNS",
    "Detections",
    "RowError",
    "check_image_file",
    "decode_base64",
    "decode_frame",
    "decode_row",
    "detection_to_dict",
    "encode_image",
    "encode_images",
    "encode_predictions",
    "encoded_row",
    "failed_rows",
    "image_column",
    "revert_predict_to_array",
    "row_errors",
]

#: The input column of the seed's protocol.
IMAGE_COLUMN = "image_data"
#: The output columns, in the seed's order (torchvision's result dict: boxes, labels, scores).
OUTPUT_COLUMNS: tuple[str, ...] = ("boxes", "labels", "scores")
#: Key of ``DataFrame.attrs`` holding ``{index label: reason}`` for the rows that failed.
ERRORS_ATTR = "errors"

#: JSON rounding of every detection detstack writes (CLI, pipeline, demo): a hundredth of a
#: pixel is below what a box means, and four decimals tell every score threshold a user sets.
BOX_DECIMALS = 2
SCORE_DECIMALS = 4

_BOXES_DTYPE = np.dtype("<f4")
_LABELS_DTYPE = np.dtype("<i8")
_SCORES_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class RowError:
    """Why one input row got no prediction.

    Attributes:
        index: the row's label in the input DataFrame's index.
        reason: a sentence naming what was wrong with it.
    """

    index: Hashable
    reason: str


@dataclass(frozen=True, eq=False)
class Detections:
    """One image's detections, in the original image's pixels.

    Attributes:
        boxes: float32 ``(N, 4)``, ``x1, y1, x2, y2``.
        scores: float32 ``(N,)``.
        labels: int64 ``(N,)``, the dataset's category ids.
        names: the category name of each label (the id as text when the model does not know it).
        model_version: the served model version that answered (``""`` when not known).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...] = ()
    model_version: str = ""

    def __post_init__(self) -> None:
        count = len(self.scores)
        if self.boxes.shape != (count, 4) or self.labels.shape != (count,):
            raise BadInputError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"labels {self.labels.shape}; expected (N, 4), (N,), (N,)"
            )

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> Detections:
        """The detections whose score is at least ``threshold``."""
        keep = self.scores >= threshold
        names = tuple(n for n, k in zip(self.names, keep, strict=False) if k)
        return Detections(
            self.boxes[keep], self.scores[keep], self.labels[keep], names, self.model_version
        )

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values: the version and a list of ``{box, score, label, name}``."""
        return {
            "model_version": self.model_version,
            "detections": [
                detection_to_dict(
                    box, score, label, self.names[i] if i < len(self.names) else str(int(label))
                )
                for i, (box, score, label) in enumerate(
                    zip(self.boxes, self.scores, self.labels, strict=True)
                )
            ],
        }


def detection_to_dict(
    box: Iterable[float], score: float, label: int, name: str
) -> dict[str, object]:
    """One detection as JSON values, with the one rounding policy (see ``BOX_DECIMALS``).

    Example:
        >>> detection_to_dict([1.234, 2, 3, 4], 0.98765, 7, "dog")
        {'box': [1.23, 2.0, 3.0, 4.0], 'score': 0.9877, 'label': 7, 'name': 'dog'}
    """
    return {
        "box": [round(float(v), BOX_DECIMALS) for v in box],
        "score": round(float(score), SCORE_DECIMALS),
        "label": int(label),
        "name": str(name),
    }


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _cell_bytes(value: object, where: str) -> bytes:
    """The image file in one cell (base64 text, or bytes), strictly; raises BadInputError."""
    if _is_missing(value):
        raise BadInputError(f"{where}: missing image data (got {value!r})")
    if not isinstance(value, str | bytes | bytearray | memoryview):
        raise BadInputError(
            f"{where}: expected a base64 string, got {type(value).__name__} ({str(value)[:40]!r})"
        )
    try:
        return decode_base64(value)
    except BadInputError as error:
        raise BadInputError(f"{where}: {error}") from None


def encoded_row(value: object, index: Hashable = "?") -> bytes | RowError:
    """Turn one ``image_data`` cell into the image file's bytes, or a :class:`RowError`.

    Only cheap checks, no decoding (the server decodes): the base64 is valid and the bytes
    start with the signature of an accepted format (:func:`detstack.wire.sniff_format`).
    """
    where = f"row {index!r}"
    try:
        return check_image_file(_cell_bytes(value, where), where)
    except BadInputError as error:
        return RowError(index, str(error))


def check_image_file(data: bytes, where: str = "image") -> bytes:
    """``data`` if it is non-empty and starts with an accepted format's signature.

    The client's only checks before sending a file (the server decodes it).

    Raises:
        BadInputError: empty, or not an accepted image format (the first bytes are named).
    """
    if not data:
        raise BadInputError(f"{where}: empty image data (0 bytes)")
    if sniff_format(data) is None:
        raise BadInputError(
            f"{where}: not an image in an accepted format (first bytes {data[:8]!r}; "
            f"accepted: {', '.join(ALLOWED_FORMATS)})"
        )
    return data


def decode_row(
    value: object, index: Hashable = "?", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | RowError:
    """Turn one ``image_data`` cell into the contract's uint8 CHW array, or a :class:`RowError`.

    Never raises for a bad cell: the caller decides what a failed row means.
    """
    where = f"row {index!r}"
    try:
        data = _cell_bytes(value, where)
        pixels = decode_image(data, source=where, max_pixels=max_pixels)
    except (BadInputError, ImageDecodeError) as error:
        return RowError(index, str(error))
    return to_chw(pixels)


def image_column(frame: pd.DataFrame, column: str = IMAGE_COLUMN) -> pd.Series:
    """The image column of the seed's input DataFrame (the only column, whatever its name).

    Raises:
        BadInputError: not a DataFrame, no such column, several columns of that name, or
            hierarchical (MultiIndex) columns.
    """
    if not isinstance(frame, pd.DataFrame):
        raise BadInputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    if isinstance(frame.columns, pd.MultiIndex):
        raise BadInputError(
            f"the input DataFrame has hierarchical (MultiIndex) columns {list(frame.columns)[:4]}; "
            f"expected one flat column {column!r} of base64-encoded image files"
        )
    if column in frame.columns:
        series = frame[column]
        if isinstance(series, pd.DataFrame):
            raise BadInputError(f"the input has {series.shape[1]} columns named {column!r}")
        return series
    if frame.shape[1] == 1:
        # The seed read the one column whatever its name (``df.squeeze(axis=1)``): keep that.
        return frame.iloc[:, 0]
    raise BadInputError(
        f"the input DataFrame has no {column!r} column (columns: {list(frame.columns)}); "
        f"expected one column of base64-encoded image files"
    )


def decode_frame(
    frame: pd.DataFrame, *, column: str = IMAGE_COLUMN, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[np.ndarray | RowError]:
    """Decode every row of the seed's input DataFrame, one result per row in index order.

    The column is ``image_data``; a DataFrame with a single column of another name is read as
    the seed did. Rows fail independently (see :func:`decode_row`).

    Raises:
        BadInputError: ``frame`` is not a DataFrame or has no usable image column.
    """
    series = image_column(frame, column)
    return [
        decode_row(value, index, max_pixels=max_pixels)
        for index, value in zip(series.index, series.array, strict=True)
    ]


def _b64(array: np.ndarray, dtype: np.dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def encode_predictions(
    index: pd.Index | Sequence[Hashable], results: Sequence[Detections | RowError]
) -> pd.DataFrame:
    """Build the seed's output DataFrame from one result per input row.

    Args:
        index: the input DataFrame's index (kept as the output's index).
        results: :class:`Detections` or :class:`RowError`, aligned with ``index``.

    Returns:
        Columns ``boxes``, ``labels``, ``scores`` (base64 of little-endian float32 N×4, int64 N,
        float32 N); failed rows hold ``None`` and are listed in ``attrs["errors"]``.
    """
    index = index if isinstance(index, pd.Index) else pd.Index(list(index))
    if len(index) != len(results):
        raise BadInputError(f"{len(results)} results for an index of {len(index)} rows")
    columns: dict[str, list[str | None]] = {name: [] for name in OUTPUT_COLUMNS}
    errors: dict[Hashable, str] = {}
    for label, result in zip(index, results, strict=True):
        if isinstance(result, RowError):
            # Index labels may repeat: every failed row's reason is kept, joined under its label.
            errors[label] = (
                f"{errors[label]} | {result.reason}" if label in errors else result.reason
            )
            for name in OUTPUT_COLUMNS:
                columns[name].append(None)
            continue
        columns["boxes"].append(_b64(result.boxes.reshape(-1, 4), _BOXES_DTYPE))
        columns["labels"].append(_b64(result.labels, _LABELS_DTYPE))
        columns["scores"].append(_b64(result.scores, _SCORES_DTYPE))
    output = pd.DataFrame(
        {name: pd.Series(values, index=index, dtype=object) for name, values in columns.items()},
        index=index,
        columns=list(OUTPUT_COLUMNS),
    )
    output.attrs[ERRORS_ATTR] = errors
    return output


def failed_rows(results: Sequence[Detections | RowError]) -> int:
    """How many rows failed (not how many distinct index labels did)."""
    return sum(isinstance(result, RowError) for result in results)


def row_errors(frame: pd.DataFrame) -> dict[Hashable, str]:
    """``{index label: reason}`` of the rows a prediction failed for (empty when none did)."""
    return dict(frame.attrs.get(ERRORS_ATTR, {}))


def _decode_cell(value: object, name: str, dtype: np.dtype, width: int) -> np.ndarray | None:
    if _is_missing(value):
        return None
    if not isinstance(value, str | bytes):
        raise BadInputError(f"column {name!r}: expected base64 text, got {type(value).__name__}")
    data = decode_base64(value)
    item = dtype.itemsize * width
    if len(data) % item:
        raise BadInputError(
            f"column {name!r}: {len(data)} bytes is not a whole number of {dtype.name} "
            f"{'rows of ' + str(width) if width > 1 else 'values'} ({item} bytes each)"
        )
    array = np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="))
    return array.reshape(-1, width) if width > 1 else array


def revert_predict_to_array(prediction: pd.DataFrame) -> pd.DataFrame:
    """Turn a prediction DataFrame back into numpy arrays, like the seed's helper.

    Unlike the seed's helper it leaves failed rows as ``None`` (instead of raising), ignores
    columns other than ``boxes``, ``labels``, ``scores`` and keeps ``attrs`` (the row errors).

    Raises:
        BadInputError: a cell is not base64 or not a whole number of values.
    """
    missing = [name for name in OUTPUT_COLUMNS if name not in prediction.columns]
    if missing:
        raise BadInputError(
            f"prediction has no column {', '.join(map(repr, missing))} "
            f"(columns: {list(prediction.columns)})"
        )
    specs = {"boxes": (_BOXES_DTYPE, 4), "labels": (_LABELS_DTYPE, 1), "scores": (_SCORES_DTYPE, 1)}
    output = pd.DataFrame(index=prediction.index)
    for name in OUTPUT_COLUMNS:
        dtype, width = specs[name]
        output[name] = pd.Series(
            [_decode_cell(v, name, dtype, width) for v in prediction[name].array],
            index=prediction.index,
            dtype=object,
        )
    output.attrs.update(prediction.attrs)
    return output


def encode_image(data: bytes) -> str:
    """Base64 text of one image file's bytes (one cell of the input DataFrame)."""
    return base64.b64encode(data).decode("ascii")


def encode_images(
    images: Iterable[bytes | str | os.PathLike[str]], index: Sequence[Hashable] | None = None
) -> pd.DataFrame:
    """Build the seed's input DataFrame from image files or their bytes.

    Args:
        images: paths of image files, or the bytes of image files (not decoded here: the server
            side of the protocol decides what is a valid image).
        index: optional index labels (default ``0..n-1``).

    Raises:
        ImageDecodeError: a path cannot be read.
    """
    cells = []
    for item in images:
        if isinstance(item, bytes | bytearray | memoryview):
            cells.append(encode_image(bytes(item)))
            continue
        path = Path(item)
        try:
            cells.append(encode_image(path.read_bytes()))
        except OSError as error:
            raise ImageDecodeError(
                f"{path}: cannot read image file ({error.strerror or error})"
            ) from None
    labels = None if index is None else list(index)
    if labels is not None and len(labels) != len(cells):
        raise BadInputError(f"{len(labels)} index labels for {len(cells)} images")
    return pd.DataFrame({IMAGE_COLUMN: pd.Series(cells, index=labels, dtype=object)})
