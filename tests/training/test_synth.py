"""The synthetic shapes dataset: deterministic, valid COCO, non-contiguous ids, negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from detstack.errors import ConfigError
from training.synth import SYNTH_CATEGORIES, SynthConfig, render_image, write_synthetic_dataset


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files(tmp_path):
    config = SynthConfig(images=6, seed=11, size=48, val_fraction=0.3)
    write_synthetic_dataset(tmp_path / "a", config)
    write_synthetic_dataset(tmp_path / "b", config)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 6 + 3
    assert a == b


def test_another_seed_writes_other_images(tmp_path):
    write_synthetic_dataset(tmp_path / "a", SynthConfig(images=2, seed=1, size=48))
    write_synthetic_dataset(tmp_path / "b", SynthConfig(images=2, seed=2, size=48))
    assert (tmp_path / "a/images/000000.png").read_bytes() != (
        tmp_path / "b/images/000000.png"
    ).read_bytes()


def test_image_i_does_not_depend_on_the_number_of_images():
    small, large = SynthConfig(images=3, seed=5, size=48), SynthConfig(images=300, seed=5, size=48)
    pixels_small, objects_small = render_image(small, 2)
    pixels_large, objects_large = render_image(large, 2)
    assert np.array_equal(pixels_small, pixels_large)
    assert objects_small == objects_large


def test_synthetic_dataset_is_valid_coco_with_non_contiguous_ids_and_negatives(synthetic_dataset):
    document = json.loads((synthetic_dataset / "annotations.json").read_text())
    assert [(c["id"], c["name"]) for c in document["categories"]] == list(SYNTH_CATEGORIES)
    assert {a["category_id"] for a in document["annotations"]} == {0, 3, 7}
    annotated = {a["image_id"] for a in document["annotations"]}
    assert len(annotated) < len(document["images"])
    for image in document["images"]:
        with Image.open(synthetic_dataset / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"])
    for annotation in document["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert w >= 16 and h >= 16
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
        assert annotation["iscrowd"] == 0 and annotation["area"] > 0


def test_boxes_are_tight_around_the_drawn_circles_and_squares():
    config = SynthConfig(images=8, seed=3, size=96, negative_fraction=0.0)
    checked = 0
    for index in range(8):
        pixels, objects = render_image(config, index)
        for obj in objects:
            if obj["category_id"] == 7:  # a triangle's apex is a single point: skip it
                continue
            x, y, w, h = (round(v) for v in obj["bbox"])
            cx, cy = x + w // 2, y + h // 2
            colour = pixels[cy, cx]
            inside = [(cx, y), (cx, y + h - 1), (x, cy), (x + w - 1, cy)]
            outside = [(cx, y - 1), (cx, y + h), (x - 1, cy), (x + w, cy)]
            others = [o["bbox"] for o in objects if o is not obj]

            def free(px, py, others=others, shape=pixels.shape):
                # Shapes may overlap a little; a point under another shape proves nothing.
                return (
                    0 <= px < shape[1]
                    and 0 <= py < shape[0]
                    and not any(
                        bx <= px <= bx + bw and by <= py <= by + bh for bx, by, bw, bh in others
                    )
                )

            assert all((pixels[py, px] == colour).all() for px, py in inside if free(px, py))
            assert not any((pixels[py, px] == colour).all() for px, py in outside if free(px, py))
            checked += 1
    assert checked >= 5


def test_mixed_aspect_ratios_give_landscape_and_portrait_images():
    config = SynthConfig(images=20, seed=0, size=48, aspect_ratios=(0.75, 1.0, 4 / 3))
    shapes = {render_image(config, i)[0].shape[:2] for i in range(20)}
    assert shapes == {(64, 48), (48, 48), (48, 64)}


@pytest.mark.parametrize(
    "fields",
    [{"images": 0}, {"size": 8}, {"min_objects": 3, "max_objects": 2}, {"val_fraction": 1.0}],
)
def test_invalid_synth_config_is_refused_naming_the_value(fields):
    with pytest.raises(ConfigError, match=str(list(fields.values())[-1])):
        SynthConfig(**fields)


def test_cli_synth_writes_the_dataset_and_split_files(tmp_path, capsys):
    from cli.main import main

    code = main(
        [
            "data",
            "synth",
            str(tmp_path / "out"),
            "--images",
            "5",
            "--seed",
            "1",
            "--size",
            "48",
            "--val-fraction",
            "0.4",
        ]
    )
    assert code == 0
    train = json.loads((tmp_path / "out/annotations_train.json").read_text())
    val = json.loads((tmp_path / "out/annotations_val.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert "wrote 5 images" in capsys.readouterr().out
