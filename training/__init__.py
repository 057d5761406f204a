"""The training stage: a COCO dataset (folder or S3) → a fine-tuned Faster R-CNN checkpoint.

The few names most callers need are re-exported here; everything else lives in the modules
(``training.coco``, ``training.dataset``, ``training.engine``, ``training.distributed`` ...).

Example:
    >>> from dataclasses import replace
    >>> from training import QUICKSTART, load_checkpoint, train
    >>> result = train(replace(QUICKSTART, dataset="data/shapes", output="runs/shapes"))
    ...                                                                   # doctest: +SKIP
    >>> load_checkpoint(result.best_checkpoint).metrics["AP50"]         # doctest: +SKIP
    0.93
"""

from training.categories import CategoryMap
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.coco import load_dataset
from training.models import ModelConfig, build_model
from training.train import QUICKSTART, TrainConfig, TrainResult, train

__all__ = [
    "QUICKSTART",
    "CategoryMap",
    "Checkpoint",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "load_checkpoint",
    "load_dataset",
    "save_checkpoint",
    "train",
]
