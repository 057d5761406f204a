"""COCO loading: handled hazards, the category map, layouts, the dataset object, the CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from detstack.errors import DatasetError
from tests.training._coco_cases import (  # noqa: F401 (the fixture is used by every test)
    CATEGORIES,
    _ann,
    _image,
    _image_check_cache_in_tmp,
    _load,
)
from training.categories import CategoryMap
from training.coco import format_report, split_dataset

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
