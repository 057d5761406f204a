"""COCO checks that refuse a dataset: each fatal hazard names what is wrong, all at once."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from detstack.errors import DatasetError
from tests.training._coco_cases import (  # noqa: F401 (the fixture is used by every test)
    CATEGORIES,
    _ann,
    _image,
    _image_check_cache_in_tmp,
    _load,
)
from training.coco import DatasetCheckError, format_report

# --------------------------------------------------------------------------- fatal hazards


def test_unknown_category_id_fails_naming_the_annotation_and_the_id(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(41, 1, [1, 1, 4, 4], category_id=6)],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=r"annotation 41 \(category_id 6; known: 0, 5, 9"):
        _load(root)


def test_annotation_of_an_unknown_image_fails_naming_it(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4]), _ann(2, 77, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=r"annotation 2 \(image_id 77\)"):
        _load(root)


def test_missing_image_file_fails_naming_the_path(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={"images/2.png": None},
    )
    with pytest.raises(DatasetCheckError, match=r"1 missing image files: .*images/2\.png") as error:
        _load(root)
    assert error.value.report.missing_files == 1


def test_unreadable_image_file_fails_naming_the_path(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    (root / "images/2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DatasetCheckError, match=r"unreadable image files: .*images/2.png"):
        _load(root)


@pytest.mark.parametrize(
    "file_name",
    ["../outside.png", "/etc/hostname", "a/../../x.png", "..\\win.png", "C:/data/x.png"],
)
def test_file_name_escaping_the_dataset_root_fails_without_reading_it(
    tmp_path, write_coco, file_name
):
    root = tmp_path / "ds"
    (tmp_path / "outside.png").write_bytes(b"not read")
    write_coco(
        root,
        images=[_image(1), {"id": 2, "file_name": file_name, "width": 4, "height": 4}],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={file_name: None},
    )
    with pytest.raises(DatasetCheckError, match="escaping the dataset root: image 2") as error:
        _load(root)
    assert error.value.report.escaping_file_names == 1
    assert error.value.report.unreadable_files == 0


def test_declared_size_differing_from_the_file_fails_naming_both_sizes(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1, 40, 30)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={"images/1.png": (41, 30)},
    )
    with pytest.raises(DatasetCheckError, match=r"declared 40x30 but is 41x30"):
        _load(root)


def _rotated_jpeg(stored_size, orientation):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", stored_size, (10, 200, 30)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_exif_rotated_image_is_checked_against_its_oriented_size(tmp_path, write_coco):
    # Stored 40x20, orientation 6 (rotate 90°): a person sees 20x40, and so must the dataset.
    root = write_coco(
        tmp_path,
        images=[_image(1, 20, 40, "a.jpg")],
        annotations=[_ann(1, 1, [1, 1, 10, 30])],
        categories=CATEGORIES,
        pixels={"a.jpg": None},
    )
    (root / "a.jpg").write_bytes(_rotated_jpeg((40, 20), 6))
    dataset = _load(root)
    assert dataset.read_image(1).shape == (40, 20, 3)


def test_size_declared_before_exif_rotation_fails_with_a_hint(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1, 40, 20, "a.jpg")],
        annotations=[_ann(1, 1, [1, 1, 10, 10])],
        categories=CATEGORIES,
        pixels={"a.jpg": None},
    )
    (root / "a.jpg").write_bytes(_rotated_jpeg((40, 20), 6))
    with pytest.raises(DatasetCheckError, match="before EXIF orientation"):
        _load(root)


@pytest.mark.parametrize(
    "annotations",
    [[], [_ann(1, 1, [1, 1, 4, 4], iscrowd=1)], [_ann(1, 1, [1, 1, 0, 4])]],
    ids=["no annotations", "only crowd", "only empty boxes"],
)
def test_nothing_left_to_train_on_fails(tmp_path, write_coco, annotations):
    root = write_coco(tmp_path, images=[_image(1)], annotations=annotations, categories=CATEGORIES)
    with pytest.raises(DatasetCheckError, match="nothing left to train on"):
        _load(root)


def test_every_fatal_problem_is_reported_at_once(tmp_path, write_coco):
    images = [_image(1), _image(2), _image(3, name="../x.png"), _image(4)]
    annotations = [_ann(1, 1, [1, 1, 4, 4], category_id=2), _ann(2, 4, [1, 1, 4, 4])]
    root = write_coco(
        tmp_path,
        images=images,
        annotations=annotations,
        categories=CATEGORIES,
        pixels={"images/2.png": None, "../x.png": None, "images/4.png": (5, 5)},
    )
    with pytest.raises(DatasetCheckError) as error:
        _load(root)
    report = error.value.report
    assert (
        report.unknown_category_annotations,
        report.missing_files,
        report.escaping_file_names,
        report.size_mismatches,
    ) == (1, 1, 1, 1)
    assert len(report.errors) == 4
    assert "NOT usable" in format_report(report)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON: .* line 1"),
        ("[1, 2]", "holds a list"),
        ('{"images": [], "annotations": []}', "'categories' is missing"),
        ('{"images": [], "categories": []}', "no categories"),
    ],
)
def test_annotations_that_are_not_coco_fail_with_a_clear_message(tmp_path, document, message):
    (tmp_path / "annotations.json").write_text(document)
    with pytest.raises(DatasetError, match=message):
        _load(tmp_path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "1", "file_name": "a.png", "width": 4, "height": 4}, "has id '1'"),
        ({"id": 1, "file_name": "a.png", "width": 0, "height": 4}, "width/height 0x4"),
        ({"id": 1, "width": 4, "height": 4}, "file_name None"),
        ({"id": 1, "file_name": "a.png", "width": 4.5, "height": 4}, "width/height 4.5x4"),
    ],
)
def test_malformed_image_entries_are_named(tmp_path, write_coco, entry, message):
    root = write_coco(
        tmp_path,
        images=[_image(9), entry],
        annotations=[_ann(1, 9, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={"a.png": (4, 4)},
    )
    with pytest.raises(DatasetCheckError, match=message):
        _load(root)


def test_malformed_bbox_is_named(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4]), _ann(2, 1, [1, 1, 4])],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=r"annotation 2 has bbox \[1, 1, 4\]"):
        _load(root)
