"""Hand-made COCO datasets for the tests of ``training.coco`` (test_data_coco*.py).

``_image`` and ``_ann`` build one entry each (``None`` leaves a key out), ``_load`` loads with
two workers, and the autouse-in-importing-modules fixture keeps the image check cache inside
the test's folder.
"""

from __future__ import annotations

import pytest

from training.coco import load_dataset

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


@pytest.fixture(autouse=True)
def _image_check_cache_in_tmp(tmp_path, monkeypatch):
    """The image check caches its results under the cache dir: keep it inside the test."""
    monkeypatch.setenv("DETSTACK_CACHE_DIR", str(tmp_path / "cache"))
