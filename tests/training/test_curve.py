"""Training's figures and per-category AP: hand-computed COCOeval cases, valid PNGs, "n/a"."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from training.categories import CategoryMap
from training.checkpoint import load_checkpoint
from training.engine import (
    PER_CATEGORY,
    coco_metrics,
    evaluate,
    format_metric,
    per_category_ap,
    per_category_metrics,
)
from training.figures import (
    plot_category_ap,
    plot_training_curve,
    read_epochs,
    write_training_curve,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Two 64x64 images, three categories. Every box is 10x10 (area 100: "small" for COCO, so APm
# and APl have no ground truth and COCO reports -1 for them).
#   circle (id 1): one box on each image.
#   square (id 5): one box on each image.
#   triangle (id 9): no box at all.
_BOX = [0.0, 0.0, 10.0, 10.0]
_ELSEWHERE = [40.0, 40.0, 10.0, 10.0]


def _ground_truth() -> COCO:
    annotations = [
        {"image_id": image, "category_id": category, "bbox": list(box), "area": 100.0}
        for image, category, box in [
            (1, 1, _BOX),
            (2, 1, _BOX),
            (1, 5, _ELSEWHERE),
            (2, 5, _ELSEWHERE),
        ]
    ]
    for number, annotation in enumerate(annotations, start=1):
        annotation.update(id=number, iscrowd=0)
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2)],
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "circle"},
            {"id": 5, "name": "square"},
            {"id": 9, "name": "triangle"},
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# circle: a perfect box on image 1 (0.9) and, on image 2, a box of IoU 0.62 with the truth
#   (10 x 6.2 inside 10 x 10), a true positive at IoU thresholds 0.50, 0.55, 0.60 only.
# square: a perfect box on image 1 (0.9) and a false positive far from the truth on image 2 (0.8),
#   so the box of image 2 is never found: recall stops at 0.5 at every threshold.
_DETECTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": list(_BOX), "score": 0.9},
    {"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 6.2], "score": 0.8},
    {"image_id": 1, "category_id": 5, "bbox": list(_ELSEWHERE), "score": 0.9},
    {"image_id": 2, "category_id": 5, "bbox": [20.0, 0.0, 10.0, 10.0], "score": 0.8},
]

# COCO interpolates precision at 101 recall points 0.00..1.00. Recall 0.5 with precision 1 up to
# it reaches 51 of them (0.00..0.50); the rest score 0.
_HALF = 51 / 101
_CIRCLE_AP = (3 * 1.0 + 7 * _HALF) / 10  # full recall at 3 of the 10 IoU thresholds
_SQUARE_AP = _HALF


def _accumulated(coco_gt: COCO, detections: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def test_per_category_ap_matches_the_hand_computed_average_over_iou_and_recall():
    evaluation = _accumulated(_ground_truth(), _DETECTIONS)
    ap = per_category_ap(evaluation)
    assert set(ap) == {1, 5, 9}
    assert ap[1] == pytest.approx(_CIRCLE_AP)
    assert ap[5] == pytest.approx(_SQUARE_AP)
    assert ap[9] == -1.0  # no ground truth: COCO's -1, not a zero
    # The mean over the categories that have ground truth is COCO's own AP.
    assert (ap[1] + ap[5]) / 2 == pytest.approx(evaluation.stats[0])


def test_per_category_ap_at_iou_half_is_ap50():
    evaluation = _accumulated(_ground_truth(), _DETECTIONS)
    ap50 = per_category_ap(evaluation, 0.5)
    assert ap50[1] == pytest.approx(1.0)
    assert ap50[5] == pytest.approx(_HALF)
    assert (ap50[1] + ap50[5]) / 2 == pytest.approx(evaluation.stats[1])
    with pytest.raises(ValueError, match=r"0\.42"):
        per_category_ap(evaluation, 0.42)


def test_per_category_metrics_name_every_category_with_string_ids_that_survive_json():
    coco_gt = _ground_truth()
    table = per_category_metrics(_accumulated(coco_gt, _DETECTIONS), coco_gt, [1, 2])
    assert json.loads(json.dumps(table)) == table
    assert table["1"] == {"name": "circle", "AP": pytest.approx(_CIRCLE_AP), "AP50": 1.0}
    assert table["5"]["name"] == "square" and table["5"]["AP50"] == pytest.approx(_HALF)
    assert table["9"] == {"name": "triangle", "AP": -1.0, "AP50": -1.0}


def test_per_category_metrics_without_detections_are_zero_where_truth_exists_else_minus_one():
    coco_gt = _ground_truth()
    table = per_category_metrics(None, coco_gt, [1])
    assert {k: (v["AP"], v["AP50"]) for k, v in table.items()} == {
        "1": (0.0, 0.0),
        "5": (0.0, 0.0),
        "9": (-1.0, -1.0),
    }


def test_coco_metrics_stay_flat_floats_and_report_minus_one_for_sizes_without_objects():
    metrics = coco_metrics(_ground_truth(), _DETECTIONS, [1, 2])
    assert PER_CATEGORY not in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["APm"] == -1.0 and metrics["APl"] == -1.0
    assert metrics["AP"] == pytest.approx((_CIRCLE_AP + _SQUARE_AP) / 2)


class _FixedDetector(torch.nn.Module):
    """Returns the same detections (training labels) for every image, like a detector in eval."""

    def __init__(self, by_image: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.by_image = by_image
        self.calls = 0

    def forward(self, images):
        outputs = self.by_image[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return outputs


def _xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def test_evaluate_returns_the_per_category_table_next_to_the_coco_metrics():
    categories = CategoryMap(dataset_ids=(1, 5, 9), names=("circle", "square", "triangle"))
    outputs = []
    for image in (1, 2):
        mine = [d for d in _DETECTIONS if d["image_id"] == image]
        outputs.append(
            {
                "boxes": torch.tensor([_xyxy(d["bbox"]) for d in mine]),
                "scores": torch.tensor([d["score"] for d in mine]),
                "labels": torch.tensor([categories.to_label(d["category_id"]) for d in mine]),
            }
        )
    loader = [([torch.zeros(3, 64, 64)], [{"image_id": i}]) for i in (1, 2)]
    metrics = evaluate(_FixedDetector(outputs), loader, _ground_truth(), categories, "cpu")
    assert metrics["AP"] == pytest.approx((_CIRCLE_AP + _SQUARE_AP) / 2)
    assert metrics[PER_CATEGORY]["1"]["AP"] == pytest.approx(_CIRCLE_AP)
    assert metrics[PER_CATEGORY]["9"]["AP"] == -1.0


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-1.0, "n/a"), (-1, "n/a"), (None, "n/a"), (float("nan"), "n/a"), (0.0, "0.000"),
     (0.5, "0.500"), (1, "1.000")],
)  # fmt: skip
def test_format_metric_shows_coco_minus_one_as_not_applicable(value, shown):
    assert format_metric(value) == shown


def _write_metrics(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _epoch(number: int, loss: float, ap: float | None) -> dict:
    record = {
        "epoch": number,
        "train": {"loss": loss, "loss_classifier": loss / 2, "lr": 0.01},
        "seconds": 1.0,
    }
    if ap is not None:
        record["val"] = {"AP": ap, "AP50": min(1.0, ap * 1.5), "APm": -1.0}
    return record


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_training_curve_is_a_valid_png_of_every_epoch(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, [_epoch(1, 2.0, None), _epoch(2, 1.5, 0.2), _epoch(3, 1.1, 0.35)])
    png = plot_training_curve(metrics, tmp_path / "out" / "training_curve.png")
    assert png == tmp_path / "out" / "training_curve.png"
    _assert_png(png)


def test_training_curve_skips_broken_lines_and_keeps_the_last_record_of_an_epoch(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, [_epoch(1, 2.0, 0.1), _epoch(1, 1.9, 0.12)])
    with metrics.open("a", encoding="utf-8") as stream:
        stream.write('{"epoch": 2, "train": {"loss"\n[1, 2]\n{"epoch": "3"}\n')
    epochs = read_epochs(metrics)
    assert [e["epoch"] for e in epochs] == [1] and epochs[0]["train"]["loss"] == 1.9
    _assert_png(plot_training_curve(metrics, tmp_path / "curve.png"))


def test_training_curve_of_a_missing_or_empty_file_writes_nothing(tmp_path):
    assert plot_training_curve(tmp_path / "absent.jsonl", tmp_path / "a.png") is None
    (tmp_path / "empty.jsonl").write_text("")
    assert plot_training_curve(tmp_path / "empty.jsonl", tmp_path / "b.png") is None
    assert not list(tmp_path.glob("*.png"))


def test_category_chart_is_a_valid_png_and_takes_hostile_names(tmp_path):
    table = {
        "1": {"name": "circle", "AP": 0.5, "AP50": 0.8},
        "2": {"name": r"$\frac{bad$ <b>" + "x" * 200, "AP": -1.0, "AP50": -1.0},
        "3": {"name": "square", "AP": 0.9, "AP50": 1.0},
    }
    _assert_png(plot_category_ap(table, tmp_path / "per_category_ap.png"))
    assert plot_category_ap({}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_write_training_curve_draws_next_to_the_metrics_and_never_fails_the_run(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", [_epoch(1, 2.0, 0.1), _epoch(2, 1.0, 0.3)])
    _assert_png(write_training_curve(tmp_path))
    assert (tmp_path / "training_curve.png").is_file()
    (tmp_path / "blocked").mkdir()
    _write_metrics(tmp_path / "blocked" / "metrics.jsonl", [_epoch(1, 2.0, 0.1)])
    (tmp_path / "blocked" / "training_curve.png").mkdir()  # a folder where the PNG should go
    assert write_training_curve(tmp_path / "blocked") is None


@pytest.mark.slow
def test_detstack_train_writes_its_curve_and_prints_the_ap_of_every_category(
    synthetic_dataset, tmp_path, capsys
):
    from cli.main import main

    output = tmp_path / "run"
    argv = ["train", str(synthetic_dataset), "--model", "tiny", "--epochs", "1"]
    argv += ["--batch-size", "4", "--workers", "0", "--val-fraction", "0.25", "--device", "cpu"]
    assert main([*argv, "--output", str(output)]) == 0
    _assert_png(output / "training_curve.png")
    printed = capsys.readouterr().out
    assert f"training curve: {output / 'training_curve.png'}" in printed
    assert "AP per category: " in printed and "-1.000" not in printed
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    table = records[-1]["val"][PER_CATEGORY]
    assert set(table) == {"0", "3", "7"}  # the fixture's dataset category ids
    assert all(isinstance(v["name"], str) and -1.0 <= v["AP"] <= 1.0 for v in table.values())
    assert load_checkpoint(output / "last.pt").metrics[PER_CATEGORY] == table
