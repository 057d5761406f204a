"""The base64 DataFrame codec: the seed's wire format, strict decoding, per-row failures."""

from __future__ import annotations

import base64
import io
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from client.codec import (
    IMAGE_COLUMN,
    OUTPUT_COLUMNS,
    Detections,
    RowError,
    decode_base64,
    decode_frame,
    decode_row,
    detection_to_dict,
    encode_image,
    encode_images,
    encode_predictions,
    revert_predict_to_array,
    row_errors,
)
from detstack.errors import BadInputError, ImageDecodeError


def _png(width: int = 6, height: int = 4, colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(width: int = 16, height: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _detections(count: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 50, size=(count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + 5], axis=1).astype(np.float32)
    return Detections(
        boxes=boxes,
        scores=rng.uniform(0, 1, size=count).astype(np.float32),
        labels=rng.integers(0, 90, size=count).astype(np.int64),
    )


def _seed_revert_predict_to_array(pred: pd.DataFrame) -> pd.DataFrame:
    """The seed tutorial's ``ModelWrapper.revert_predict_to_array``, logic kept unchanged.

    Users run this exact code on what our client returns, so the test runs it too.
    """
    pred_decode = pred.applymap(base64.b64decode)
    for key in pred_decode.keys():  # noqa: SIM118 - the seed's code, unchanged
        if key == "labels":
            pred_decode[key] = pred_decode[key].apply(lambda x: np.frombuffer(x, dtype=int))
        elif key == "boxes":
            pred_decode[key] = pred_decode[key].apply(
                lambda x: np.frombuffer(x, dtype=np.float32).reshape(-1, 4)
            )
        else:
            pred_decode[key] = pred_decode[key].apply(lambda x: np.frombuffer(x, dtype=np.float32))
    return pred_decode


# --- base64 -------------------------------------------------------------------------------


def test_decode_base64_accepts_a_data_url_prefix_and_line_wrapped_text():
    data = bytes(range(256)) * 3
    text = base64.encodebytes(data).decode("ascii")  # wrapped at 76 characters
    assert "\n" in text
    assert decode_base64(text) == data
    assert decode_base64("data:image/png;base64," + encode_image(data)) == data
    assert decode_base64("DATA:image/jpeg;name=x.jpg;base64," + encode_image(data)) == data


@pytest.mark.parametrize(
    "text",
    ["abc", "ab$c", "YWJj-_==", "YW Jj=", "data:image/png,rawbytes", "données"],
    ids=[
        "bad-padding",
        "bad-char",
        "url-safe",
        "bad-padding-after-space",
        "not-base64-url",
        "non-ascii",
    ],
)
def test_decode_base64_refuses_anything_but_standard_base64(text):
    with pytest.raises(BadInputError):
        decode_base64(text)


# --- input rows ---------------------------------------------------------------------------


def test_decode_row_returns_the_contract_uint8_chw_array():
    chw = decode_row(encode_image(_png(6, 4, (10, 200, 30))))
    assert isinstance(chw, np.ndarray)
    assert chw.dtype == np.uint8
    assert chw.shape == (3, 4, 6)
    assert chw.flags["C_CONTIGUOUS"]
    assert (chw[:, 0, 0] == [10, 200, 30]).all()


def _bomb() -> str:
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")
    return encode_image(buffer.getvalue())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        (float("nan"), "missing"),
        (pd.NA, "missing"),
        (42, "expected a base64 string, got int"),
        ("", "empty"),
        ("not base64!", "invalid base64"),
        (encode_image(b"%PDF-1.7 plain document"), "not an image"),
        (encode_image(_jpeg()[:60]), "truncated|corrupt"),
        ("@bomb", "decompression bomb"),
    ],
    ids=["none", "nan", "na", "int", "empty", "bad-base64", "pdf", "truncated", "bomb"],
)
def test_decode_row_turns_each_kind_of_bad_cell_into_a_row_error(value, reason):
    if isinstance(value, str) and value == "@bomb":
        value = _bomb()
    result = decode_row(value, "img-7", max_pixels=1_000_000)
    assert isinstance(result, RowError)
    assert result.index == "img-7"
    assert "'img-7'" in result.reason
    assert re.search(reason, result.reason), result.reason


def test_decode_frame_keeps_good_rows_and_marks_bad_ones_with_a_non_default_index():
    frame = pd.DataFrame(
        {IMAGE_COLUMN: [encode_image(_png()), "###", None, encode_image(_jpeg())]},
        index=["a", "b", 10, "d"],
    )
    rows = decode_frame(frame)
    assert [type(r).__name__ for r in rows] == ["ndarray", "RowError", "RowError", "ndarray"]
    assert [r.index for r in rows if isinstance(r, RowError)] == ["b", 10]
    assert rows[3].shape == (3, 12, 16)


def test_decode_frame_reads_a_single_column_of_another_name_like_the_seed():
    frame = pd.DataFrame({"whatever": [encode_image(_png())]})
    (row,) = decode_frame(frame)
    assert row.shape == (3, 4, 6)


def test_decode_frame_refuses_a_frame_without_an_image_column():
    frame = pd.DataFrame({"a": ["x"], "b": ["y"]})
    with pytest.raises(BadInputError, match="no 'image_data' column"):
        decode_frame(frame)
    with pytest.raises(BadInputError, match="DataFrame"):
        decode_frame([encode_image(_png())])


