"""COCO loading and checks: every dataset hazard, layouts, the category map, the report."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from detstack.errors import DatasetError
from training.categories import CategoryMap
from training.coco import DatasetCheckError, format_report, load_dataset, split_dataset

CATEGORIES = [{"id": 0, "name": "zero"}, {"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]


def _image(image_id, width=40, height=30, name=None):
    return {
        "id": image_id,
        "file_name": name or f"images/{image_id}.png",
        "width": width,
        "height": height,
    }


def _ann(ann_id, image_id, bbox, category_id=5, **extra):
    entry = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "iscrowd": 0,
        "area": bbox[-1] * bbox[-2],
        "segmentation": [],
    }
    entry.update(extra)
    return {k: v for k, v in entry.items() if v is not None}


def _load(root, **kwargs):
    return load_dataset(root, workers=2, **kwargs)


# --------------------------------------------------------------------------- handled hazards


def test_box_reaching_outside_the_image_is_clamped_in_targets_and_ground_truth(
    tmp_path, write_coco
):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [-5, 20, 20, 20]), _ann(2, 1, [2, 2, 5, 5])],
        categories=CATEGORIES,
    )
    dataset = _load(root)
    boxes = dataset.target(1)["boxes"]
    np.testing.assert_array_equal(boxes, np.array([[0, 20, 15, 30], [2, 2, 7, 7]], np.float32))
    assert dataset.report.clamped_boxes == 1
    gt = dataset.to_coco_api([1])
    assert gt.anns[1]["bbox"] == [0.0, 20.0, 15.0, 10.0]


@pytest.mark.parametrize("bbox", [[3, 3, 0, 5], [3, 3, 5, 0], [3, 3, -4, 5]])
def test_zero_or_negative_size_box_is_dropped_and_counted(tmp_path, write_coco, bbox):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, bbox), _ann(2, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    dataset = _load(root)
    assert len(dataset.target(1)["boxes"]) == 1
    assert dataset.report.dropped_empty_boxes == 1
    assert [a["id"] for a in dataset.to_coco_api().anns.values()] == [2]


def test_box_entirely_outside_the_image_is_dropped_and_counted(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [50, 5, 10, 10]), _ann(2, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    dataset = _load(root)
    assert len(dataset.target(1)["boxes"]) == 1
    assert dataset.report.dropped_outside_boxes == 1


def test_crowd_annotation_is_not_a_training_target_but_stays_in_the_ground_truth(
    tmp_path, write_coco
):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[
            _ann(1, 1, [1, 1, 10, 10], iscrowd=1),
            _ann(2, 1, [20, 5, 8, 8], category_id=9),
        ],
        categories=CATEGORIES,
    )
    dataset = _load(root)
    target = dataset.target(1)
    assert target["labels"].tolist() == [3]
    gt = dataset.to_coco_api()
    assert gt.anns[1]["iscrowd"] == 1 and gt.anns[2]["iscrowd"] == 0
    assert dataset.report.crowd_annotations == 1


def test_image_without_annotations_is_kept_as_a_negative(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(1, 1, [1, 1, 10, 10])],
        categories=CATEGORIES,
    )
    dataset = _load(root)
    assert dataset.image_ids == [1, 2]
    target = dataset.target(2)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == np.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == np.int64
    assert dataset.report.negative_images == 1


def test_missing_iscrowd_segmentation_area_and_id_are_tolerated_and_counted(tmp_path, write_coco):
    annotation = {"image_id": 1, "category_id": 0, "bbox": [2, 3, 4, 5]}
    root = write_coco(tmp_path, images=[_image(1)], annotations=[annotation], categories=CATEGORIES)
    dataset = _load(root)
    report = dataset.report
    assert (report.missing_iscrowd, report.missing_segmentation, report.missing_area) == (1, 1, 1)
    assert report.assigned_annotation_ids == 1
    (gt,) = dataset.to_coco_api().anns.values()
    assert gt["area"] == 20.0 and gt["iscrowd"] == 0


def test_missing_width_and_height_are_taken_from_the_file(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[{"id": 1, "file_name": "a.png"}],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={"a.png": (33, 21)},
    )
    dataset = _load(root)
    assert dataset.image_size(1) == (33, 21)
    assert dataset.report.sizes_from_files == 1


# --------------------------------------------------------------------------- category map


def test_non_contiguous_category_ids_including_zero_map_to_labels_and_back(tmp_path, write_coco):
    annotations = [
        _ann(1, 1, [1, 1, 5, 5], category_id=9),
        _ann(2, 1, [8, 1, 5, 5], category_id=0),
        _ann(3, 1, [16, 1, 5, 5], category_id=5),
    ]
    root = write_coco(
        tmp_path, images=[_image(1)], annotations=annotations, categories=list(reversed(CATEGORIES))
    )
    dataset = _load(root)
    assert dataset.categories == CategoryMap((0, 5, 9), ("zero", "five", "nine"))
    labels = dataset.target(1)["labels"].tolist()
    assert labels == [3, 1, 2]
    assert [dataset.categories.to_dataset_id(label) for label in labels] == [9, 0, 5]
    assert CategoryMap.from_dict(json.loads(json.dumps(dataset.categories.to_dict()))) == (
        dataset.categories
    )
    gt = dataset.to_coco_api()
    assert sorted(gt.getCatIds()) == [0, 5, 9]
    assert sorted(a["category_id"] for a in gt.anns.values()) == [0, 5, 9]
    assert [c.dataset_id for c in dataset.report.categories] == [0, 5, 9]
    assert [c.annotations for c in dataset.report.categories] == [1, 1, 1]


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


# --------------------------------------------------------------------------- layouts


def test_coco_2017_layout_with_annotations_folder_and_split_images_folder(tmp_path, write_coco):
    write_coco(
        tmp_path,
        images=[_image(1, name="000001.jpg")],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={"000001.jpg": None},
        annotations_name="annotations/instances_val2017.json",
    )
    from tests.fixtures.data import write_png

    write_png(tmp_path / "val2017/000001.jpg", (40, 30))
    dataset = _load(tmp_path)
    assert dataset.annotations_file == "annotations/instances_val2017.json"
    assert dataset.image_url(1).endswith("val2017/000001.jpg")
    assert _load(tmp_path / "annotations/instances_val2017.json").image_ids == [1]


def test_explicit_annotations_file_selects_a_split(synthetic_dataset_factory):
    root = synthetic_dataset_factory("split", images=6, size=48, val_fraction=0.5)
    val = _load(root / "annotations_val.json")
    full = _load(root)
    assert len(val.image_ids) == 3 and len(full.image_ids) == 6
    assert val.fingerprint != full.fingerprint


def test_several_annotation_files_ask_which_one(tmp_path, write_coco):
    for name in ("annotations/instances_train.json", "annotations/instances_val.json"):
        write_coco(
            tmp_path,
            images=[_image(1)],
            annotations=[_ann(1, 1, [1, 1, 4, 4])],
            categories=CATEGORIES,
            annotations_name=name,
        )
    with pytest.raises(DatasetError, match=r"several annotation files .*instances_train\.json"):
        _load(tmp_path)


def test_folder_without_annotations_says_what_it_expected(tmp_path):
    with pytest.raises(DatasetError, match=r"expected annotations\.json"):
        _load(tmp_path)


# --------------------------------------------------------------------------- the dataset object


def test_synthetic_dataset_loads_clean_with_images_as_rgb_uint8(synthetic_dataset):
    dataset = _load(synthetic_dataset)
    report = dataset.report
    assert report.usable and report.images == 16
    assert report.clamped_boxes == report.dropped_empty_boxes == report.missing_files == 0
    pixels = dataset.read_image(dataset.image_ids[0])
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert dataset.image_size(dataset.image_ids[0]) == (64, 64)
    text = format_report(report)
    assert "circle" in text and "usable" in text


def test_fingerprint_is_stable_and_follows_the_annotations(tmp_path, write_coco):
    kwargs = {
        "images": [_image(1)],
        "annotations": [_ann(1, 1, [1, 1, 4, 4])],
        "categories": CATEGORIES,
    }
    first = _load(write_coco(tmp_path / "a", **kwargs)).fingerprint
    assert _load(write_coco(tmp_path / "b", **kwargs)).fingerprint == first
    kwargs["annotations"] = [_ann(1, 1, [1, 1, 4, 5])]
    assert _load(write_coco(tmp_path / "c", **kwargs)).fingerprint != first
    assert len(first) == 64


def test_dataset_survives_pickling_for_dataloader_workers(synthetic_dataset):
    dataset = _load(synthetic_dataset)
    clone = pickle.loads(pickle.dumps(dataset))
    image_id = dataset.image_ids[3]
    np.testing.assert_array_equal(clone.read_image(image_id), dataset.read_image(image_id))
    np.testing.assert_array_equal(
        clone.target(image_id)["boxes"], dataset.target(image_id)["boxes"]
    )


def test_target_is_a_copy_that_transforms_may_change(synthetic_dataset):
    dataset = _load(synthetic_dataset)
    image_id = next(i for i in dataset.image_ids if len(dataset.target(i)["boxes"]))
    dataset.target(image_id)["boxes"][:] = -1
    assert (dataset.target(image_id)["boxes"] >= 0).all()


def test_split_is_deterministic_disjoint_and_complete():
    ids = list(range(100, 150))
    train, val = split_dataset(ids, 0.2, seed=3)
    assert (train, val) == split_dataset(list(reversed(ids)), 0.2, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == ids
    assert split_dataset(ids, 0.2, seed=4)[1] != val
    assert split_dataset(ids, 0.0, seed=3) == (ids, [])
    assert len(split_dataset([1, 2], 0.01, seed=0)[1]) == 1
    with pytest.raises(DatasetError, match="val_fraction must be in"):
        split_dataset(ids, 1.0, seed=0)


# --------------------------------------------------------------------------- CLI


def test_cli_check_prints_the_report_and_exits_0_on_a_usable_dataset(synthetic_dataset, capsys):
    from cli.main import main

    assert main(["data", "check", str(synthetic_dataset)]) == 0
    out = capsys.readouterr().out
    assert "status" in out and "usable" in out and "triangle" in out


def test_cli_check_exits_1_naming_the_problem(tmp_path, write_coco, capsys):
    from cli.main import main

    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4], category_id=3)],
        categories=CATEGORIES,
    )
    assert main(["data", "check", str(root), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unknown_category_annotations"] == 1
    assert "category_id 3" in captured.err


def test_declared_category_without_training_boxes_is_counted_and_logged(
    tmp_path, write_coco, caplog
):
    root = write_coco(
        tmp_path, images=[_image(1)], annotations=[_ann(1, 1, [1, 1, 4, 4])], categories=CATEGORIES
    )
    with caplog.at_level("WARNING", logger="training.coco"):
        dataset = _load(root)
    assert dataset.report.categories_without_boxes == 2
    assert dataset.report.to_dict()["usable"] is True
    assert "category nine (id 9) has no training boxes" in caplog.text


def test_integral_float_sizes_are_accepted(tmp_path, write_coco):
    image = {"id": 1, "file_name": "a.png", "width": 40.0, "height": 30.0}
    root = write_coco(
        tmp_path,
        images=[image],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
        pixels={"a.png": (40, 30)},
    )
    assert _load(root).image_size(1) == (40, 30)


# --------------------------------------------------------------------------- hostile files


@pytest.fixture(autouse=True)
def _image_check_cache_in_tmp(tmp_path, monkeypatch):
    """The image check caches its results under the cache dir: keep it inside the test."""
    monkeypatch.setenv("DETSTACK_CACHE_DIR", str(tmp_path / "cache"))


def test_duplicate_annotation_ids_fail_naming_the_id_and_every_place(tmp_path, write_coco):
    # pycocotools keeps only the last annotation of an id: evaluation would lose a box.
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(7, 1, [1, 1, 4, 4]), _ann(8, 1, [5, 5, 4, 4]), _ann(7, 2, [2, 2, 3, 3])],
        categories=CATEGORIES,
    )
    with pytest.raises(
        DatasetCheckError,
        match=r"1 duplicate annotation ids: id 7 at annotations\[0\], "
        r"annotations\[2\]",
    ) as error:
        _load(root)
    assert error.value.report.duplicate_annotation_ids == 1
    assert "duplicate annotation id" in format_report(error.value.report)


def _truncated_png(width=40, height=30):
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_truncated_image_whose_header_is_fine_fails_the_check(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(2)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    (root / "images/2.png").write_bytes(_truncated_png())
    with pytest.raises(
        DatasetCheckError, match=r"1 unreadable image files: .*images/2\.png: truncated"
    ):
        _load(root)
    assert _load(root, decode_images=False).image_ids == [1, 2]  # the header probe misses it


def test_image_check_decodes_each_file_once_then_only_what_changed(
    tmp_path, write_coco, monkeypatch
):
    import training._image_check as image_check

    decoded = []
    real_decode = image_check.decode_image

    def counting_decode(data, *, source, max_pixels):
        decoded.append(source.rsplit("/", 1)[-1])
        return real_decode(data, source=source, max_pixels=max_pixels)

    monkeypatch.setattr(image_check, "decode_image", counting_decode)
    root = write_coco(
        tmp_path / "ds",
        images=[_image(i) for i in (1, 2, 3)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    _load(root)
    assert sorted(decoded) == ["1.png", "2.png", "3.png"]
    decoded.clear()
    _load(root)
    assert decoded == []  # a rerun reads the cache
    Image.new("RGB", (40, 30), (1, 2, 3)).save(root / "images/2.png")  # changed content
    (root / "images/3.png").write_bytes(_truncated_png())
    with pytest.raises(DatasetCheckError, match=r"images/3\.png"):
        _load(root)
    assert sorted(decoded) == ["2.png", "3.png"]
    decoded.clear()
    with pytest.raises(DatasetCheckError, match=r"images/3\.png"):
        _load(root)
    assert decoded == ["3.png"]  # a failure is not cached: a fixed file is checked again
    assert list((tmp_path / "cache" / "image-check").glob("*.json"))


@pytest.mark.parametrize(
    ("image_id", "shown"),
    [
        (2**70, r"1180591620717411303424; expected an integer in 0\.\.2\*\*63-1"),
        (2**63, r"9223372036854775808; expected an integer in 0\.\.2\*\*63-1"),
        (-1, r"-1; expected an integer in 0\.\.2\*\*63-1"),
        (True, r"True \(type bool\)"),
        (1.0, r"1\.0 \(type float\)"),
    ],
)
def test_image_id_outside_int64_or_not_an_integer_fails_naming_the_value(
    tmp_path, write_coco, image_id, shown
):
    root = write_coco(
        tmp_path,
        images=[_image(1), _image(image_id, name="big.png")],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=rf"images\[1\] has id {shown}"):
        _load(root)


def test_annotation_and_category_ids_outside_int64_fail_naming_the_value(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4]), _ann(2**70, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    with pytest.raises(DatasetCheckError, match=r"annotations\[1\] has id 1180591620717411303424"):
        _load(root)
    root = write_coco(
        tmp_path / "c",
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=[*CATEGORIES, {"id": -3, "name": "minus"}],
    )
    with pytest.raises(DatasetError, match=r"categories\[3\] has id -3; expected an integer"):
        _load(root)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            '{"images": [], "annotations": ' + "[" * 100_000 + "]" * 100_000 + "}",
            r"nests arrays/objects too deeply to parse \(deeper than 500 levels at line 1 "
            r"column 530\)",
        ),
        (
            '{"images": [{"id": 1,\n"width": ' + "7" * 5000 + '}], "categories": []}',
            r"number too long to parse: a 5000-digit integer at line 2 column 10",
        ),
        (
            '{"images": [], "categories": [1]}',
            r"categories\[0\] is 1 \(type int\); expected an object with 'id' and 'name'",
        ),
        (
            '{"images": [], "categories": [{"id": 1, "name": [[["x"]]]}]}',
            r"category 1 has name \[\[\[.*\]\]\]; expected a string",
        ),
    ],
    ids=["deep nesting", "5000-digit integer", "category not an object", "name not a string"],
)
def test_malformed_annotation_files_fail_with_a_dataset_error_naming_the_place(
    tmp_path, document, message
):
    (tmp_path / "annotations.json").write_text(document)
    with pytest.raises(DatasetError, match=message):
        _load(tmp_path)


def test_huge_numbers_and_names_are_named_briefly_not_crashed_on(tmp_path, write_coco):
    root = write_coco(
        tmp_path,
        images=[_image(1), {"id": 2, "file_name": "x" * 5000, "width": 4, "height": 4}],
        annotations=[_ann(1, 1, [1, 1, 4, 4]), _ann(2, 1, [1, 1, 10**400, 4], area=10**400)],
        categories=CATEGORIES,
        pixels={"x" * 5000: None},
    )
    with pytest.raises(DatasetCheckError) as error:
        _load(root)
    report = error.value.report
    assert (report.missing_files, report.malformed_entries) == (1, 1)
    assert len(str(error.value)) < 1500  # the 5000-character name and 400-digit int are cut


def _mutated_documents(rng, base, count):
    """Random values of every JSON type put at random places of a valid COCO document."""
    values = [None, True, 0, -1, 2**63, 2**70, 10**400, 1.5, float("nan"), float("inf"), "",
              "../x.png", "x" * 300, "\x00", [], [1], [[[]]], {}, {"id": 1}, [1, 2, 3, 4],
              [1e308, 1e308, 1e308, 1e308]]  # fmt: skip

    def places(node, path=()):
        if path:
            yield path
        if isinstance(node, dict | list):
            for key, child in node.items() if isinstance(node, dict) else enumerate(node):
                yield from places(child, (*path, key))

    for _ in range(count):
        document = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(list(places(document)))
            holder = document
            for key in parents:
                holder = holder[key]
            if rng.random() < 0.85:
                holder[last] = json.loads(json.dumps(rng.choice(values)))
            elif isinstance(holder, dict):
                del holder[last]
            else:
                holder.append(json.loads(json.dumps(holder[last])))
        yield document


def test_mutated_annotation_files_load_or_raise_a_dataset_error(tmp_path, write_coco):
    import random

    root = write_coco(
        tmp_path,
        images=[_image(1, 8, 6), _image(2, 8, 6)],
        annotations=[_ann(1, 1, [1, 1, 3, 3]), _ann(2, 2, [0, 0, 4, 2], iscrowd=1)],
        categories=CATEGORIES,
    )
    base = json.loads((root / "annotations.json").read_text())
    escaped = []
    for case, document in enumerate(_mutated_documents(random.Random(10), base, 120)):
        (root / "annotations.json").write_text(json.dumps(document))
        try:
            _load(root)
        except DatasetError:
            continue
        except Exception as error:  # collecting every escape is the point
            escaped.append(f"case {case}: {type(error).__name__}: {error}"[:300])
    assert not escaped, "\n".join(escaped)


def test_cli_check_decodes_with_the_given_number_of_workers(tmp_path, write_coco, capsys):
    from cli.main import main

    root = write_coco(
        tmp_path, images=[_image(1)], annotations=[_ann(1, 1, [1, 1, 4, 4])], categories=CATEGORIES
    )
    (root / "images/1.png").write_bytes(_truncated_png())
    assert main(["data", "check", str(root), "--workers", "2"]) == 1
    assert "truncated or corrupt image data" in capsys.readouterr().err


def test_a_corrupt_image_check_cache_is_ignored_and_rewritten(tmp_path, write_coco, caplog):
    root = write_coco(
        tmp_path / "ds",
        images=[_image(1)],
        annotations=[_ann(1, 1, [1, 1, 4, 4])],
        categories=CATEGORIES,
    )
    _load(root)
    (cache,) = (tmp_path / "cache" / "image-check").glob("*.json")
    cache.write_text('{"header": ' + "[" * 5000)
    with caplog.at_level("WARNING", logger="training._image_check"):
        assert _load(root).image_ids == [1]
    assert "ignoring the image check cache" in caplog.text
    assert json.loads(cache.read_text())["entries"]
