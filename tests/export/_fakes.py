"""Stand-ins the python-backend model tests share."""

from __future__ import annotations

import numpy as np


class RecordingSession:
    """Stands in for onnxruntime: one box over the whole input, and what it was given."""

    def __init__(self):
        self.shapes = []

    def run(self, _outputs, feeds):
        image = feeds["image"]
        self.shapes.append(image.shape)
        height, width = image.shape[1:]
        return (
            np.array([[0, 0, width, height]], np.float32),
            np.array([0.9], np.float32),
            np.array([7], np.int64),
        )