def test_decode_frame_of_an_empty_frame_is_empty():
    assert decode_frame(pd.DataFrame({IMAGE_COLUMN: []})) == []


# --- outputs ------------------------------------------------------------------------------


def test_encode_predictions_writes_the_seed_columns_dtypes_and_byte_layout():
    detections = _detections(3)
    output = encode_predictions(pd.Index([5]), [detections])
    assert list(output.columns) == ["boxes", "labels", "scores"] == list(OUTPUT_COLUMNS)
    assert list(output.index) == [5]
    boxes = base64.b64decode(output.loc[5, "boxes"])
    labels = base64.b64decode(output.loc[5, "labels"])
    scores = base64.b64decode(output.loc[5, "scores"])
    assert len(boxes) == 3 * 4 * 4 and len(labels) == 3 * 8 and len(scores) == 3 * 4
    assert boxes == detections.boxes.astype("<f4").tobytes()
    assert labels == detections.labels.astype("<i8").tobytes()
    assert scores == detections.scores.astype("<f4").tobytes()
    assert row_errors(output) == {}


def test_the_seed_revert_helper_works_unchanged_on_our_output():
    results = [_detections(4, seed=1), _detections(0), _detections(1, seed=2)]
    output = encode_predictions(pd.Index(["x", "y", "z"]), results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # DataFrame.applymap, as the seed uses
        reverted = _seed_revert_predict_to_array(output)
    for label, expected in zip(["x", "y", "z"], results, strict=True):
        np.testing.assert_array_equal(reverted.loc[label, "boxes"], expected.boxes)
        np.testing.assert_array_equal(reverted.loc[label, "labels"], expected.labels)
        np.testing.assert_array_equal(reverted.loc[label, "scores"], expected.scores)
    assert reverted.loc["y", "boxes"].shape == (0, 4)


def test_revert_round_trips_and_keeps_failed_rows_as_none():
    good = _detections(2, seed=3)
    output = encode_predictions(
        pd.Index([7, 3, 9]), [good, RowError(3, "row 3: not an image"), _detections(0)]
    )
    assert output.loc[3].isna().all()
    assert row_errors(output) == {3: "row 3: not an image"}
    arrays = revert_predict_to_array(output)
    assert list(arrays.index) == [7, 3, 9]
    np.testing.assert_array_equal(arrays.loc[7, "boxes"], good.boxes)
    assert arrays.loc[7, "labels"].dtype == np.int64
    assert arrays.loc[7, "scores"].dtype == np.float32
    assert arrays.loc[3, "boxes"] is None
    assert arrays.loc[9, "boxes"].shape == (0, 4)
    assert row_errors(arrays) == {3: "row 3: not an image"}


def test_revert_refuses_bytes_that_are_not_whole_values():
    output = pd.DataFrame({"boxes": [encode_image(b"\0" * 12)], "labels": [""], "scores": [""]})
    with pytest.raises(BadInputError, match="boxes"):
        revert_predict_to_array(output)
    with pytest.raises(BadInputError, match="no column 'labels'"):
        revert_predict_to_array(output[["boxes"]])


def test_encode_predictions_of_no_rows_is_an_empty_frame_with_the_seed_columns():
    output = encode_predictions(pd.Index([]), [])
    assert list(output.columns) == list(OUTPUT_COLUMNS)
    assert len(output) == 0
    assert len(revert_predict_to_array(output)) == 0


def test_detections_refuse_inconsistent_shapes_and_filter_by_score():
    with pytest.raises(BadInputError, match="inconsistent"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int64))
    detections = Detections(
        np.zeros((2, 4), np.float32),
        np.array([0.2, 0.9], np.float32),
        np.array([1, 2], np.int64),
        names=("cat", "dog"),
    )
    kept = detections.above(0.5)
    assert len(kept) == 1 and kept.names == ("dog",)
    assert kept.to_dict()["detections"][0]["name"] == "dog"


# --- building inputs ----------------------------------------------------------------------


def test_encode_images_reads_paths_and_bytes_into_the_seed_input_frame(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    frame = encode_images([path, _jpeg()], index=["first", "second"])
    assert list(frame.columns) == [IMAGE_COLUMN]
    assert list(frame.index) == ["first", "second"]
    assert base64.b64decode(frame.loc["first", IMAGE_COLUMN]) == _png()
    assert decode_frame(frame)[1].shape == (3, 12, 16)


def test_encode_images_names_a_file_it_cannot_read(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"missing\.jpg"):
        encode_images([tmp_path / "missing.jpg"])


def test_every_detection_is_written_to_json_with_one_rounding():
    detections = Detections(
        np.array([[1.23456, 2.0, 3.98765, 4.5]], np.float32),
        np.array([0.987654], np.float32),
        np.array([7], np.int64),
        names=("dog",),
        model_version="3",
    )
    expected = {"box": [1.23, 2.0, 3.99, 4.5], "score": 0.9877, "label": 7, "name": "dog"}
    assert detections.to_dict() == {"model_version": "3", "detections": [expected]}
    assert detection_to_dict([1.23456, 2.0, 3.98765, 4.5], 0.987654, 7, "dog") == expected
