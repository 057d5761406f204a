"""The one palette: the client's drawings and the demo page colour categories alike."""

from __future__ import annotations

import numpy as np
import pytest

from client.codec import Detections
from client.drawing import category_color, draw_detections
from demo._inference import Detection
from training.categories import PALETTE, CategoryMap


def test_a_category_gets_the_label_maps_colour_which_is_the_training_palette():
    label_map = CategoryMap((3, 9), ("circle", "square")).label_map()
    assert [category_color(i, label_map) for i in (3, 9)] == list(PALETTE[:2])


@pytest.mark.parametrize("color", [None, "red", "#12345", "javascript:alert(1)", "#1234567"])
def test_a_missing_or_malformed_colour_falls_back_to_a_stable_palette_colour(color):
    label_map = {5: {"name": "x"} if color is None else {"name": "x", "color": color}}
    assert category_color(5, label_map) in PALETTE
    assert category_color(5, label_map) == category_color(5, {})


def test_the_demo_page_gets_the_same_colour_and_rounding_as_the_client():
    label_map = {5: {"name": "x", "color": "#abcdef"}}
    shown = Detection((1.234567, 2, 3, 4), 0.987654, 5, "x", category_color(5, label_map))
    assert shown.to_json() == {
        "box": [1.23, 2.0, 3.0, 4.0],
        "score": 0.9877,
        "label": 5,
        "name": "x",
        "color": "#abcdef",
    }
    hostile = Detection((0, 0, 1, 1), 0.5, 5, "x", "red;background:url(x)")
    assert hostile.to_json()["color"] == category_color(5, {})


def test_drawing_uses_the_palette_for_an_unknown_category():
    detections = Detections(
        np.array([[2, 2, 12, 12]], np.float32), np.array([0.9], np.float32), np.array([42])
    )
    picture = draw_detections(np.zeros((16, 16, 3), np.uint8), detections, {}, 0.5)
    color = category_color(42, {})
    expected = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    assert picture.getpixel((2, 8)) == expected
