"""The seed's eager PyTorch wrapper, our own code: the baseline served figures are held against.

It lives with the benchmark (not in the client) because it needs the training stage to rebuild
the model from a checkpoint.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from pathlib import Path

import numpy as np

from bench._drive import Sample, drive, percentile, progress_bar, summarise
from bench._results import BASELINE, BenchConfig, LatencyResult

logger = logging.getLogger(__name__)


class EagerBaseline:
    """The seed's ``ModelWrapper.predict`` for one image, in eager PyTorch (our own code).

    Base64 text → PIL image → ``ToTensor`` → the detector → each output's numpy bytes as
    base64. Images are converted to RGB first (the seed crashed on grey or RGBA files).
    """

    def __init__(self, checkpoint: Path, threads: int | None = None) -> None:
        import torch

        from training.checkpoint import build_trained_model, load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.model = build_trained_model(load_checkpoint(checkpoint))
        self.threads = torch.get_num_threads()

    def __call__(self, cell: str) -> tuple[dict[str, str], float, float, float]:
        """Predict one base64 image; returns the base64 outputs and decode/model/encode times."""
        import torch
        from PIL import Image
        from torchvision.transforms import functional

        t0 = time.perf_counter()
        data = base64.b64decode(cell.encode("utf-8"))
        tensor = functional.to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
        t1 = time.perf_counter()
        with torch.no_grad():
            prediction = self.model([tensor])[0]
        t2 = time.perf_counter()
        encoded = {
            key: base64.b64encode(value.detach().cpu().numpy().tobytes()).decode("utf-8")
            for key, value in prediction.items()
        }
        t3 = time.perf_counter()
        return encoded, t1 - t0, t2 - t1, t3 - t2


def measure_baseline(config: BenchConfig, cells: list[str], checkpoint: Path) -> LatencyResult:
    baseline = EagerBaseline(checkpoint, config.torch_threads)
    count = config.baseline_requests or config.requests

    def work(index: int) -> Sample:
        _, decode_s, model_s, encode_s = baseline(cells[index % len(cells)])
        return Sample(decode_s, model_s, encode_s)

    drive(work, 1, config.warmup, None)
    bar = progress_bar(config.progress, count, BASELINE)
    try:
        samples, failures, duration, capped = drive(work, 1, count, config.max_seconds, bar)
    finally:
        if bar is not None:
            bar.close()
    logger.info(
        "%s: p50 %.1f ms (%d torch threads)",
        BASELINE,
        percentile(np.array([x.total_s * 1e3 for x in samples]), 50),
        baseline.threads,
    )
    return summarise(BASELINE, 1, samples, failures, duration, config.warmup, capped)
