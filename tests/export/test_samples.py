"""Input samples: from a dataset, from files, synthetic; and the parity gate's image set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from detstack.errors import ImageDecodeError
from detstack.images import decode_image
from export.samples import (
    samples_from_dataset,
    samples_from_files,
    synthetic_samples,
    validation_images,
)


def test_dataset_samples_are_annotated_images_stored_as_their_exact_pixels(synthetic_dataset):
    samples = samples_from_dataset(synthetic_dataset, count=3)

    document = json.loads((synthetic_dataset / "annotations.json").read_text())
    annotated = {a["image_id"] for a in document["annotations"]}
    names = {
        i["file_name"].split("/")[-1].rsplit(".", 1)[0]
        for i in document["images"]
        if i["id"] in annotated
    }
    assert len(samples) == 3
    for sample in samples:
        assert sample.name.split("-", 1)[1].removesuffix(".png") in names
        np.testing.assert_array_equal(decode_image(sample.data), sample.pixels)


def test_gate_images_hold_two_sizes_and_a_blank_image_even_when_samples_share_one_size(
    synthetic_dataset,
):
    samples = samples_from_dataset(synthetic_dataset, count=2)
    assert len({s.size for s in samples}) == 1

    images = validation_images(samples)

    shapes = {image.pixels.shape for image in images if not image.blank}
    assert len(shapes) == 2
    (blank,) = [image for image in images if image.blank]
    assert blank.pixels.dtype == np.uint8 and np.unique(blank.pixels).size == 1
    assert all(image.pixels.shape[0] == 3 for image in images)


def test_large_sample_files_are_scaled_down_and_missing_files_named(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((900, 2560, 3), np.uint8)).save(path)

    (sample,) = samples_from_files([path])

    assert sample.size == (1280, 450)
    with pytest.raises(ImageDecodeError, match=r"missing\.png"):
        samples_from_files([tmp_path / "missing.png"])


def test_synthetic_samples_exist_without_any_dataset():
    samples = synthetic_samples(3)
    assert [s.name for s in samples] == [
        "0-synthetic-0.png",
        "1-synthetic-1.png",
        "2-synthetic-2.png",
    ]
    assert all(s.pixels.dtype == np.uint8 and s.pixels.ndim == 3 for s in samples)
